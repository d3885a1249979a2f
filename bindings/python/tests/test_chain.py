"""Backing chains: Image.backing and chain(), map() depths and file names,
creating overlays, and the open flags that concern chains."""

import gc
import json
import re
import threading
import weakref

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, needs_qemu_io, pattern, qemu_img, qemu_io

pytestmark = pytest.mark.usefixtures("library")

SIZE = 4 * MIB


@pytest.fixture(autouse=True)
def need_qcow2(library):
    if "qcow2" not in libvdisk.formats():
        pytest.skip("libvdisk has no qcow2")


@pytest.fixture
def qemu_chain(tmp_path):
    """A qcow2-on-qcow2-on-raw chain built by qemu-img, in three directories and
    linked by relative names: images/top/top.qcow2 -> ../mid.qcow2 -> ../base.raw.
    Returns the three paths, top first, as the chain names them.

    Guest layout (64 KiB clusters): [0, 64K) a zero cluster in mid over base
    data; [64K, 2M) base data except mid's data at [1M, 1M+192K), where top
    has a zero cluster at [1M, 1M+64K) and a copy-on-write cluster at
    [1M+64K, 1M+128K); a copy-on-write cluster of mid at 1.5M; top's data at
    [3M, 3M+64K); base zeroes elsewhere from 2M.
    """
    top_dir = tmp_path / "images" / "top"
    top_dir.mkdir(parents=True)
    base = tmp_path / "base.raw"
    with open(base, "wb") as file:
        file.write(pattern(2 * MIB, 50))
        file.truncate(SIZE)
    mid, top = tmp_path / "images" / "mid.qcow2", top_dir / "top.qcow2"
    result = qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", mid)
    assert result.returncode == 0, result.stderr
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 1M 192k", "-c", "write -P 0x12 1572992 4k",
            "-c", "write -z 0 64k", mid)
    result = qemu_img("create", "-q", "-f", "qcow2", "-b", "../mid.qcow2", "-F", "qcow2", top)
    assert result.returncode == 0, result.stderr
    qemu_io("-f", "qcow2", "-c", "write -P 0x21 3M 64k", "-c", "write -P 0x22 1118208 4k",
            "-c", "write -z 1M 64k", top)
    return [str(top), str(top_dir / "../mid.qcow2"), str(top_dir / "../../base.raw")]


@needs_qemu_img
@needs_qemu_io
def test_chain_names_and_formats(qemu_chain):
    top, mid, base = qemu_chain
    with libvdisk.open(top) as image:
        chain = image.chain()
        assert chain[0] is image and chain[1] is image.backing
        assert chain[2] is image.backing.backing and chain[2].backing is None
        assert [member.filename for member in chain] == [top, mid, base]
        assert [member.format for member in chain] == ["qcow2", "qcow2", "raw"]
        assert [member.mode for member in chain] == ["r", "r", "r"]
        assert [member.info()["backing-filename"] for member in chain[:2]] == \
            ["../mid.qcow2", "../base.raw"]
        assert [member.info()["backing-filename-format"] for member in chain[:2]] == \
            ["qcow2", "raw"]
        assert image.backing.chain() == chain[1:]
    qemu_info = json.loads(qemu_img("info", "--backing-chain", "--output=json", top).stdout)
    assert [entry["filename"] for entry in qemu_info] == [top, mid, base]


@needs_qemu_img
@needs_qemu_io
def test_reads_through_the_chain_match_qemu_convert(tmp_path, qemu_chain):
    for depth, path in enumerate(qemu_chain):
        converted = tmp_path / f"converted-{depth}.raw"
        result = qemu_img("convert", "-O", "raw", path, converted)
        assert result.returncode == 0, result.stderr
        expected = converted.read_bytes()
        with libvdisk.open(qemu_chain[0]) as image:
            member = image.chain()[depth]
            assert member.size == len(expected) == SIZE
            assert member.pread(0, SIZE) == expected
            member.seek(0)
            assert member.read() == expected
        with libvdisk.open(path) as image:  # the same image opened on its own
            assert image.pread(0, SIZE) == expected


