"""Image.check(): clean and damaged qcow2 images, repairs, and qemu-img check."""

import ctypes
import dataclasses
import json
import os
import re
import struct

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, pattern, qemu_img
from libvdisk import _lib

HEADER = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir,
                      "include", "libvdisk", "libvdisk.h")

pytestmark = pytest.mark.usefixtures("library")

QCOW2_INCOMPAT_CORRUPT = 1 << 1


def test_struct_matches_header():
    if not os.path.exists(HEADER):
        pytest.skip("not in a source tree")
    with open(HEADER, encoding="utf-8") as header:
        text = header.read()
    body = re.search(r"typedef struct vd_check_result \{(.*?)\} vd_check_result;", text, re.S)
    fields = re.findall(r"^\s*(uint32_t|uint64_t)\s+(\w+);", body.group(1), re.M)
    ctypes_types = {"uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64}
    assert [(name, ctypes_types[kind]) for kind, name in fields] == \
        list(_lib.VdCheckResult._fields_)
    counts = [field.name for field in dataclasses.fields(libvdisk.CheckResult)]
    assert counts == [name for _, name in fields[2:]] + ["messages"]


def qcow2_header(path):
    """The fields of a qcow2 header these tests need (parsed with struct)."""
    with open(path, "rb") as file:
        raw = file.read(104)
    (magic, version, _backing_offset, _backing_size, cluster_bits, _size, _crypt, _l1_size,
     _l1_offset, refcount_table_offset, _rt_clusters, _snapshots, _snapshots_offset) = \
        struct.unpack(">4sIQIIQIIQQIIQ", raw[:72])
    assert magic == b"QFI\xfb"
    refcount_order = struct.unpack(">I", raw[96:100])[0] if version >= 3 else 4
    return {"version": version, "cluster_size": 1 << cluster_bits,
            "refcount_table_offset": refcount_table_offset,
            "refcount_bits": 1 << refcount_order}


def set_refcount(path, cluster, value):
    """Overwrite a cluster's entry in the first refcount block (16-bit refcounts)."""
    header = qcow2_header(path)
    assert header["refcount_bits"] == 16
    assert cluster < header["cluster_size"] * 8 // 16, "not covered by the first refcount block"
    with open(path, "r+b") as file:
        file.seek(header["refcount_table_offset"])
        (block,) = struct.unpack(">Q", file.read(8))
        assert block, "no first refcount block"
        file.seek(block + 2 * cluster)
        file.write(struct.pack(">H", value))


def make_leak(path):
    """Extend the file by a cluster and give that cluster a refcount of 1; its index."""
    cluster_size = qcow2_header(path)["cluster_size"]
    cluster = -(-os.path.getsize(path) // cluster_size)
    with open(path, "r+b") as file:
        file.truncate((cluster + 1) * cluster_size)
    set_refcount(path, cluster, 1)
    return cluster


def set_corrupt_bit(path):
    with open(path, "r+b") as file:
        file.seek(72)
        (features,) = struct.unpack(">Q", file.read(8))
        file.seek(72)
        file.write(struct.pack(">Q", features | QCOW2_INCOMPAT_CORRUPT))


@pytest.fixture
def qcow2_image(tmp_path, library):
    """A 4 MiB qcow2 image with 192 KiB of data at 1 MiB, and that data."""
    if "qcow2" not in libvdisk.formats():
        pytest.skip("libvdisk has no qcow2")
    path = tmp_path / "disk.qcow2"
    data = pattern(192 * 1024, 40)
    libvdisk.create(path, "qcow2", 4 * MIB)
    with libvdisk.open(path, "r+") as image:
        image.pwrite(MIB, data)
    return path, data


def qemu_check(path):
    """qemu-img check's JSON, without the filename and format keys."""
    result = qemu_img("check", "--output=json", "-f", "qcow2", path)
    report = json.loads(result.stdout)
    del report["filename"], report["format"]
    return report


def test_clean(qcow2_image):
    path, data = qcow2_image
    with libvdisk.open(path) as image:
        result = image.check()
    assert isinstance(result, libvdisk.CheckResult)
    assert result.clean and result.messages == []
    assert (result.corruptions, result.leaks, result.check_errors) == (0, 0, 0)
    assert (result.corruptions_fixed, result.leaks_fixed) == (0, 0)
    assert result.total_clusters == 4 * MIB // 65536
    assert result.allocated_clusters == len(data) // 65536
    assert result.compressed_clusters == 0
    assert 0 < result.image_end_offset <= os.path.getsize(path)
    assert result.to_dict() == {"check-errors": 0, "total-clusters": 64,
                                "allocated-clusters": 3,
                                "image-end-offset": result.image_end_offset,
                                **({"fragmented-clusters": result.fragmented_clusters}
                                   if result.fragmented_clusters else {})}


@needs_qemu_img
def test_clean_agrees_with_qemu(qcow2_image):
    path, _ = qcow2_image
    with libvdisk.open(path) as image:
        assert image.check().to_dict() == qemu_check(path)


def test_raw_is_unsupported(patterned_raw):
    path, _ = patterned_raw
    with libvdisk.open(path, "r+") as image:
        with pytest.raises(libvdisk.Unsupported, match="raw"):
            image.check()
        with pytest.raises(libvdisk.Unsupported):
            image.check(repair="all")


def test_bad_repair_argument(qcow2_image):
    path, _ = qcow2_image
    with libvdisk.open(path, "r+") as image:
        for value in ("everything", True, 1, ["all"]):
            with pytest.raises(ValueError, match="repair"):
                image.check(repair=value)


def test_repair_needs_a_writable_image(qcow2_image):
    path, _ = qcow2_image
    make_leak(path)
    with libvdisk.open(path) as image:
        for repair in ("leaks", "all"):
            with pytest.raises(libvdisk.ReadOnly, match=str(path)):
                image.check(repair=repair)
        assert image.check().leaks == 1  # nothing was changed


@pytest.mark.parametrize("repair", ["leaks", "all"])
def test_leak_found_and_repaired(qcow2_image, repair):
    path, data = qcow2_image
    cluster = make_leak(path)
    with libvdisk.open(path) as image:
        found = image.check()
    assert (found.leaks, found.corruptions, found.leaks_fixed) == (1, 0, 0)
    assert not found.clean
    assert found.messages == [f"Leaked cluster {cluster} refcount=1 reference=0"]

    with libvdisk.open(path, "r+") as image:
        repaired = image.check(repair=repair)
        assert (repaired.leaks, repaired.leaks_fixed, repaired.corruptions) == (0, 1, 0)
        assert repaired.clean
        # compared first, then repaired, as qemu-img check reports it
        assert repaired.messages == [f"Leaked cluster {cluster} refcount=1 reference=0",
                                     f"Repairing cluster {cluster} refcount=1 reference=0"]
        again = image.check()
        assert again.clean and again.messages == [] and again.leaks_fixed == 0
        assert image.pread(MIB, len(data)) == data
    with libvdisk.open(path) as image:
        assert image.check().clean


@needs_qemu_img
def test_leak_agrees_with_qemu(qcow2_image):
    path, _ = qcow2_image
    make_leak(path)
    with libvdisk.open(path) as image:
        found = image.check()
    report = qemu_check(path)
    assert report["leaks"] == 1
    assert found.to_dict() == report
    assert qemu_img("check", "-f", "qcow2", path).returncode == 3  # leaks only
    with libvdisk.open(path, "r+") as image:
        image.check(repair="leaks")
    assert qemu_img("check", "-f", "qcow2", path).returncode == 0
    with libvdisk.open(path) as image:
        assert image.check().to_dict() == qemu_check(path)


def damage_data_cluster(path):
    """Set the refcount of the first data cluster to 0; its host cluster index."""
    with libvdisk.open(path) as image:
        host = next(extent.offset for extent in image.map() if extent.data)
        cluster = host // image.info()["cluster-size"]
    set_refcount(path, cluster, 0)
    return cluster


def test_corruption_found_and_repaired(qcow2_image):
    path, data = qcow2_image
    cluster = damage_data_cluster(path)
    with libvdisk.open(path) as image:
        found = image.check()
    assert found.corruptions >= 1 and found.leaks == 0 and not found.clean
    assert f"ERROR cluster {cluster} refcount=0 reference=1" in found.messages

    with libvdisk.open(path, "r+") as image:
        # a referenced cluster with refcount 0 needs a rebuild, which leaks-only may not do
        with pytest.raises(libvdisk.CorruptImage, match="need a rebuild"):
            image.check(repair="leaks")
        repaired = image.check(repair="all")
        assert repaired.corruptions == 0 and repaired.corruptions_fixed >= 1
        assert "Rebuilding refcount structure" in repaired.messages
        assert image.check().clean
        assert image.pread(MIB, len(data)) == data


@needs_qemu_img
def test_corruption_agrees_with_qemu(qcow2_image):
    path, _ = qcow2_image
    damage_data_cluster(path)
    with libvdisk.open(path) as image:
        found = image.check()
    assert found.to_dict() == qemu_check(path)
    assert qemu_img("check", "-f", "qcow2", path).returncode == 2
    with libvdisk.open(path, "r+") as image:
        image.check(repair="all")
    result = qemu_img("check", "-f", "qcow2", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_open_for_repair(qcow2_image):
    """An image marked corrupt opens read-write only with repair=True, and then
    takes no data writes until check(repair="all") has fixed it."""
    path, data = qcow2_image
    damage_data_cluster(path)
    set_corrupt_bit(path)
    with pytest.raises(libvdisk.CorruptImage, match=str(path)):
        libvdisk.open(path, "r+")
    with pytest.raises(ValueError, match="r\\+"):
        libvdisk.open(path, "r", repair=True)
    with libvdisk.open(path) as image:  # read-only is fine
        assert image.pread(MIB, len(data)) == data
    with libvdisk.open(path, "r+", repair=True) as image:
        with pytest.raises(libvdisk.CorruptImage):
            image.pwrite(0, b"early")
        assert image.check(repair="all").corruptions == 0
        image.pwrite(0, b"after")
    with libvdisk.open(path, "r+") as image:
        assert image.check().clean
        assert image.pread(0, 5) == b"after" and image.pread(MIB, len(data)) == data


def test_check_a_backing_image(tmp_path, qcow2_image):
    path, _ = qcow2_image
    make_leak(path)
    overlay = tmp_path / "overlay.qcow2"
    libvdisk.create(overlay, "qcow2", backing_file=path.name)
    with libvdisk.open(overlay) as image:
        assert image.check().clean
        assert image.backing.check().leaks == 1
        with pytest.raises(libvdisk.ReadOnly):  # backing images are read-only
            image.backing.check(repair="leaks")
