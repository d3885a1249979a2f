"""Cross-checks against qemu-img: contents, map and info agree."""

import json

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, pattern, qemu_img

pytestmark = [pytest.mark.usefixtures("library"), needs_qemu_img]

# libvdisk format name -> qemu's, where they differ
QEMU_NAMES = {"vhd": "vpc"}
# (offset, data or a zero-length int) edits applied to both the image and the plain file
EDITS = [(0, pattern(4096, 20)), (65536 + 512, pattern(70000, 21)), (2 * MIB, 300000),
         (3 * MIB - 17, pattern(34, 22)), (4 * MIB - 4096, pattern(4096, 23))]


def qemu_formats():
    result = qemu_img("--help")
    line = next(line for line in result.stdout.splitlines() if "Supported formats" in line)
    return set(line.split(":", 1)[1].split())


def write_reference(path, size):
    """The expected contents, written with plain Python file I/O."""
    with open(path, "wb") as file:
        file.truncate(size)
        for offset, data in EDITS:
            file.seek(offset)
            file.write(bytes(data) if isinstance(data, int) else data)


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "qcow", "vmdk", "vhd", "vhdx", "vdi"])
def test_image_written_through_python_matches(tmp_path, fmt):
    if fmt not in libvdisk.formats():
        pytest.skip(f"libvdisk has no {fmt}")
    qemu_fmt = QEMU_NAMES.get(fmt, fmt)
    if qemu_fmt not in qemu_formats():
        pytest.skip(f"qemu-img has no {qemu_fmt}")
    size = 4 * MIB
    image_path, reference = tmp_path / f"disk.{fmt}", tmp_path / "reference.raw"
    write_reference(reference, size)
    libvdisk.create(image_path, fmt, size)
    with libvdisk.open(image_path, "r+", fmt) as image:
        # fill the zeroed range with data first so write_zeroes has work to do
        image.pwrite(2 * MIB, pattern(300000, 24))
        for offset, data in EDITS:
            if isinstance(data, int):
                image.write_zeroes(offset, data)
            else:
                image.pwrite(offset, data)
    result = qemu_img("compare", "-f", qemu_fmt, "-F", "raw", image_path, reference)
    assert result.returncode == 0, result.stdout + result.stderr

    # and the comparison does notice a difference
    with open(reference, "r+b") as file:
        file.seek(3 * MIB)
        file.write(b"!")
    assert qemu_img("compare", "-f", qemu_fmt, "-F", "raw", image_path, reference).returncode == 1


def test_map_and_info_match_qemu_img(tmp_path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as file:
        file.truncate(4 * MIB)
        file.seek(MIB)
        file.write(pattern(192 * 1024, 25))
    with libvdisk.open(path) as image:
        extents = [extent.to_dict() for extent in image.map()]
        info = image.info()
    qemu_map = json.loads(qemu_img("map", "--output=json", "-f", "raw", path).stdout)
    assert extents == qemu_map
    qemu_info = json.loads(qemu_img("info", "--output=json", "-f", "raw", path).stdout)
    assert info == qemu_info


def test_backing_chain_matches_qemu_img(tmp_path):
    if "qcow2" not in libvdisk.formats():
        pytest.skip("libvdisk has no qcow2")
    base, overlay, reference = tmp_path / "base.raw", tmp_path / "overlay.qcow2", tmp_path / "ref"
    base_data = pattern(MIB, 30)
    with open(base, "wb") as file:
        file.write(base_data)
        file.truncate(4 * MIB)
    result = qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "raw", overlay)
    assert result.returncode == 0, result.stderr
    top = pattern(65536, 31)
    with libvdisk.open(overlay, "r+") as image:
        image.pwrite(MIB // 2 + 512, top)  # partly over the backing data: copy-on-write
        image.pwrite(3 * MIB, top)
        assert image.pread(0, 4096) == base_data[:4096]
    expected = bytearray(base_data + bytes(3 * MIB))
    expected[MIB // 2 + 512:MIB // 2 + 512 + 65536] = top
    expected[3 * MIB:3 * MIB + 65536] = top
    reference.write_bytes(expected)
    result = qemu_img("compare", "-f", "qcow2", "-F", "raw", overlay, reference)
    assert result.returncode == 0, result.stdout + result.stderr

    with libvdisk.open(overlay) as image:
        info = image.info()
        extents = [extent.to_dict() for extent in image.map()]
    qemu_info = json.loads(qemu_img("info", "--output=json", overlay).stdout)
    assert {k: v for k, v in info.items() if k != "actual-size"} == \
        {k: v for k, v in qemu_info.items() if k != "actual-size"}
    assert info["backing-filename"] == "base.raw"
    assert extents == json.loads(qemu_img("map", "--output=json", overlay).stdout)

    with libvdisk.open(overlay, no_backing=True) as image:
        assert image.pread(0, 4096) == bytes(4096)
        assert {extent.depth for extent in image.map()} == {0}
