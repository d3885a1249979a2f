"""Backing chains both ways: qemu-made chains read through libvdisk, and
libvdisk-made overlays compared with qemu-made ones."""
import os
import random

import pytest

import libvdisk
from vdhelp import (KiB, MiB, assert_maps_agree, assert_qemu_clean, qemu_img, qemu_info,
                    qemu_io, qemu_raw, read_all, run, QEMU_IMG)


def make_chain(root):
    """raw <- qcow2 <- qcow2, each in its own directory, named relatively,
    each layer bigger than the one below; written by qemu-io."""
    for d in ("a", "b", "c"):
        (root / d).mkdir()
    base, mid, top = root / "a" / "base.raw", root / "b" / "mid.qcow2", root / "c" / "top.qcow2"
    qemu_img("create", "-q", "-f", "raw", base, "8M")
    qemu_io(base, "write -P 0x11 0 3M", "write -P 0x12 5M 2M", "write -P 0x13 7340032 1M",
            fmt="raw")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", "../a/base.raw",
             "-F", "raw", mid, "12M")
    qemu_io(mid, "write -P 0x21 1M 1M", "write -z 2M 512k", "discard 5M 1M",
            "write -P 0x22 6200000 100000", "write -P 0x23 9M 1M", "write -z 11M 64k")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "../b/mid.qcow2",
             "-F", "qcow2", top, "16M")
    qemu_io(top, "write -P 0x31 0 4k", "write -P 0x32 1100000 5000", "write -z -u 9M 256k",
            "discard 1536k 64k", "write -P 0x33 14M 1M", "write -z 7M 4k")
    return base, mid, top


def test_three_deep_chain_reads_identically(tmp_path, monkeypatch):
    base, mid, top = make_chain(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative names resolve against each image's directory
    expected = qemu_raw(top)
    assert len(expected) == 16 * MiB
    assert read_all(top) == expected
    assert read_all(os.path.relpath(top)) == expected
    with libvdisk.open(top) as img:
        info = img.info()
        assert info["backing-filename"] == "../b/mid.qcow2"
        assert info["backing-filename-format"] == "qcow2"
    assert read_all(mid) == qemu_raw(mid)
    # what each layer holds itself
    assert read_all(top, no_backing=True) == qemu_raw_no_backing(top)


def qemu_raw_no_backing(path):
    """The image alone, as qemu sees it with its backing file cut off."""
    out = str(path) + ".alone.raw"
    qemu_img("convert", "-O", "raw", f"json:{{\"driver\":\"qcow2\",\"backing\":null,"
             f"\"file\":{{\"driver\":\"file\",\"filename\":\"{path}\"}}}}", out)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def test_three_deep_chain_map_depths_agree(tmp_path):
    _, mid, top = make_chain(tmp_path)
    assert_maps_agree(top, keys=("data", "zero", "present", "depth"))
    assert_maps_agree(mid, keys=("data", "zero", "present", "depth"))


OPS = [("write", 100, 70000), ("write", 1048576 - 7, 200000), ("zero", 300000, 70000),
       ("zero-u", 2 * MiB, 192 * KiB), ("discard", 3 * MiB, 128 * KiB),
       ("zero-u", 4 * MiB + 1000, 100 * KiB), ("discard", 5 * MiB - 4096, 300 * KiB),
       ("write", 7 * MiB - 10, 20), ("zero", 9 * MiB + 512, 512), ("write", 12 * MiB - 1, 1)]


def apply_libvdisk(path, ops, seed):
    rnd = random.Random(seed)
    with libvdisk.open(path, "r+") as img:
        for kind, off, n in ops:
            if kind == "write":
                img.pwrite(off, bytes([rnd.randrange(1, 256)]) * n)
            elif kind == "zero":
                img.write_zeroes(off, n)
            elif kind == "zero-u":
                img.write_zeroes(off, n, may_unmap=True)
            else:
                img.discard(off, n)


def apply_qemu(path, ops, seed):
    rnd = random.Random(seed)
    cmds = []
    for kind, off, n in ops:
        if kind == "write":
            cmds.append(f"write -P {rnd.randrange(1, 256)} {off} {n}")
        elif kind == "zero":
            cmds.append(f"write -z {off} {n}")
        elif kind == "zero-u":
            cmds.append(f"write -z -u {off} {n}")
        else:
            cmds.append(f"discard {off} {n}")
    qemu_io(path, *cmds)


@pytest.mark.parametrize("options", ["cluster_size=64k", "cluster_size=4k,extended_l2=off",
                                     "cluster_size=64k,extended_l2=on",
                                     "cluster_size=512,refcount_bits=4",
                                     "cluster_size=512,compat=0.10",
                                     "cluster_size=64k,compat=0.10"])
@pytest.mark.parametrize("base_fmt", ["raw", "qcow2"])
def test_libvdisk_overlay_matches_qemu_overlay(tmp_path, options, base_fmt):
    (tmp_path / "base").mkdir()
    (tmp_path / "ov").mkdir()
    base = tmp_path / "base" / f"b.{base_fmt}"
    qemu_img("create", "-q", "-f", base_fmt, base, "10M")
    qemu_io(base, "write -P 0xb1 0 10M", fmt=base_fmt)  # backing data everywhere shows through
    ours, theirs = tmp_path / "ov" / "v.qcow2", tmp_path / "ov" / "q.qcow2"
    kw = dict(o.split("=") for o in options.split(","))
    libvdisk.create(ours, "qcow2", 13 * MiB, backing_file=f"../base/b.{base_fmt}",
                    backing_fmt=base_fmt, **kw)
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, "-b", f"../base/b.{base_fmt}",
             "-F", base_fmt, theirs, "13M")
    apply_libvdisk(ours, OPS, 5)
    apply_qemu(theirs, OPS, 5)
    assert_qemu_clean(ours)
    info = qemu_info(ours)
    assert info["backing-filename"] == f"../base/b.{base_fmt}"
    assert info["backing-filename-format"] == base_fmt
    assert info["virtual-size"] == 13 * MiB
    r = run(QEMU_IMG, "compare", ours, theirs, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_all(ours) == qemu_raw(theirs)


def test_overlay_without_backing_fmt_on_raw_is_refused(tmp_path):
    base = tmp_path / "b.raw"
    base.write_bytes(b"\1" * MiB)
    with pytest.raises(libvdisk.Error) as err:
        libvdisk.create(tmp_path / "o.qcow2", "qcow2", 0, backing_file="b.raw")
    assert "b.raw" in str(err.value)
    # with the format said, it works and takes the backing file's size
    libvdisk.create(tmp_path / "o.qcow2", "qcow2", 0, backing_file="b.raw", backing_fmt="raw")
    assert qemu_info(tmp_path / "o.qcow2")["virtual-size"] == MiB


def test_overlay_without_backing_fmt_probes_qcow2(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "b.qcow2", "3M")
    libvdisk.create(tmp_path / "o.qcow2", "qcow2", 0, backing_file="b.qcow2")
    info = qemu_info(tmp_path / "o.qcow2")
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 3 * MiB
    assert_qemu_clean(tmp_path / "o.qcow2")


def test_probed_raw_backing_recorded_without_format_is_not_probed_into_qcow2(tmp_path):
    """A qcow2 whose header names a backing file but no format, where the
    backing file is raw: libvdisk must still read the raw bytes as data."""
    (tmp_path / "b.raw").write_bytes(b"\x42" * MiB)
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "b.raw", "-F", "raw",
             tmp_path / "o.qcow2", "1M")
    assert read_all(tmp_path / "o.qcow2") == qemu_raw(tmp_path / "o.qcow2")