def qemu_human_map(path):
    """qemu-img map's human output as (start, length, file) rows."""
    rows = []
    for line in qemu_img("map", path).stdout.splitlines()[1:]:
        start, length, _mapped, name = re.split(r"\s+", line.strip(), maxsplit=3)
        rows.append((int(start, 16), int(length, 16), name))
    return rows


@needs_qemu_img
@needs_qemu_io
def test_map_depths_and_filenames(qemu_chain):
    top, mid, base = qemu_chain
    with libvdisk.open(top) as image:
        extents = image.map()
    assert [extent.to_dict() for extent in extents] == \
        json.loads(qemu_img("map", "--output=json", top).stdout)
    names = [top, mid, base]
    assert all(extent.filename == names[extent.depth] for extent in extents)

    def at(offset):
        return next(e for e in extents if e.start <= offset < e.start + e.length)

    def status(offset):
        extent = at(offset)
        return extent.depth, extent.data, extent.zero, extent.filename

    assert status(3 * MIB) == (0, True, False, top)             # top's own data
    assert status(MIB + 65536) == (0, True, False, top)         # top's copy-on-write
    assert status(MIB) == (0, False, True, top)                 # top's zero cluster
    assert status(MIB + 131072) == (1, True, False, mid)        # mid's data
    assert status(1572864) == (1, True, False, mid)             # mid's copy-on-write
    assert status(0) == (1, False, True, mid)                   # mid's zero cluster
    assert status(65536) == (2, True, False, base)              # the raw base's data
    assert status(2 * MIB)[0] == 2 and status(2 * MIB)[3] == base  # the raw base's rest

    # every byte qemu-img maps to a file, we map to the same file
    for start, length, name in qemu_human_map(top):
        covering = [e for e in extents if e.start < start + length and start < e.start + e.length]
        assert covering and all(e.data and e.filename == name for e in covering), (start, name)

    with libvdisk.open(top, no_backing=True) as image:
        assert image.backing is None and image.chain() == [image]
        assert {extent.depth for extent in image.map()} == {0}
        assert {extent.filename for extent in image.map()} == {top}


def simple_chain(tmp_path):
    """base.qcow2 (with data) <- overlay.qcow2, made with libvdisk."""
    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    data = pattern(MIB, 60)
    libvdisk.create(base, "qcow2", SIZE)
    with libvdisk.open(base, "r+") as image:
        image.pwrite(0, data)
    libvdisk.create(overlay, "qcow2", backing_file="base.qcow2")
    return base, overlay, data


def test_backing_is_cached_and_read_only(tmp_path):
    _, overlay, data = simple_chain(tmp_path)
    with libvdisk.open(overlay, "r+") as image:
        backing = image.backing
        assert image.backing is backing
        assert "backing image" in repr(backing)
        assert not backing.writable() and backing.mode == "r"
        with pytest.raises(libvdisk.ReadOnly):
            backing.pwrite(0, b"x")
        image.pwrite(0, b"top")
        assert backing.pread(0, 3) == data[:3]
        assert image.pread(0, MIB) == b"top" + data[3:]


def test_closing_a_borrowed_image_only_retires_the_wrapper(tmp_path):
    _, overlay, data = simple_chain(tmp_path)
    with libvdisk.open(overlay) as image:
        first = image.backing
        with first as borrowed:
            assert borrowed.pread(0, 4096) == data[:4096]
        assert first.closed
        with pytest.raises(ValueError, match="closed"):
            first.pread(0, 1)
        assert image.pread(0, 4096) == data[:4096]  # the chain is still open
        second = image.backing
        assert second is not first and not second.closed
        assert second.pread(0, 4096) == data[:4096]


def test_borrowed_images_after_the_top_is_closed(tmp_path):
    _, overlay, data = simple_chain(tmp_path)
    image = libvdisk.open(overlay)
    backing = image.backing
    stale = image.backing
    stale.close()
    image.close()
    assert backing.closed and stale.closed
    for call in (lambda: backing.pread(0, 1), lambda: backing.read(1), lambda: backing.size,
                 backing.info, backing.map, backing.check, lambda: backing.backing,
                 backing.chain, lambda: backing.seek(0), lambda: image.backing):
        with pytest.raises(ValueError, match="closed"):
            call()
    backing.close()  # harmless
    assert "closed" in repr(backing)


