"""vdisk check on VMDK against qemu-img check 7.2: clean images (qemu's and
ours) check clean in both; a grain table entry past the end of the file and
a truncated file fail both checks (exit 1); a grain directory entry past
the end of the file fails ours only (qemu reads the missing table as
zeroes); neither tool repairs (exit 63)."""
import json
import os
import struct

import pytest

from vdhelp import MiB, QEMU_IMG, VDISK, raw_model, run

SPARSE = ["monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized"]
SIZE = 8 * MiB
PAT = [(0, 70000, 0x11), (3 * MiB, 65536, 0x22), (7 * MiB, 4096, 0x33)]


def make(tmp_path, tool, subformat):
    """An image of subformat holding PAT, written by tool (converted from a raw model)."""
    model = raw_model(tmp_path / "model.raw", SIZE, PAT)
    path = tmp_path / f"{os.path.basename(tool)}-{subformat}.vmdk"
    run(tool, "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", model, path)
    return path


def sparse_extent(path):
    """The file holding the first sparse extent: the image, or its -s001 file."""
    data = path.read_bytes()
    if data[:4] == b"KDMV":
        return path
    return path.with_name(path.stem + "-s001.vmdk")


def header(f):
    """(gd offset, grain table entries, grain sectors) of a KDMV extent, footer included."""
    data = f.read_bytes()
    h = data[:512]
    if struct.unpack_from("<Q", h, 56)[0] == 0xFFFFFFFFFFFFFFFF:
        h = data[-1024:-512]  # streamOptimized: the footer's copy counts
    return struct.unpack_from("<Q", h, 56)[0] * 512, struct.unpack_from("<I", h, 44)[0]


def damage(path, what):
    f = sparse_extent(path)
    gd, _ = header(f)
    data = bytearray(f.read_bytes())
    if what == "gte-past-eof":
        gt = struct.unpack_from("<I", data, gd)[0] * 512
        struct.pack_into("<I", data, gt, 0x7FFFFF00)
    elif what == "gd-past-eof":
        struct.pack_into("<I", data, gd, 0x7FFFFF00)
    else:  # truncated: the last data grains go
        del data[len(data) - 3 * 65536 if data[:4] == b"KDMV" and len(data) > 4 * 65536 else -2048:]
    f.write_bytes(data)


def check(tool, path, *args):
    return run(tool, "check", "-f", "vmdk", *args, path, check=False)


@pytest.mark.parametrize("subformat", SPARSE + ["monolithicFlat", "twoGbMaxExtentFlat"])
@pytest.mark.parametrize("writer", ["qemu", "vdisk"])
def test_clean_images_check_clean_in_both(tmp_path, subformat, writer):
    path = make(tmp_path, QEMU_IMG if writer == "qemu" else VDISK, subformat)
    for output in ("human", "json"):
        ours, qemus = (check(t, path, f"--output={output}") for t in (VDISK, QEMU_IMG))
        assert (ours.returncode, qemus.returncode) == (0, 0), ours.stderr + qemus.stderr
        if output == "json":
            assert json.loads(ours.stdout) == json.loads(qemus.stdout)
        else:
            assert ours.stdout == qemus.stdout == "No errors were found on the image.\n"


@pytest.mark.parametrize("subformat", SPARSE)
@pytest.mark.parametrize("what", ["gte-past-eof", "truncated"])
def test_grains_past_eof_fail_both_checks(tmp_path, subformat, what):
    path = make(tmp_path, VDISK, subformat)
    damage(path, what)
    ours, qemus = check(VDISK, path), check(QEMU_IMG, path)
    assert qemus.returncode == 1 and "Check failed" in qemus.stderr, qemus.stderr
    assert ours.returncode == 1 and "Check failed" in ours.stderr, ours.stderr
    # qemu stops at the first bad grain; ours names it first, then any others
    first = next(line for line in qemus.stderr.splitlines() if line.startswith("ERROR"))
    assert ours.stderr.splitlines()[0] == first
    assert ours.stdout == qemus.stdout == ""


@pytest.mark.parametrize("subformat", SPARSE)
def test_grain_table_past_eof_fails_ours_only(tmp_path, subformat):
    """A documented difference: qemu-img reads a table past the end as zeroes."""
    path = make(tmp_path, VDISK, subformat)
    damage(path, "gd-past-eof")
    assert check(QEMU_IMG, path).returncode == 0
    ours = check(VDISK, path)
    assert ours.returncode == 1
    assert "grain table for sector 0 (at offset 1099511496704) lies past the end" in ours.stderr


def test_shared_grain_table_is_a_corruption(tmp_path):
    path = tmp_path / "shared.vmdk"  # 64 MiB: two grain tables
    run(VDISK, "create", "-q", "-f", "vmdk", path, 64 * MiB)
    gd, _ = header(path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, gd + 4, struct.unpack_from("<I", data, gd)[0])
    path.write_bytes(data)
    ours = check(VDISK, path)
    assert ours.returncode == 1 and "belongs to another part of the disk too" in ours.stderr


@pytest.mark.parametrize("repair", ["leaks", "all"])
def test_no_repair_like_qemu(tmp_path, repair):
    path = make(tmp_path, VDISK, "monolithicSparse")
    before = path.read_bytes()
    qemus, ours = check(QEMU_IMG, path, "-r", repair), check(VDISK, path, "-r", repair)
    assert qemus.returncode == ours.returncode == 63
    assert "This image format does not support checks" in qemus.stderr
    assert "This image format does not support checks" in ours.stderr
    assert "VMDK images cannot be repaired" in ours.stderr
    assert path.read_bytes() == before
