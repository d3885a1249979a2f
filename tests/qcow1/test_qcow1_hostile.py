"""Hostile qcow (v1) images: every header field at 0, all-ones and past its
limits; L1 and L2 entries past the end of the file or over the header;
broken compressed clusters; backing file names past the end, too long, or
looping. Each must be read (all of it), written and closed without a crash
or hang, within bounded memory, and refused with a clear message naming
the file where it cannot be used."""
import os
import resource
import struct
import subprocess
import sys

import pytest

from make_hostile import (QCOW1_HEADER_CASES, QCOW1_L1_ENTRIES, QCOW1_L2_ENTRIES, qcow1_base,
                          qcow1_header_patch, qcow1_l1_entry, patched)
from vdhelp import QEMU_IMG, VDISK, run

SANITIZED = bool(os.environ.get("LD_PRELOAD"))
MEMORY_LIMIT = 1 << 30  # address space of one probe (not under ASan)

PROBE = r"""
import sys, libvdisk
path = sys.argv[1]
try:
    with libvdisk.open(path, "r", "qcow") as img:
        off = 0
        while off < min(img.size, 1 << 26):
            img.pread(off, min(1 << 20, img.size - off)); off += 1 << 20
        img.map()
except libvdisk.Error as e:
    print("READ-ERROR", e)
try:
    with libvdisk.open(path, "r+", "qcow") as img:
        for off in (0, img.size // 2, max(img.size - 4096, 0)):
            img.pwrite(off, b"\x5a" * min(65536, img.size - off))
except libvdisk.Error as e:
    print("WRITE-ERROR", e)
print("DONE")
"""


def limit_memory():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def probe(path):
    """Read all, write a little, close: in a child, bounded in time and memory."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                       text=True, timeout=60, preexec_fn=limit_memory, cwd=path.parent)
    assert r.returncode == 0, f"{path.name}: crashed ({r.returncode}): {r.stderr[-2000:]}"
    assert "DONE" in r.stdout, r.stdout + r.stderr
    errors = [line for line in r.stdout.splitlines() if "ERROR" in line]
    for line in errors:
        assert path.name in line, line
    return errors


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return qcow1_base(str(tmp_path_factory.mktemp("pristine")))


def variant(tmp_path, data, name, patches):
    """A copy of data with (offset, struct format, value) patches."""
    path = tmp_path / name
    path.write_bytes(patched(data, patches))
    return path


@pytest.mark.parametrize("field,value", QCOW1_HEADER_CASES,
                         ids=[f"{f}-{v}" for f, v in QCOW1_HEADER_CASES])
def test_header_field(tmp_path, pristine, field, value):
    path = variant(tmp_path, pristine, f"h-{field}-{value}.qcow",
                   [qcow1_header_patch(field, value)])
    errors = probe(path)
    # a backing file size without an offset is ignored, as QEMU ignores it
    valid = (field in ("mtime", "padding", "backing_offset", "backing_size") or
             (field, value) in (("crypt_method", "zero"), ("size", 1 << 62),
                                ("l1_offset", 550)))
    if not valid:
        assert errors and "READ-ERROR" in errors[0]


def test_header_messages(tmp_path, pristine):
    cases = {("cluster_bits", 8): "Cluster size must be between 512 and 64k",
             ("l2_bits", 14): "L2 table size must be between 512 and 64k",
             ("crypt_method", 2): "invalid encryption method in qcow header",
             ("size", 1): "Image size is too small",
             ("size", (1 << 64) - 1): "Image too large",
             ("backing_size", 1024): "Backing file name too long",
             ("version", 2): "does not support qcow version 2",
             ("l1_offset", 1 << 40): "L1 table",
             ("l1_offset", 8): "overlaps the header"}
    for (field, value), message in cases.items():
        patches = [qcow1_header_patch(field, value)]
        if field == "backing_size":
            patches.append((8, ">Q", 48))
        path = variant(tmp_path, pristine, f"m-{field}.qcow", patches)
        r = run(VDISK, "info", "-f", "qcow", path, check=False)
        assert r.returncode != 0 and message in r.stderr and path.name in r.stderr, \
            (field, r.stderr)


@pytest.mark.parametrize("where", QCOW1_L1_ENTRIES)
def test_l1_entry(tmp_path, pristine, where):
    path = variant(tmp_path, pristine, f"l1-{where}.qcow", [(48, ">Q", where)])
    errors = probe(path)
    if where not in (0,):
        assert errors and "corrupt" in errors[0]


@pytest.mark.parametrize("entry", QCOW1_L2_ENTRIES)
def test_l2_entry(tmp_path, pristine, entry):
    l2 = qcow1_l1_entry(pristine, 0)
    path = variant(tmp_path, pristine, f"l2-{entry:x}.qcow", [(l2, ">Q", entry)])
    errors = probe(path)
    assert errors and "corrupt" in errors[0]


def test_compressed_garbage(tmp_path, pristine):
    """The compressed cluster's bytes overwritten: reads fail with a clear error."""
    l2 = qcow1_l1_entry(pristine, 3)  # 6 MiB: L1 index 3 (2 MiB per table)
    entry = struct.unpack_from(">Q", pristine, l2)[0]
    assert entry >> 63
    host = entry & ((1 << 51) - 1)
    buf = bytearray(pristine)
    buf[host:host + 64] = b"\xff" * 64
    path = tmp_path / "garbage.qcow"
    path.write_bytes(bytes(buf))
    r = run(VDISK, "convert", "-O", "raw", path, tmp_path / "out.raw", check=False)
    assert r.returncode != 0 and "decompress" in r.stderr and path.name in r.stderr


