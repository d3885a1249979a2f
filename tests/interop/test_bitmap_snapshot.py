"""Applying an internal snapshot marks the enabled dirty bitmaps over what it
changes. qemu-img 7.2 refuses to apply a snapshot to an image with bitmaps;
libvdisk applies it and marks dirty, in every enabled bitmap, each cluster
the snapshot maps differently from the state it replaces (a disabled bitmap
stays as it was). The oracles: qemu-img map before and after (the clusters
whose mapping differs), the guest content before and after (every cluster
that changed is dirty), an incremental backup made from the bitmap restores
the image exactly (qemu-img compare), and qemu-nbd -B serves the same dirty
runs when it is installed.
"""
import os

import pytest

import libvdisk
from vdhelp import (NBDINFO, QEMU_NBD, KiB, MiB, assert_qemu_clean, merge_runs, qemu_img,
                    qemu_info, qemu_io, qemu_map, qemu_nbd_dirty_runs, qemu_raw, run)

VDISK = os.environ.get("VDISK")
CLUSTER = 64 * KiB


def cluster_mappings(path, size):
    """For each cluster: (data, zero, host offset or None) as qemu-img map sees it."""
    out = [None] * (size // CLUSTER)
    for e in qemu_map(path):
        for c in range(e["start"] // CLUSTER, (e["start"] + e["length"]) // CLUSTER):
            host = e.get("offset")
            out[c] = (e["data"], e["zero"],
                      None if host is None else host + c * CLUSTER - e["start"])
    return out


def runs_of(clusters):
    return merge_runs((c * CLUSTER, CLUSTER) for c in sorted(clusters))


def covered(runs, offset, length):
    return any(start <= offset and offset + length <= start + n for start, n in runs)


@pytest.fixture
def image(tmp_path):
    """16 MiB, 64 KiB clusters: a snapshot s1 of some data, then the active
    state moved on (rewrites, a zero write, a discard, new data)."""
    if not VDISK:
        pytest.skip("VDISK is not set (run through meson test)")
    path = tmp_path / "vm.qcow2"
    qemu_img("create", "-f", "qcow2", path, 16 * MiB)
    qemu_io(path, "write -P 1 0 4M", "write -P 7 10M 256k")
    qemu_img("snapshot", "-c", "s1", path)
    qemu_io(path, "write -P 2 1M 128k", "write -P 3 3M 4k", "write -z 10M 64k",
            "discard 10368k 64k", "write -P 4 12M 192k")
    return path


def test_apply_marks_what_changed(image, tmp_path):
    run(VDISK, "bitmap", "--add", "-g", "4k", image, "fine")
    run(VDISK, "bitmap", "--add", "-g", "1M", image, "coarse")
    run(VDISK, "bitmap", "--add", "--disable", image, "off")
    # a full backup now: the bitmaps start from it
    full = tmp_path / "full.qcow2"
    run(VDISK, "convert", "-O", "qcow2", image, full)
    size = 16 * MiB
    before_map, before = cluster_mappings(image, size), qemu_raw(image)
    # qemu-img refuses it; vdisk applies it
    refused = qemu_img("snapshot", "-a", "s1", image, check=False)
    assert refused.returncode == 1 and "dirty bitmaps" in refused.stderr, refused
    run(VDISK, "snapshot", "-a", "s1", image)
    after_map, after = cluster_mappings(image, size), qemu_raw(image)
    assert_qemu_clean(image)

    differing = {c for c in range(size // CLUSTER) if before_map[c] != after_map[c]}
    changed = {c for c in range(size // CLUSTER)
               if before[c * CLUSTER:(c + 1) * CLUSTER] != after[c * CLUSTER:(c + 1) * CLUSTER]}
    assert changed and changed <= differing, (sorted(changed), sorted(differing))
    with libvdisk.open(image, "r") as img:
        fine = merge_runs(img.dirty_extents("fine"))
        coarse = merge_runs(img.dirty_extents("coarse"))
        assert img.dirty_extents("off") == []
    # exactly the clusters mapped differently, at the cluster size; the coarse one rounded up
    assert fine == runs_of(differing)
    assert coarse == merge_runs((c * MiB, MiB) for c in sorted({d * CLUSTER // MiB
                                                                for d in differing}))
    if QEMU_NBD and NBDINFO:
        with qemu_nbd_dirty_runs(tmp_path) as served:
            assert served(image, "fine") == fine
            assert served(image, "off") == []

    # the incremental backup over the full one restores the reverted image
    inc = tmp_path / "inc.qcow2"
    run(VDISK, "convert", "-O", "qcow2", "--bitmap", "fine", "-B", full.name, "-F", "qcow2",
        image, inc)
    assert_qemu_clean(inc)
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", inc, image,
                    check=False).returncode == 0


def test_apply_to_another_size(image, tmp_path):
    """A snapshot of another size: what it adds is dirty as a whole, and what
    changed below is covered."""
    run(VDISK, "resize", image, "24M")
    qemu_img("snapshot", "-c", "big", image)
    qemu_io(image, "write -P 5 20M 64k", "write -P 6 7M 64k", "discard 8M 16M")
    run(VDISK, "resize", "--shrink", image, "8M")
    run(VDISK, "bitmap", "--add", image, "b")
    before = qemu_raw(image)
    run(VDISK, "snapshot", "-a", "big", image)
    after = qemu_raw(image)
    assert len(after) == 24 * MiB
    with libvdisk.open(image, "r") as img:
        runs = merge_runs(img.dirty_extents("b"))
    assert covered(runs, 8 * MiB, 16 * MiB), runs
    for c in range(8 * MiB // CLUSTER):
        if before[c * CLUSTER:(c + 1) * CLUSTER] != after[c * CLUSTER:(c + 1) * CLUSTER]:
            assert covered(runs, c * CLUSTER, CLUSTER), (c, runs)
    assert_qemu_clean(image)
    assert qemu_info(image)["format-specific"]["data"]["bitmaps"][0]["flags"] == ["auto"]

