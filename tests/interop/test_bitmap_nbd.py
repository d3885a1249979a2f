"""Persistent dirty bitmaps against QEMU's own reader of them: qemu-nbd 7.2
exports a bitmap (-B NAME) and nbdinfo --map=qemu:dirty-bitmap:NAME lists
its dirty runs. The oracle for both directions:

- a bitmap qemu-img made records exactly the granules libvdisk wrote,
  zero-wrote or discarded, as qemu-nbd sees it and as vd_bitmap_extents
  (Image.dirty_extents) reports it; a disabled one stays clean;
- a bitmap libvdisk made is listed by qemu-img info, passes qemu-img check
  and qemu-nbd serves the same dirty runs.

qemu-nbd listens on a unix socket in the test's directory and is killed
whatever the test did (vdhelp.qemu_nbd_dirty_runs).
"""
import os

import pytest

import libvdisk
from vdhelp import (NBDINFO, QEMU_NBD, KiB, MiB, assert_qemu_clean, merge_runs, qemu_img,
                    qemu_info, qemu_nbd_dirty_runs, run)

pytestmark = pytest.mark.skipif(
    not QEMU_NBD or not NBDINFO,
    reason="qemu-nbd (qemu-utils) or nbdinfo (libnbd-bin) is not installed: "
           "no oracle for the dirty bitmaps")

VDISK = os.environ.get("VDISK")


@pytest.fixture
def nbd_dirty_runs(tmp_path):
    with qemu_nbd_dirty_runs(tmp_path) as dirty_runs:
        yield dirty_runs


def granule_runs(ranges, granularity, size):
    """The runs a bitmap of that granularity marks for byte ranges (offset, length)."""
    granules = set()
    for offset, length in ranges:
        granules.update(range(offset // granularity, (offset + length - 1) // granularity + 1))
    return merge_runs((g * granularity, min(granularity, size - g * granularity))
                      for g in sorted(granules))


SIZE = 64 * MiB
# writes, zero writes and discards at unaligned offsets and lengths, as
# (operation, offset, length)
OPERATIONS = [
    ("write", 1 * MiB + 100, 3000),
    ("write", 5 * MiB - 512, 1024),                  # across a 64 KiB boundary
    ("zero", 9 * MiB, 200 * KiB),
    ("zero-unmap", 20 * MiB + 4 * KiB, 64 * KiB),
    ("discard", 30 * MiB, 1 * MiB),
    ("write", SIZE - 1000, 1000),                    # the last granule
]


def apply_operations(path):
    with libvdisk.open(path, "r+") as img:
        for op, offset, length in OPERATIONS:
            if op == "write":
                img.pwrite(offset, bytes([0x5A]) * length)
            elif op == "discard":
                img.discard(offset, length)
            else:
                img.write_zeroes(offset, length, may_unmap=op == "zero-unmap")


def ours(path, name):
    with libvdisk.open(path, "r") as img:
        return merge_runs(img.dirty_extents(name))


def test_qemu_bitmaps_record_libvdisk_writes(tmp_path, nbd_dirty_runs):
    path = tmp_path / "qemu-made.qcow2"
    qemu_img("create", "-f", "qcow2", path, SIZE)
    qemu_img("bitmap", "--add", path, "g64k")
    qemu_img("bitmap", "--add", "-g", "4k", path, "g4k")
    qemu_img("bitmap", "--add", "-g", "1M", path, "g1m")
    qemu_img("bitmap", "--add", "--disable", path, "off")
    apply_operations(path)
    ranges = [(offset, length) for _, offset, length in OPERATIONS]
    for name, granularity in (("g64k", 64 * KiB), ("g4k", 4 * KiB), ("g1m", 1 * MiB)):
        expected = granule_runs(ranges, granularity, SIZE)
        assert nbd_dirty_runs(path, name) == expected, name
        assert ours(path, name) == expected, name
    assert nbd_dirty_runs(path, "off") == [] and ours(path, "off") == []
    assert_qemu_clean(path)


def test_libvdisk_bitmaps_seen_by_qemu(tmp_path, nbd_dirty_runs):
    if not VDISK:
        pytest.skip("VDISK is not set (run through meson test)")
    path = tmp_path / "vdisk-made.qcow2"
    run(VDISK, "create", "-f", "qcow2", path, str(SIZE))
    run(VDISK, "bitmap", "--add", "-g", "16k", path, "mine")
    run(VDISK, "bitmap", "--add", "--disable", path, "idle")
    with libvdisk.open(path, "r+") as img:
        img.bitmap_add("api", granularity=256 * KiB)
    apply_operations(path)
    bitmaps = qemu_info(path)["format-specific"]["data"]["bitmaps"]
    assert [(b["name"], b["granularity"], b["flags"]) for b in bitmaps] == [
        ("mine", 16 * KiB, ["auto"]), ("idle", 64 * KiB, []), ("api", 256 * KiB, ["auto"])]
    assert_qemu_clean(path)
    ranges = [(offset, length) for _, offset, length in OPERATIONS]
    for name, granularity in (("mine", 16 * KiB), ("api", 256 * KiB)):
        expected = granule_runs(ranges, granularity, SIZE)
        assert nbd_dirty_runs(path, name) == expected == ours(path, name), name
    assert nbd_dirty_runs(path, "idle") == [] == ours(path, "idle")
