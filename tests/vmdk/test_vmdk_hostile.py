"""Hostile VMDK images: broken and malicious variants of small qemu-made
images, and descriptors naming files outside their directory. Each must be
read (all of it), checked, written and closed without a crash or hang, within
bounded memory, and refused with a clear message where it cannot be used;
a confined (safe) open never follows an extent out of its directory."""
import os
import resource
import struct
import subprocess
import sys

import pytest

import libvdisk
from vmdkhelp import MiB, QEMU_IMG, VDISK, corpus_dir, run, write_pattern_qemu

SANITIZED = bool(os.environ.get("LD_PRELOAD"))
MEMORY_LIMIT = 1 << 30  # address space of one probe (not under ASan)

HEADER = {"version": (4, "<I"), "flags": (8, "<I"), "capacity": (12, "<Q"),
          "granularity": (20, "<Q"), "desc_offset": (28, "<Q"), "desc_size": (36, "<Q"),
          "num_gtes": (44, "<I"), "rgd_offset": (48, "<Q"), "gd_offset": (56, "<Q"),
          "grain_offset": (64, "<Q"), "compress": (77, "<H")}
ONES = {"<I": 0xFFFFFFFF, "<Q": 0xFFFFFFFFFFFFFFFF, "<H": 0xFFFF}

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
    d = tmp_path_factory.mktemp("bases")
    out = {}
    for sub in ("monolithicSparse", "streamOptimized"):
        p = d / f"{sub}.vmdk"
        if sub == "streamOptimized":
            raw = d / "src.raw"
            with open(raw, "wb") as f:
                f.truncate(4 * MiB)
                f.seek(MiB)
                f.write(os.urandom(100000) + b"\x11" * 200000)
            run(QEMU_IMG, "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={sub}", raw, p)
        else:
            run(QEMU_IMG, "create", "-q", "-f", "vmdk", "-o", f"subformat={sub}", p, 4 * MiB)
            write_pattern_qemu(p, "vmdk", [(0, 70000, 1), (2 * MiB, 65536, 2)])
        out[sub] = p.read_bytes()
    return out


def header_variants():
    for field, (off, fmt) in HEADER.items():
        for value in (0, 1, 513, 1 << 40, ONES[fmt]):
            if value <= ONES[fmt]:
                yield f"{field}={value:#x}", off, fmt, value


@pytest.mark.parametrize("sub", ["monolithicSparse", "streamOptimized"])
@pytest.mark.parametrize("name,off,fmt,value", list(header_variants()))
def test_header_field(tmp_path, bases, sub, name, off, fmt, value):
    data = bytearray(bases[sub])
    struct.pack_into(fmt, data, off, value)
    path = tmp_path / "h.vmdk"
    path.write_bytes(data)
    probe(path)


def table_offsets(data):
    gd = struct.unpack_from("<Q", data, 56)[0] * 512
    gt = struct.unpack_from("<I", data, gd)[0] * 512
    return gd, gt


@pytest.mark.parametrize("what", ["gd-past-eof", "gd-ones", "gd-at-header", "gt-past-eof",
                                  "gt-ones", "gt-into-gd", "gte-one-no-flag", "rgd-differs"])