def test_backing_loops(tmp_path):
    a, b, me = tmp_path / "a.qcow", tmp_path / "b.qcow", tmp_path / "s.qcow"
    run(QEMU_IMG, "create", "-f", "qcow", a, "1M")
    run(QEMU_IMG, "create", "-f", "qcow", "-u", "-b", "a.qcow", "-F", "qcow", b, "1M")
    raw = b.read_bytes()  # names a.qcow; a gets a copy naming b.qcow, s one naming itself
    a.write_bytes(raw.replace(b"a.qcow", b"b.qcow"))
    me.write_bytes(raw.replace(b"a.qcow", b"s.qcow"))
    for path in (a, b, me):
        r = run(VDISK, "info", "--backing-chain", path, check=False, timeout=30)
        assert r.returncode != 0 and "loop" in r.stderr.lower(), r.stderr
        r = run(VDISK, "convert", "-O", "raw", path, tmp_path / "out.raw", check=False,
                timeout=30)
        assert r.returncode != 0 and path.name in r.stderr, r.stderr


def test_backing_name_past_eof(tmp_path, pristine):
    path = variant(tmp_path, pristine, "bpast.qcow",
                   [(8, ">Q", len(pristine) - 4), (16, ">I", 100)])
    r = run(VDISK, "info", path, check=False)
    assert r.returncode != 0 and "backing file name" in r.stderr and path.name in r.stderr


def test_entry_past_eof_never_aliases_new_clusters(tmp_path, pristine):
    """An entry naming the bytes just past the end of the file would alias the
    next cluster allocated there: the first write into its table is refused."""
    import libvdisk
    l2 = qcow1_l1_entry(pristine, 0)
    past = (len(pristine) + 4095) // 4096 * 4096
    path = variant(tmp_path, pristine, "alias.qcow", [(l2 + 8 * 10, ">Q", past)])
    with libvdisk.open(str(path), "r+", "qcow") as h:
        with pytest.raises(libvdisk.Error) as err:
            h.pwrite(20 * 4096, b"\x42" * 4096)
        assert "corrupt" in str(err.value) and path.name in str(err.value)
    with libvdisk.open(str(path), "r", "qcow") as h:  # what the image held still reads
        assert h.pread(0, 8192) == b"\x11" * 8192
