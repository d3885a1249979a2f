"""Hostile VMDK images: broken and malicious variants of small qemu-made
images, and descriptors naming files outside their directory. Each must be
read (all of it), checked, written and closed without a crash or hang, within
bounded memory, and refused with a clear message where it cannot be used;
a confined (safe) open never follows an extent out of its directory."""
import os
import resource
import subprocess
import sys

import pytest

import libvdisk
from make_hostile import (SESPARSE_EDITS, VMDK_DESCRIPTOR_CASES, VMDK_GRAIN_EDITS,
                          VMDK_SPARSE_BASES, VMDK_TABLE_EDITS, patched, sesparse_descriptor,
                          sesparse_image, vmdk_bases, vmdk_descriptor, vmdk_grain_edit,
                          vmdk_header_variants, vmdk_table_edit)
from vdhelp import MiB, QEMU_IMG, VDISK, corpus_dir, run

SANITIZED = bool(os.environ.get("LD_PRELOAD"))
MEMORY_LIMIT = 1 << 30  # address space of one probe (not under ASan)

PROBE = r"""
import sys, libvdisk
path, fmt = sys.argv[1], sys.argv[2]
try:
    with libvdisk.open(path, "r", fmt) as img:
        off = 0
        while off < min(img.size, 1 << 26):
            img.pread(off, min(1 << 20, img.size - off)); off += 1 << 20
        img.map()
except libvdisk.Error as e:
    print("READ-ERROR", e)
try:
    with libvdisk.open(path, "r", fmt) as img:
        img.check()
except libvdisk.Error as e:
    print("CHECK-ERROR", e)
try:
    with libvdisk.open(path, "r+", fmt) as img:
        for off in (0, img.size // 2, max(img.size - 4096, 0)):
            img.pwrite(off, b"\x5a" * min(65536, img.size - off))
except libvdisk.Error as e:
    print("WRITE-ERROR", e)
print("DONE")
"""


