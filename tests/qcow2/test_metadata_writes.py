"""Metadata writes on hostile images, beside qemu-img 7.2: no metadata write or allocation
lands on another structure, whatever the refcounts claim."""
import pytest

from qcow2meta import Qcow2

INCOMPAT_LOW_BYTE = 79  # the last byte of the incompatible features: bit 1 is "corrupt"


def with_corrupt_bit(image):
    """The bytes of an image once marked corrupt, and changed in no other way."""
    marked = bytearray(image)
    marked[INCOMPAT_LOW_BYTE] |= 2
    return bytes(marked)


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
