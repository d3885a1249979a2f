"""Internal snapshots made by libvdisk and by qemu-img, in both directions."""
import os
import random

import pytest

from capi import Image, MiB, RDWR, VdError, create
from conftest import assert_clean, raw_content

LAYOUTS = ["", "compat=0.10", "cluster_size=512", "extended_l2=on", "refcount_bits=4",
           "refcount_bits=64,cluster_size=4k", "lazy_refcounts=on"]


def random_writes(img, model, rnd, count=20):
    for _ in range(count):
        off = rnd.randrange(len(model) - 70000)
        data = rnd.randbytes(rnd.randrange(1, 70000))
        img.write(off, data)
        model[off:off + len(data)] = data


@pytest.mark.parametrize("options", LAYOUTS)
def test_snapshots_round_trip_with_qemu(tmp_path, qemu_img, qemu_io, options):
    path, size = tmp_path / "s.qcow2", 4 * MiB
    create(path, "qcow2", size, options)
    rnd, model, states = random.Random(5), bytearray(size), {}
    with Image(path, RDWR) as img:
        for k in range(4):
            random_writes(img, model, rnd)
            img.snapshot_create(f"s{k}")
            states[f"s{k}"] = bytes(model)
        img.snapshot_delete("s1")  # from the middle of the table
        with pytest.raises(VdError) as dup:
            img.snapshot_create("s2")
        assert "already exists" in dup.value.message
    assert_clean(path)

    listing = qemu_img("snapshot", "-l", path).stdout
    assert all(name in listing for name in ("s0", "s2", "s3")) and "s1" not in listing

    # qemu-img reverts to a snapshot libvdisk made
    qemu_img("snapshot", "-a", "s2", path)
    assert raw_content(path) == states["s2"]
    assert_clean(path)

    # libvdisk reads, applies and deletes a snapshot qemu-img made
    qemu_io("-c", "write -P 7 0 1M", path)
    qemu_img("snapshot", "-c", "q1", path)
    q1 = raw_content(path)
    with Image(path, snapshot="q1") as view:
        assert view.read() == q1
    with Image(path, snapshot="s2") as view:  # read a snapshot without applying it
        assert view.read() == states["s2"]
    with Image(path, RDWR) as img:
        names = [name for _, name, _ in img.snapshots()]
        assert names == ["s0", "s2", "s3", "q1"]
        img.snapshot_apply("s0")
        assert img.read() == states["s0"]
        img.write(100, b"x" * 5000)  # shared clusters are copied, not overwritten
        img.snapshot_delete("q1")
    assert_clean(path)
    with Image(path, snapshot="s3") as view:
        assert view.read() == states["s3"]


def test_snapshot_ids_and_lookup_follow_qemu_img(tmp_path, qemu_img):
    path = tmp_path / "ids.qcow2"
    create(path, "qcow2", MiB)
    with Image(path, RDWR) as img:
        for name in ("a", "b", "c"):
            img.snapshot_create(name)
        img.snapshot_delete("2")  # by id
        img.snapshot_create("d")
        assert img.snapshots() == [("1", "a", MiB), ("3", "c", MiB), ("4", "d", MiB)]
        with pytest.raises(VdError) as missing:
            img.snapshot_apply("nope")
        assert "nope" in missing.value.message and str(path) in missing.value.message
    assert "4         d" in qemu_img("snapshot", "-l", path).stdout


def test_refcount_overflow_refuses_cleanly(tmp_path):
    path = tmp_path / "narrow.qcow2"
    create(path, "qcow2", MiB, "refcount_bits=2")
    with Image(path, RDWR) as img:
        img.write(0, b"a" * 4096)
        img.snapshot_create("s0")
        img.snapshot_create("s1")
        with pytest.raises(VdError) as full:
            img.snapshot_create("s2")
        assert "refcount" in full.value.message
        img.write(0, b"b" * 4096)  # the handle is still usable
    assert_clean(path)


def test_snapshot_of_a_grown_image_keeps_its_size(tmp_path):
    path = tmp_path / "grow.qcow2"
    create(path, "qcow2", MiB)
    with Image(path, RDWR) as img:
        img.write(0, b"small")
        img.snapshot_create("small")
        img.resize(3 * MiB)
        img.write(2 * MiB, b"big")
        assert img.snapshots()[0][2] == MiB
        img.snapshot_apply("small")
        assert img.size == MiB and img.read(0, 5) == b"small"
    assert_clean(path)


def test_external_data_file_refuses_snapshots(tmp_path):
    path = tmp_path / "ext.qcow2"
    create(path, "qcow2", MiB, "data_file=ext.raw")
    assert os.path.getsize(tmp_path / "ext.raw") == MiB
    with Image(path, RDWR) as img:
        with pytest.raises(VdError) as refused:
            img.snapshot_create("s")
        assert "data file" in refused.value.message