def test_tables(tmp_path, bases, what):
    data = bytearray(bases["monolithicSparse"])
    gd, gt = table_offsets(data)
    rgd = struct.unpack_from("<Q", data, 48)[0] * 512
    edits = {
        "gd-past-eof": (gd, "<I", len(data) // 512 + 10),
        "gd-ones": (gd, "<I", 0xFFFFFFFF),
        "gd-at-header": (gd, "<I", 0),
        "gt-past-eof": (gt, "<I", len(data) // 512 + 1000),
        "gt-ones": (gt + 4, "<I", 0xFFFFFFFF),
        "gt-into-gd": (gt, "<I", gd // 512),
        "gte-one-no-flag": (gt, "<I", 1),
        "rgd-differs": (rgd, "<I", 7),
    }
    off, fmt, value = edits[what]
    struct.pack_into(fmt, data, off, value)
    path = tmp_path / "t.vmdk"
    path.write_bytes(data)
    probe(path)


@pytest.mark.parametrize("what", ["size-zero", "size-huge", "garbage", "truncated"])
def test_compressed_grains(tmp_path, bases, what):
    data = bytearray(bases["streamOptimized"])
    gd, gt = table_offsets(data)
    entries = struct.unpack_from("<512I", data, gt)
    grain = next(e for e in entries if e) * 512
    if what == "size-zero":
        struct.pack_into("<I", data, grain + 8, 0)
    elif what == "size-huge":
        struct.pack_into("<I", data, grain + 8, 0xFFFFFFF0)
    elif what == "garbage":
        data[grain + 12:grain + 512] = os.urandom(500)
    else:
        del data[grain + 100:]
    path = tmp_path / "c.vmdk"
    path.write_bytes(data)
    out = probe(path)
    assert "READ-ERROR" in out


DESC = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="{t}"\n{x}\n'


@pytest.mark.parametrize("create_type,extents", [
    ("monolithicFlat", 'RW -5 FLAT "d.img" 0'),
    ("monolithicFlat", 'RW 99999999999999999999 FLAT "d.img" 0'),
    ("monolithicFlat", 'RW 9223372036854775807 FLAT "d.img" 0\nRW 9223372036854775807 FLAT "d.img" 0'),
    ("monolithicFlat", 'RW 8 FLAT "d.img" 18446744073709551615'),
    ("monolithicFlat", 'RW 8 BOGUS "d.img" 0'),
    ("monolithicFlat", 'RW 8 FLAT d.img 0'),
    ("monolithicFlat", 'RW 8 FLAT "d.img'),
    ("monolithicFlat", 'RW 8 FLAT "" 0'),
    ("monolithicFlat", 'RW 8 FLAT "." 0'),
    ("monolithicFlat", 'RW 8 FLAT "desc.vmdk" 0'),
    ("monolithicFlat", ""),
    ("seSparse", 'RW 8 SESPARSE "d.img"'),
    ("monolithicFlat", 'RW 8 SESPARSE "d.img"'),
    ("twoGbMaxExtentSparse", 'RW 8 SPARSE "d.img"'),
    ("twoGbMaxExtentSparse", 'RW 8 SPARSE "desc.vmdk"'),
    ("fullDevice", 'RW 8 FLAT "d.img" 0'),
    ("monolithicFlat", "\n".join(f'RW 1 FLAT "d.img" {i}' for i in range(5000))),
    ("monolithicFlat", 'RDONLY 8 FLAT "d.img" 0\nNOACCESS 8 FLAT "d.img" 0\nRW 8 ZERO'),
])
def test_descriptor(tmp_path, create_type, extents):
    (tmp_path / "d.img").write_bytes(b"\x42" * 8192)
    path = tmp_path / "desc.vmdk"
    path.write_text(DESC.format(t=create_type, x=extents))
    probe(path)


def test_descriptor_too_large_is_refused(tmp_path):
    path = tmp_path / "big.vmdk"
    path.write_text(DESC.format(t="monolithicFlat", x="#" * (2 * MiB)))
    r = run(VDISK, "info", path, check=False)
    assert r.returncode == 1 and "descriptor is larger than" in r.stderr


def test_readonly_and_zero_extents_read_as_described(tmp_path):
    (tmp_path / "d.img").write_bytes(b"\x42" * 4096 + b"\x43" * 4096)
    path = tmp_path / "desc.vmdk"
    path.write_text(DESC.format(t="monolithicFlat",
                                x='RDONLY 8 FLAT "d.img" 0\nRW 4 ZERO\nRW 8 FLAT "d.img" 8'))
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
    path.write_text(DESC.format(t="monolithicFlat", x=f'RW 1 FLAT "{name}" 0'))
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
