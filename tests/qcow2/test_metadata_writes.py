"""Metadata writes on edge-case and hostile images, beside qemu-img 7.2: a snapshot delete
frees exactly the clusters of its own L1 table, and no metadata write or allocation lands
on another structure, whatever the refcounts claim."""
import os

import pytest

from conftest import assert_clean, raw_content
from qcow2meta import Qcow2

INCOMPAT_LOW_BYTE = 79  # the last byte of the incompatible features: bit 1 is "corrupt"


def with_corrupt_bit(image):
    """The bytes of an image once marked corrupt, and changed in no other way."""
    marked = bytearray(image)
    marked[INCOMPAT_LOW_BYTE] |= 2
    return bytes(marked)


def test_snapshot_of_an_empty_image_has_no_l1_table(tmp_path, qemu_img, vdisk):
    """A 0-byte image has an empty L1 table. A snapshot of it records L1 offset 0 and size 0
    and takes no cluster for them, as qemu-img's does; deleting one frees nothing, so the
    header keeps its refcount."""
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for path in (ours, theirs):
        qemu_img("create", "-f", "qcow2", path, "0")
    size_before = os.path.getsize(ours)
    vdisk("snapshot", "-c", "s1", ours)
    qemu_img("snapshot", "-c", "s1", theirs)
    with Qcow2(ours) as q:
        # the only new cluster holds the snapshot table
        assert os.path.getsize(ours) == size_before + q.cluster_size
    for path in (ours, theirs):
        with Qcow2(path) as q:
            assert q.snapshot_l1(0) == (0, 0)
        assert_clean(path)

    vdisk("snapshot", "-d", "s1", theirs)
    qemu_img("snapshot", "-d", "s1", ours)
    for path in (ours, theirs):
        assert_clean(path)
        with Qcow2(path) as q:
            assert q.field("nb_snapshots") == 0
            assert q.refcount(0) == 1


def test_snapshot_delete_refuses_an_l1_table_on_guest_data(tmp_path, qemu_img, qemu_io, vdisk):
    """A hostile snapshot entry names a cluster of guest data as its L1 table: deleting the
    snapshot would free that cluster, and the next allocating write would reuse it. The
    delete is refused and the image marked corrupt, nothing else changes. (qemu-img 7.2
    deletes the snapshot and frees the guest's cluster.)"""
    path = tmp_path / "hostile.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    qemu_img("snapshot", "-c", "s1", path)
    # written after the snapshot: a cluster of the active state alone (refcount 1), whose
    # first 8 bytes read as an empty L1 entry
    qemu_io("-c", "write -P 0 0 8", "-c", "write -P 0x5a 8 65528", path)
    with Qcow2(path) as q:
        data = q.host_cluster(0)
        assert q.refcount(data) == 1
        q.set_snapshot_l1(0, data, 1)
    before, content = path.read_bytes(), raw_content(path)

    refused = vdisk("snapshot", "-d", "s1", path, check=False)
    assert refused.returncode == 1
    assert f"{path}: qcow2 image is corrupt" in refused.stderr
    assert "is also the L1 table of a snapshot" in refused.stderr
    assert path.read_bytes() == with_corrupt_bit(before)
    assert raw_content(path) == content
    assert "s1" in qemu_img("snapshot", "-l", path).stdout


def test_snapshot_delete_refuses_an_l1_table_without_refcount(tmp_path, qemu_img, qemu_io, vdisk):
    """The cluster of a snapshot's L1 table has refcount 0 (free, for the allocator): the
    delete is refused before anything changes, rather than found out halfway."""
    path = tmp_path / "hostile.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    qemu_io("-c", "write -P 3 0 64k", path)
    qemu_img("snapshot", "-c", "s1", path)
    with Qcow2(path) as q:
        q.set_refcount(q.snapshot_l1(0)[0], 0)
    before = path.read_bytes()

    refused = vdisk("snapshot", "-d", "s1", path, check=False)
    assert refused.returncode == 1
    assert f"{path}: qcow2 image is corrupt" in refused.stderr
    assert "the L1 table of snapshot 's1' is in host cluster" in refused.stderr
    assert "whose refcount is 0" in refused.stderr
    assert path.read_bytes() == with_corrupt_bit(before)


# A structure, where its cluster lies, and its name in our messages and in qemu-img's.
STRUCTURES = {
    "header": (lambda q: 0, "qcow2 header", "qcow2_header"),
    "l1": (lambda q: q.h["l1_table_offset"], "active L1 table", "active L1 table"),
    "refcount-table": (lambda q: q.h["refcount_table_offset"], "refcount table", "refcount table"),
}


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
@pytest.mark.parametrize("command", [("snapshot", "-c", "s1", "{}"), ("resize", "{}", "10G")],
                         ids=["snapshot", "resize"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_metadata_with_refcount_0_is_never_allocated(tmp_path, qemu_img, qemu_io, vdisk, compat,
                                                     command, structure):
    """A metadata cluster's refcount is 0 (the header's, say), so the refcounts call it free.
    A snapshot (a new L1 copy) or a resize that grows the L1 table must not put a table
    there: like qemu-img ("Preventing invalid write on metadata (overlaps with
    qcow2_header)"), vdisk refuses, names the file, and leaves the image as it was but for
    the corrupt bit (which a v2 image lacks)."""
    where, our_name, qemu_name = STRUCTURES[structure]
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"compat={compat}", ours, "1M")
    qemu_io("-c", "write -P 7 0 64k", ours)
    with Qcow2(ours) as q:
        q.set_refcount(where(q), 0)
        cluster_size = q.cluster_size
    before = ours.read_bytes()
    theirs.write_bytes(before)
    expected = with_corrupt_bit(before) if compat == "1.1" else before

    refused = vdisk(*(arg.format(ours) for arg in command), check=False)
    assert refused.returncode == 1
    assert f"{ours}: qcow2 image is corrupt" in refused.stderr
    assert f"overlaps the {our_name}" in refused.stderr
    assert ours.read_bytes() == expected

    # qemu-img refuses too, and leaves the same header (it may leave a refcount changed)
    qemu_refused = qemu_img(*(arg.format(theirs) for arg in command), check=False)
    assert qemu_refused.returncode == 1
    assert f"overlaps with {qemu_name}" in qemu_refused.stderr
    assert theirs.read_bytes()[:cluster_size] == expected[:cluster_size]