def test_missing_backing_file_names_the_file(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "gone/missing-base.qcow2", "-F", "qcow2",
             tmp_path / "o.qcow2", "1M")
    with pytest.raises(libvdisk.Error) as err:
        libvdisk.open(tmp_path / "o.qcow2")
    assert "missing-base.qcow2" in str(err.value)
    # without the chain the overlay itself still opens
    with libvdisk.open(tmp_path / "o.qcow2", no_backing=True) as img:
        assert img.size == MiB
    with pytest.raises(libvdisk.Error) as err:
        libvdisk.create(tmp_path / "p.qcow2", "qcow2", 0, backing_file="nothing-here.qcow2",
                        backing_fmt="qcow2")
    assert "nothing-here.qcow2" in str(err.value)
    assert not (tmp_path / "p.qcow2").exists() or qemu_img(
        "info", tmp_path / "p.qcow2", check=False).returncode == 0


@pytest.mark.parametrize("options", ["cluster_size=64k", "cluster_size=64k,extended_l2=on",
                                     "cluster_size=4k,compat=0.10"])
def test_growing_overlay_over_longer_backing_reads_zeroes(tmp_path, options):
    """The area a resize adds reads as zeroes even where the backing file,
    longer than the overlay, has data (qemu zero-fills it since 5.0; on v2,
    which cannot, qemu-img resize refuses)."""
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0xaa 0 4M")
    kw = dict(o.split("=") for o in options.split(","))
    libvdisk.create(top, "qcow2", 2 * MiB, backing_file="b.qcow2", backing_fmt="qcow2", **kw)
    with libvdisk.open(top, "r+") as img:
        img.pwrite(1000, b"z" * 5000)
        try:
            img.resize(6 * MiB)
        except libvdisk.Error:
            assert "compat=0.10" in options  # refusing is what qemu-img does for v2
            return
    assert_qemu_clean(top)
    data = read_all(top)
    assert data[2 * MiB:] == bytes(4 * MiB), "the grown area shows the backing file's data"
    assert qemu_raw(top) == data