def test_borrowed_image_does_not_keep_the_top_alive(tmp_path):
    _, overlay, data = simple_chain(tmp_path)
    image = libvdisk.open(overlay)
    backing = image.backing
    assert backing.pread(0, 16) == data[:16]
    top = weakref.ref(image)
    del image
    gc.collect()
    assert top() is None
    assert backing.closed
    with pytest.raises(ValueError, match="closed"):
        backing.pread(0, 16)
    # the files are closed: a writer can open them again
    with libvdisk.open(overlay, "r+"):
        pass


def test_close_while_threads_read_the_backing(tmp_path):
    """Closing the top waits for calls in flight on its borrowed images."""
    _, overlay, data = simple_chain(tmp_path)
    image = libvdisk.open(overlay)
    backing = image.backing
    started, outcomes = threading.Barrier(5), []

    def reader():
        started.wait()
        try:
            while True:
                assert backing.pread(65536, 65536) == data[65536:131072]
        except ValueError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    image.close()
    for thread in threads:
        thread.join()
    assert outcomes == ["I/O operation on closed image"] * 4


def test_create_overlay_takes_size_and_format_from_backing(tmp_path):
    base = tmp_path / "base.qcow2"
    size = 3 * MIB + 4096
    libvdisk.create(base, "qcow2", size)
    with libvdisk.open(base, "r+") as image:
        image.pwrite(size - 4096, b"tail" * 1024)
    (tmp_path / "sub").mkdir()
    overlay = tmp_path / "sub" / "overlay.qcow2"
    assert libvdisk.create(overlay, "qcow2", backing_file="../base.qcow2") is None
    with libvdisk.open(overlay) as image:
        info = image.info()
        assert image.size == size == info["virtual-size"]
        assert info["backing-filename"] == "../base.qcow2"  # recorded as given
        assert info["backing-filename-format"] == "qcow2"   # probed and recorded
        assert image.backing.filename == str(tmp_path / "sub" / "../base.qcow2")
        assert image.pread(size - 4096, 4096) == b"tail" * 1024
        assert image.map()[-1].depth == 1


@needs_qemu_img
def test_created_overlay_agrees_with_qemu(tmp_path):
    base, overlay, _ = simple_chain(tmp_path)
    with libvdisk.open(overlay) as image:
        info = image.info()
    qemu_info = json.loads(qemu_img("info", "--output=json", overlay).stdout)
    for key in ("virtual-size", "backing-filename", "backing-filename-format",
                "full-backing-filename", "cluster-size"):
        assert info[key] == qemu_info[key], key
    result = qemu_img("compare", overlay, base)
    assert result.returncode == 0, result.stdout + result.stderr


