"""libvdisk.convert(): formats, options, progress and cancellation."""

import threading

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, pattern, qemu_img

SIZE = 8 * MIB


@pytest.fixture
def source(tmp_path, library):
    """A sparse raw image: data at 0 and at 5 MiB, a hole between."""
    path = tmp_path / "src.raw"
    data = pattern(MIB, seed=3)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.write(data)
        f.seek(5 * MIB)
        f.write(data)
    return path


def read_all(path, fmt):
    with libvdisk.open(path, fmt=fmt) as image:
        return image.pread(0, image.size)


@needs_qemu_img
def test_to_qcow2_and_back(source, tmp_path):
    out, back = tmp_path / "out.qcow2", tmp_path / "back.raw"
    libvdisk.convert(source, out, "qcow2", cluster_size=65536)
    assert qemu_img("check", out).returncode == 0
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", source, out).returncode == 0
    libvdisk.convert(out, back, src_fmt="qcow2")
    assert back.read_bytes() == source.read_bytes()
    with libvdisk.open(out) as image:
        assert image.info()["cluster-size"] == 65536


def test_from_an_open_image(source, tmp_path):
    out = tmp_path / "out.qcow2"
    with libvdisk.open(source, fmt="raw") as image:
        libvdisk.convert(image, out, "qcow2", parallel=1, out_of_order=True)
        assert image.pread(0, 4) == source.read_bytes()[:4]  # still open
        with pytest.raises(ValueError):
            libvdisk.convert(image, out, "qcow2", snapshot="x")
    assert read_all(out, "qcow2") == source.read_bytes()


def test_progress_counts_the_data(source, tmp_path):
    calls = []
    libvdisk.convert(source, tmp_path / "out.raw", progress=lambda done, total: calls.append(
        (done, total, threading.get_ident())))
    assert calls[0][:2] == (0, 2 * MIB)  # the data, not the 8 MiB
    assert calls[-1][:2] == (2 * MIB, 2 * MIB)
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)


@pytest.mark.parametrize("existing", [False, True])
def test_cancel_by_returning_true(source, tmp_path, existing):
    out = tmp_path / "out.raw"
    if existing:
        out.write_bytes(b"\xee" * SIZE)
    with pytest.raises(libvdisk.Cancelled) as info:
        libvdisk.convert(source, out, existing=existing, progress=lambda done, total: done > 0)
    assert info.value.code == libvdisk.Cancelled.code
    if existing:
        assert "left as written so far" in str(info.value)
        assert out.stat().st_size == SIZE
    else:
        assert not out.exists()


def test_cancel_by_raising(source, tmp_path):
    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop()

    out = tmp_path / "out.qcow2"
    with pytest.raises(Stop) as info:
        libvdisk.convert(source, out, "qcow2", progress=progress)
    assert isinstance(info.value.__cause__, libvdisk.Cancelled)
    assert not out.exists()


def test_returning_false_goes_on(source, tmp_path):
    out = tmp_path / "out.raw"
    libvdisk.convert(source, out, progress=lambda done, total: False)
    assert out.read_bytes() == source.read_bytes()


def test_existing_target_and_target_is_zero(source, tmp_path):
    out = tmp_path / "out.raw"
    out.write_bytes(b"\xee" * SIZE)
    libvdisk.convert(source, out, existing=True, target_is_zero=True)
    assert out.read_bytes()[3 * MIB] == 0xee  # a hole of the source: not written
    libvdisk.convert(source, out, existing=True)
    assert out.read_bytes() == source.read_bytes()
    with pytest.raises(ValueError):
        libvdisk.convert(source, out, existing=True, preallocation="off")


def test_backing_file_and_snapshot(source, tmp_path):
    snap = tmp_path / "snap.qcow2"
    libvdisk.convert(source, snap, "qcow2")
    with libvdisk.open(snap, "r+") as image:
        image.snapshot_create("first")
        image.pwrite(0, b"changed")
    flat = tmp_path / "first.raw"
    libvdisk.convert(snap, flat, snapshot="first")
    assert flat.read_bytes() == source.read_bytes()
    overlay = tmp_path / "overlay.qcow2"
    libvdisk.convert(snap, overlay, "qcow2", backing_file="first.raw", backing_fmt="raw")
    with libvdisk.open(overlay) as image:
        own = [e for e in image.map() if e.depth == 0 and e.data]
        assert sum(e.length for e in own) == 65536  # the cluster "changed" is in
        assert image.pread(0, 7) == b"changed"


def test_errors(source, tmp_path):
    with pytest.raises(libvdisk.NotFound) as info:
        libvdisk.convert(tmp_path / "missing.raw", tmp_path / "out.raw")
    assert "missing.raw" in str(info.value)
    with pytest.raises(libvdisk.FormatError):
        libvdisk.convert(source, tmp_path / "out", "nosuch")
    with pytest.raises(libvdisk.InvalidArgument):
        libvdisk.convert(source, tmp_path / "out", parallel=17)
    with pytest.raises(ValueError):
        libvdisk.convert(source, tmp_path / "out", cache="fast")
    assert not (tmp_path / "out").exists()


def test_cache_modes(source, tmp_path):
    for mode in ("unsafe", "writeback", "none"):
        libvdisk.convert(source, tmp_path / "out.raw", cache=mode)
        assert (tmp_path / "out.raw").read_bytes() == source.read_bytes()