def limit_memory():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def probe(path, fmt="vmdk"):
    """Read all, write a little, close: in a child, bounded in time and memory."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), fmt], capture_output=True,
                       text=True, timeout=60, preexec_fn=limit_memory)
    assert r.returncode == 0, f"{path.name}: crashed ({r.returncode}): {r.stderr[-2000:]}"
    assert "DONE" in r.stdout, r.stdout + r.stderr
    for line in r.stdout.splitlines():
        if "ERROR" in line:
            assert str(path.name) in line or "VMDK" in line or "vmdk" in line, line
    return r.stdout


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return vmdk_bases(str(tmp_path_factory.mktemp("bases")))


@pytest.mark.parametrize("sub", VMDK_SPARSE_BASES)
@pytest.mark.parametrize("name,off,fmt,value", list(vmdk_header_variants()))
def test_header_field(tmp_path, bases, sub, name, off, fmt, value):
    path = tmp_path / "h.vmdk"
    path.write_bytes(patched(bases[sub], [(off, fmt, value)]))
    probe(path)


@pytest.mark.parametrize("what", VMDK_TABLE_EDITS)
def test_tables(tmp_path, bases, what):
    path = tmp_path / "t.vmdk"
    path.write_bytes(vmdk_table_edit(bases["monolithicSparse"], what))
    probe(path)


@pytest.mark.parametrize("what", VMDK_GRAIN_EDITS)
def test_compressed_grains(tmp_path, bases, what):
    path = tmp_path / "c.vmdk"
    path.write_bytes(vmdk_grain_edit(bases["streamOptimized"], what))
    out = probe(path)
    assert "READ-ERROR" in out


@pytest.mark.parametrize("create_type,extents", VMDK_DESCRIPTOR_CASES)
def test_descriptor(tmp_path, create_type, extents):
    (tmp_path / "d.img").write_bytes(b"\x42" * 8192)
    path = tmp_path / "desc.vmdk"
    path.write_text(vmdk_descriptor(create_type, extents))
    probe(path)


@pytest.mark.parametrize("what", list(SESPARSE_EDITS) + ["truncated"])
def test_sesparse(tmp_path, what):
    """Broken seSparse extents: refused by name, or read; never written."""
    data = sesparse_image(**SESPARSE_EDITS.get(what, {}))
    (tmp_path / "se-sesparse.vmdk").write_bytes(data[:40000] if what == "truncated" else data)
    path = tmp_path / "se.vmdk"
    path.write_bytes(sesparse_descriptor())
    out = probe(path)
    assert "WRITE-ERROR" in out and "read-only" in out, out
    if what in ("const-magic", "version", "grain-size-16", "table-size-128", "volatile-magic",
                "replay-journal", "capacity-zero", "gd-past-eof", "gd-size-huge"):
        assert "READ-ERROR" in out and "se-sesparse.vmdk" in out, out
    if what in ("gd-entry-type", "gte-past-eof", "gte-bad-type", "gte-all-ones",
                "gte-unallocated-bits", "gd-entry-table-past-eof"):
        assert "READ-ERROR" in out and "seSparse" in out, out


def test_descriptor_too_large_is_refused(tmp_path):
    path = tmp_path / "big.vmdk"
    path.write_text(vmdk_descriptor("monolithicFlat", "#" * (2 * MiB)))
    r = run(VDISK, "info", path, check=False)
    assert r.returncode == 1 and "descriptor is larger than" in r.stderr


def test_readonly_and_zero_extents_read_as_described(tmp_path):
    (tmp_path / "d.img").write_bytes(b"\x42" * 4096 + b"\x43" * 4096)
    path = tmp_path / "desc.vmdk"
    path.write_text(vmdk_descriptor("monolithicFlat",
                                    'RDONLY 8 FLAT "d.img" 0\nRW 4 ZERO\nRW 8 FLAT "d.img" 8'))
    with libvdisk.open(path, "r+", "vmdk") as img:
        assert img.size == 20 * 512
        assert img.pread(0, 4096) == b"\x42" * 4096
        assert img.pread(4096, 2048) == bytes(2048)
        assert img.pread(6144, 4096) == b"\x43" * 4096
        with pytest.raises(libvdisk.Error, match="read-only"):
            img.pwrite(0, b"x" * 512)
        img.pwrite(6144, b"y" * 512)
    assert (tmp_path / "d.img").read_bytes()[4096:4608] == b"y" * 512


SECRET = b"secret bytes of the host\n" * 30


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret", "link", "sub2/../../secret"])
def test_confined_open_refuses_extents_outside(tmp_path, name):
    (tmp_path / "secret").write_bytes(SECRET)
    d = tmp_path / "images"
    d.mkdir()
    (d / "sub2").mkdir()
    os.symlink("../secret", d / "link")
    path = d / "evil.vmdk"
    path.write_text(vmdk_descriptor("monolithicFlat", f'RW 1 FLAT "{name}" 0'))
    with pytest.raises(libvdisk.Error, match="outside|symbolic link"):
        libvdisk.open(path, "r", "vmdk", safe=True)
    with pytest.raises(libvdisk.Error, match="outside|symbolic link"):
        libvdisk.open(path, "r", "vmdk", confined=True)
    r = run(VDISK, "convert", "--safe", "-O", "raw", path, tmp_path / "out.raw", check=False)
    assert r.returncode == 1 and ("outside" in r.stderr or "symbolic link" in r.stderr)
    # a default open follows the name as QEMU does (README: VMDK section)
    with libvdisk.open(path, "r", "vmdk") as img:
        assert img.pread(0, 512) == open(os.path.normpath(d / name) if not name.startswith("/")
                                         else name, "rb").read(512).ljust(512, b"\0")[:512]


def test_confined_open_reads_extents_inside(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    path = d / "ok.vmdk"
    run(QEMU_IMG, "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", path, MiB)
    with libvdisk.open(path, "r", "vmdk", safe=True) as img:
        assert img.pread(0, 512) == bytes(512)


def test_corpus_vmdk_images(tmp_path):
    import bz2
    import hashlib
    d = corpus_dir()
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(d, "MANIFEST.tsv"))
            if line.strip() and not line.startswith("#")]
    vmdks = [r for r in rows if r[1] == "vmdk"]
    assert vmdks, "MANIFEST.tsv lists no vmdk image"
    for name, _, size, md5 in (r[:4] for r in vmdks):
        path = tmp_path / name[:-4]
        with bz2.open(os.path.join(d, name)) as src:
            path.write_bytes(src.read())
        if md5 == "reject":
            with pytest.raises(libvdisk.Error) as e:
                libvdisk.open(path, "r")
            assert path.name in str(e.value)
            probe(path)
            continue
        digest = hashlib.md5()
        with libvdisk.open(path, "r") as img:
            assert img.size == int(size)
            for off in range(0, img.size, 4 * MiB):
                digest.update(img.pread(off, min(4 * MiB, img.size - off)))
        assert digest.hexdigest() == md5