def test_create_overlay_on_raw(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(pattern(MIB, 61))
    overlay = tmp_path / "overlay.qcow2"
    with pytest.raises(libvdisk.InvalidArgument, match="raw") as info:
        libvdisk.create(overlay, "qcow2", backing_file=base.name)  # probed raw: refused
    assert "base.img" in str(info.value)
    assert not overlay.exists()
    libvdisk.create(overlay, "qcow2", backing_file=base.name, backing_fmt="raw")
    with libvdisk.open(overlay) as image:
        assert image.info()["backing-filename-format"] == "raw"
        assert image.size == MIB
        assert image.backing.format == "raw"
        assert image.pread(0, MIB) == base.read_bytes()


def test_create_overlay_with_missing_backing(tmp_path):
    overlay = tmp_path / "overlay.qcow2"
    with pytest.raises((libvdisk.NotFound, libvdisk.BackingError), match="absent.qcow2"):
        libvdisk.create(overlay, "qcow2", backing_file="absent.qcow2")
    with pytest.raises((libvdisk.NotFound, libvdisk.BackingError), match="absent.qcow2"):
        libvdisk.create(overlay, "qcow2", 2 * MIB, backing_file="absent.qcow2",
                        backing_fmt="qcow2")
    assert not overlay.exists()


def test_create_unsafe_backing(tmp_path):
    overlay = tmp_path / "overlay.qcow2"
    with pytest.raises(libvdisk.InvalidArgument):  # needs the size and the format
        libvdisk.create(overlay, "qcow2", backing_file="later.qcow2", unsafe_backing=True)
    libvdisk.create(overlay, "qcow2", 2 * MIB, backing_file="later.qcow2",
                    backing_fmt="qcow2", unsafe_backing=True)
    with libvdisk.open(overlay, no_backing=True) as image:
        info = image.info()
        assert (info["backing-filename"], info["backing-filename-format"]) == \
            ("later.qcow2", "qcow2")
        assert image.size == 2 * MIB and image.backing is None
    with pytest.raises((libvdisk.NotFound, libvdisk.BackingError), match="later.qcow2"):
        libvdisk.open(overlay)
    libvdisk.create(tmp_path / "later.qcow2", "qcow2", 2 * MIB)
    with libvdisk.open(overlay) as image:
        assert image.backing.filename == str(tmp_path / "later.qcow2")


def test_backing_fmt_without_backing_file(tmp_path):
    with pytest.raises(libvdisk.InvalidArgument, match="backing_file"):
        libvdisk.create(tmp_path / "x.qcow2", "qcow2", MIB, backing_fmt="raw")


def test_confined(tmp_path):
    inside = tmp_path / "vm"
    inside.mkdir()
    outside = tmp_path / "outside.qcow2"
    libvdisk.create(outside, "qcow2", MIB)
    libvdisk.create(inside / "local.qcow2", "qcow2", MIB)
    escaping = inside / "escaping.qcow2"
    libvdisk.create(escaping, "qcow2", backing_file="../outside.qcow2")
    (inside / "link.qcow2").symlink_to(outside)
    via_link = inside / "via-link.qcow2"
    libvdisk.create(via_link, "qcow2", backing_file="link.qcow2")
    fine = inside / "fine.qcow2"
    libvdisk.create(fine, "qcow2", backing_file="local.qcow2")

    for path in (escaping, via_link):
        with libvdisk.open(path) as image:  # allowed without confined
            assert image.backing is not None
        with pytest.raises(libvdisk.PermissionDenied, match="outside"):
            libvdisk.open(path, confined=True)
    with libvdisk.open(fine, confined=True) as image:
        assert image.backing.filename == str(inside / "local.qcow2")


def _untrusted_layout(tmp_path):
    """vm/ with fine.qcow2 -> local.qcow2, escaping.qcow2 -> ../outside.qcow2 and
    via-link.qcow2 -> link.qcow2, a symbolic link to ../outside.qcow2."""
    inside = tmp_path / "vm"
    inside.mkdir()
    libvdisk.create(tmp_path / "outside.qcow2", "qcow2", MIB)
    libvdisk.create(inside / "local.qcow2", "qcow2", MIB)
    libvdisk.create(inside / "escaping.qcow2", "qcow2", backing_file="../outside.qcow2")
    (inside / "link.qcow2").symlink_to(tmp_path / "outside.qcow2")
    libvdisk.create(inside / "via-link.qcow2", "qcow2", backing_file="link.qcow2")
    libvdisk.create(inside / "fine.qcow2", "qcow2", backing_file="local.qcow2")
    return inside


def test_safe_profile(tmp_path):
    inside = _untrusted_layout(tmp_path)
    for name in ("escaping.qcow2", "via-link.qcow2"):
        with pytest.raises(libvdisk.PermissionDenied, match="outside"):
            libvdisk.open(inside / name, safe=True)
    with libvdisk.open(inside / "fine.qcow2", safe=True, formats=["qcow2"]) as image:
        assert [i.format for i in image.chain()] == ["qcow2", "qcow2"]
    with pytest.raises(libvdisk.PermissionDenied, match="not among the allowed formats"):
        libvdisk.open(inside / "fine.qcow2", safe=True, formats="raw")
    with pytest.raises(libvdisk.FormatError, match="qcow3"):
        libvdisk.open(inside / "fine.qcow2", formats=["qcow2", "qcow3"])
    with pytest.raises(ValueError):
        libvdisk.open(inside / "fine.qcow2", formats=[])
    with libvdisk.open(inside / "escaping.qcow2") as image:  # the default follows qemu-img
        assert image.backing is not None


def test_safe_profile_never_probes_a_backing_file(tmp_path):
    inside = _untrusted_layout(tmp_path)
    unnamed = inside / "fine.qcow2"
    data = bytearray(unnamed.read_bytes())
    at = data.find(bytes.fromhex("e2792aca"))  # the backing format extension: now unknown
    data[at:at + 4] = bytes.fromhex("0badcafe")
    unnamed.write_bytes(data)
    with libvdisk.open(unnamed, confined=True) as image:
        assert image.backing.format == "qcow2"  # probed
    with pytest.raises(libvdisk.PermissionDenied, match="no recorded format"):
        libvdisk.open(unnamed, safe=True)


def test_safe_rebase_and_confined_create_refuse_a_backing_file_outside(tmp_path):
    inside = _untrusted_layout(tmp_path)
    with libvdisk.open(inside / "fine.qcow2", "r+", safe=True) as image:
        with pytest.raises(libvdisk.PermissionDenied, match="outside"):
            image.rebase("../outside.qcow2", "qcow2")
        assert image.info()["backing-filename"] == "local.qcow2"
    for backing in ("../outside.qcow2", "link.qcow2"):
        with pytest.raises(libvdisk.PermissionDenied, match="outside"):
            libvdisk.create(inside / "new.qcow2", "qcow2", backing_file=backing, confined=True)
        assert not (inside / "new.qcow2").exists()
    libvdisk.create(inside / "new.qcow2", "qcow2", backing_file="local.qcow2", confined=True)


def test_no_lock(tmp_path):
    path = tmp_path / "locked.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    with libvdisk.open(path, "r+"):
        with pytest.raises(libvdisk.Locked, match=str(path)):
            libvdisk.open(path)
        with libvdisk.open(path, no_lock=True) as reader:
            assert reader.size == MIB


def test_no_flush(tmp_path):
    path = tmp_path / "scratch.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    data = pattern(200000, 62)
    with libvdisk.open(path, "r+", no_flush=True) as image:
        image.pwrite(4096, data)
        image.flush()
    with libvdisk.open(path) as image:
        assert image.pread(4096, len(data)) == data
        assert image.check().clean


def test_resize_qcow2(tmp_path):
    path = tmp_path / "grow.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    data = pattern(70000, 63)
    with libvdisk.open(path, "r+") as image:
        image.pwrite(0, data)
        image.resize(8 * MIB)
        assert image.size == 8 * MIB
        assert image.pread(0, len(data)) == data and image.pread(MIB, MIB) == bytes(MIB)
        with pytest.raises(libvdisk.InvalidArgument, match="SHRINK"):
            image.resize(MIB)
        image.resize(512 * 1024, shrink=True)
        assert image.size == 512 * 1024 and image.pread(0, len(data)) == data
        assert image.check().clean


def test_each_encrypted_image_of_a_chain_has_its_own_passphrase(tmp_path):
    """passphrase=function: asked once per encrypted image, by path and depth."""
    base, mid, top = tmp_path / "base.luks", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    libvdisk.create(base, "luks", SIZE, passphrase="base secret", **{"iter-time": 10})
    with libvdisk.open(base, "r+", passphrase="base secret") as img:
        img.pwrite(0, b"B" * 12288)  # unwritten, a luks payload decrypts to noise
    libvdisk.create(mid, "qcow2", backing_file=base, backing_fmt="luks")  # plain: never asked
    libvdisk.create(top, "qcow2", backing_file=mid, backing_fmt="qcow2", passphrase="top secret",
                    **{"encrypt.format": "luks", "encrypt.iter-time": 10})
    asked = []

    def passphrase(path, depth):
        asked.append((path, depth))
        return {0: "top secret", 2: b"base secret"}[depth]

    with libvdisk.open(top, "r+", passphrase=passphrase) as img:
        img.pwrite(8192, b"T" * 4096)
        assert img.pread(0, 12288) == b"B" * 8192 + b"T" * 4096
    assert asked == [(str(top), 0), (str(base), 2)]
    with pytest.raises(libvdisk.EncryptionKeyError, match="base.luks"):
        libvdisk.open(top, passphrase="top secret")  # one passphrase: not the base's

    class Refused(Exception):
        pass

    def refuse(path, depth):
        raise Refused(path)

    with pytest.raises(Refused):
        libvdisk.open(top, passphrase=refuse)
