#!/usr/bin/env python3
"""Build a corpus of hostile qcow2 images from small valid ones made by qemu-img.

    make_hostile.py OUTDIR [--list]

Each variant gets its own directory OUTDIR/<name>/ holding disk.qcow2 (the
image to open) and whatever files it refers to; OUTDIR/index.json lists the
variants:

    {"name": ..., "dir": <name>, "file": "disk.qcow2", "base": ..., "what": ...,
     "outside": true if it names a file outside its directory}

Bases (qemu-img create + qemu-io, 4 KiB clusters, 4 MiB virtual):
v3, v2 (compat=0.10), v3-backing (over base.qcow2), v2-backing (over
base.raw), v3-snap (a snapshot by qemu-img snapshot -c), v3-ext (extended
L2), v3-comp (compressed clusters), v3-lazy (lazy refcounts).

Families of variants: every header field set to 0, all-ones, just past each
limit, misaligned and past the end; header extensions; L1, L2 and refcount
table entries pointing at metadata, past EOF, misaligned; compressed
entries with garbage; snapshot tables with absurd lengths; backing files
that loop, point outside the directory, at /etc/passwd, at a FIFO, ...;
truncated files. Needs QEMU_IMG and QEMU_IO (or qemu-img/qemu-io on PATH).

A section for VMDK and qcow (version 1) holds one generator per family
(header fields, grain directory and table entries, compressed grains and
descriptors; qcow header fields, past its limits, L1 and L2 entries), used
by their suites (tests/vmdk, tests/qcow1) and, through build_other(), by
test_hostile.py, which runs each variant through hostile_probe.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

QEMU_IMG = os.environ.get("QEMU_IMG") or shutil.which("qemu-img") or "qemu-img"
QEMU_IO = os.environ.get("QEMU_IO") or shutil.which("qemu-io") or "qemu-io"

CS = 4096  # the bases' cluster size (16 KiB for extended L2)
ONES32, ONES64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
COPIED, COMPRESSED = 1 << 63, 1 << 62
OFFSET_MASK = 0x00FFFFFFFFFFFE00
PASSWD = "/etc/passwd"

HEADER = {
    "magic": (0, ">I"), "version": (4, ">I"), "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"), "cluster_bits": (20, ">I"), "size": (24, ">Q"),
    "crypt_method": (32, ">I"), "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"), "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"), "refcount_order": (96, ">I"),
    "header_length": (100, ">I"), "compression_type": (104, ">B"),
}
V3_FIELDS = {"incompatible_features", "compatible_features", "autoclear_features",
             "refcount_order", "header_length", "compression_type"}
EXT_END, EXT_BACKING_FMT, EXT_FEATURES = 0, 0xE2792ACA, 0x6803F857
EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE = 0x23852875, 0x0537BE77, 0x44415441


# the tools run without a preloaded ASan (the suites of a sanitizer build preload it for
# Python; qemu-img hangs with it)
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def run(*args, cwd=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                       timeout=120, env=TOOL_ENV)
    if r.returncode:
        raise RuntimeError(f"{args}: exit {r.returncode}: {r.stdout}{r.stderr}")
    return r


def qemu_img(*args, cwd=None):
    return run(QEMU_IMG, *args, cwd=cwd)


def qemu_io(path, *cmds, fmt="qcow2", cwd=None):
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return run(*args, path, cwd=cwd)


def align_up(n, a=CS):
    return (n + a - 1) // a * a


class Image:
    """A qcow2 file's bytes, edited in memory and saved back."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = bytearray(f.read())
        self.version = self.get("version")
        self.cluster_size = 1 << self.get("cluster_bits")

    def save(self, size=None):
        """Write the bytes back; size extends the file with a hole up to it."""
        with open(self.path, "wb") as f:
            f.write(self.data)
            if size is not None and size > len(self.data):
                f.truncate(size)

    def _fit(self, end):
        if end > len(self.data):
            self.data += bytes(end - len(self.data))

    def pack(self, off, fmt, value):
        self._fit(off + struct.calcsize(fmt))
        struct.pack_into(fmt, self.data, off, value)

    def unpack(self, off, fmt):
        if off + struct.calcsize(fmt) > len(self.data):
            return 0
        return struct.unpack_from(fmt, self.data, off)[0]

    def get(self, name):
        return self.unpack(*HEADER[name])

    def set(self, name, value):
        off, fmt = HEADER[name]
        self.pack(off, fmt, value)

    def write(self, off, raw):
        self._fit(off + len(raw))
        self.data[off:off + len(raw)] = raw

    @property
    def eof(self):
        return len(self.data)

    def past_eof(self):
        return align_up(self.eof, self.cluster_size) + 16 * self.cluster_size

    # tables
    def l1_slot(self, index=0):
        return self.get("l1_table_offset") + 8 * index

    def l2_table(self):
        return self.unpack(self.l1_slot(0), ">Q") & OFFSET_MASK

    def l2_slot(self, guest_offset=0):
        entry_size = 16 if self.version >= 3 and self.get("incompatible_features") & 16 else 8
        return self.l2_table() + entry_size * (guest_offset // self.cluster_size)

    def refcount_block(self):
        return self.unpack(self.get("refcount_table_offset"), ">Q") & ~0x1FF

    def header_length(self):
        return self.get("header_length") if self.version >= 3 else 72

    def extensions(self):
        """[(type, payload)] as stored (up to the end marker)."""
        out, off = [], self.header_length()
        while off + 8 <= self.cluster_size:
            kind, length = struct.unpack_from(">II", self.data, off)
            if kind == EXT_END:
                break
            out.append((kind, bytes(self.data[off + 8:off + 8 + length])))
            off += 8 + align_up(length, 8)
        return out

    def backing_name(self):
        off, size = self.get("backing_file_offset"), self.get("backing_file_size")
        return bytes(self.data[off:off + size]) if off else b""

    def set_extensions(self, exts, backing=None, end_marker=True):
        """Rewrite the header extension area; backing (bytes) goes right after it."""
        off = self.header_length()
        area = bytearray()
        for kind, payload, *length in exts:
            length = length[0] if length else len(payload)
            area += struct.pack(">II", kind, length) + payload + bytes(-len(payload) % 8)
        if end_marker:
            area += bytes(8)
        limit = self.cluster_size - off
        self.write(off, bytes(area[:limit]) + bytes(max(0, limit - len(area))))
        if backing is not None:
            where = off + len(area)
            self.write(where, backing)
            self.set("backing_file_offset", where if backing else 0)
            self.set("backing_file_size", len(backing))


# ------------------------------------------------------------------ bases

DATA_CMDS = ["write -P 0x11 0 64k", "write -P 0x22 1M 64k", "write -z 2M 64k",
             "write -P 0x33 3146240 1k"]


def build_bases(root):
    """Create the valid base images; returns {name: directory}."""
    bases = {}

    def base(name, options, cmds=DATA_CMDS, backing=None, prep=None):
        d = os.path.join(root, name)
        os.makedirs(d)
        if prep:
            prep(d)
        args = ["create", "-q", "-f", "qcow2", "-o", options]
        if backing:
            args += ["-b", backing[0], "-F", backing[1]]
        qemu_img(*args, "disk.qcow2", "4M", cwd=d)
        if cmds:
            qemu_io("disk.qcow2", *cmds, cwd=d)
        bases[name] = d
        return d

    base("v3", "cluster_size=4k")
    base("v2", "cluster_size=4k,compat=0.10")
    base("v3-lazy", "cluster_size=4k,lazy_refcounts=on")
    base("v3-ext", "cluster_size=16k,extended_l2=on",
         DATA_CMDS + ["write -P 0x44 1200k 2k", "write -z 1300k 4k"])
    base("v3-comp", "cluster_size=4k",
         ["write -c -P 0x55 0 4k", "write -c -P 0x66 4k 4k", "write -P 0x77 1M 64k"])

    def qcow2_base(d):
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "base.qcow2", "4M",
                 cwd=d)
        qemu_io("base.qcow2", "write -P 0xb0 0 128k", "write -P 0xb1 3M 64k", cwd=d)

    def raw_base(d):
        with open(os.path.join(d, "base.raw"), "wb") as f:
            f.write(b"\xb2" * (128 << 10))
            f.truncate(4 << 20)

    base("v3-backing", "cluster_size=4k", backing=("base.qcow2", "qcow2"), prep=qcow2_base)
    base("v2-backing", "cluster_size=4k,compat=0.10", backing=("base.raw", "raw"),
         prep=raw_base)
    d = base("v3-snap", "cluster_size=4k")
    qemu_img("snapshot", "-c", "snap1", "disk.qcow2", cwd=d)
    qemu_io("disk.qcow2", "write -P 0x99 0 32k", "write -P 0x98 2M 64k", cwd=d)
    return bases


# --------------------------------------------------------------- variants

VARIANTS = []


def variant(name, base, what, outside=False):
    def register(fn):
        VARIANTS.append(dict(name=name, base=base, what=what, fn=fn, outside=outside))
        return fn
    return register


def add(name, base, what, fn, outside=False):
    VARIANTS.append(dict(name=name, base=base, what=what, fn=fn, outside=outside))


def set_field(name, value):
    def fn(img, d):
        img.set(name, value(img) if callable(value) else value)
    return fn


def past_eof(img):
    return img.past_eof()


# header fields: 0, all-ones, just past each limit, misaligned, past EOF
def rel(label, fn):
    """A value computed from the image, with a name for the variant."""
    fn.label = label
    return fn


past_eof.label = "past-eof"

FIELD_VALUES = {
    "magic": [0, ONES32],
    "version": [0, 1, 2, 3, 4, ONES32],
    "backing_file_offset": [0, ONES64, 8,
                            rel("misaligned", lambda i: i.get("backing_file_offset") + 1),
                            rel("cluster-end", lambda i: i.cluster_size - 4), past_eof],
    "backing_file_size": [0, ONES32, 1023, 1024, 1025,
                          rel("cluster", lambda i: i.cluster_size)],
    "cluster_bits": [0, 8, 9, 22, 31, 63, ONES32],
    "size": [0, ONES64, 1 << 63, (1 << 62) + 512, rel("plus1", lambda i: i.get("size") + 1),
             rel("x1024", lambda i: i.get("size") * 1024), 1 << 55],
    "crypt_method": [1, 2, 3, ONES32],
    "l1_size": [0, 1 << 20, ONES32, (32 << 20) // 8 + 1,
                rel("plus1", lambda i: i.get("l1_size") + 1)],
    "l1_table_offset": [0, ONES64, rel("plus8", lambda i: i.get("l1_table_offset") + 8),
                        rel("plus512", lambda i: i.get("l1_table_offset") + 512), past_eof,
                        rel("reftable", lambda i: i.get("refcount_table_offset"))],
    "refcount_table_offset": [0, ONES64,
                              rel("plus8", lambda i: i.get("refcount_table_offset") + 8),
                              past_eof, rel("l1", lambda i: i.get("l1_table_offset"))],
    "refcount_table_clusters": [0, ONES32,
                                rel("over-8MiB", lambda i: (8 << 20) // i.cluster_size + 1),
                                1000],
    "nb_snapshots": [1, 65536, 65537, ONES32],
    "snapshots_offset": [0, ONES64, rel("plus8", lambda i: i.get("snapshots_offset") + 8),
                         past_eof, 512],
    "incompatible_features": [1, 2, 4, 8, 16, 32, 1 << 63, ONES64],
    "compatible_features": [1, ONES64],
    "autoclear_features": [1, 2, ONES64],
    "refcount_order": [0, 3, 6, 7, ONES32],
    "header_length": [0, 72, 100, 108, 111, 113,
                      rel("cluster-plus8", lambda i: i.cluster_size + 8), ONES32],
    "compression_type": [1, 2, 0xFF],
}
FIELD_BASES = {
    "backing_file_offset": ["v3-backing", "v2-backing"],
    "backing_file_size": ["v3-backing", "v2-backing"],
    "nb_snapshots": ["v3", "v3-snap"],
    "snapshots_offset": ["v3-snap"],
    "compatible_features": ["v3", "v3-lazy"],
    "incompatible_features": ["v3", "v3-lazy", "v3-ext"],
}


def value_id(value):
    if callable(value):
        return value.label
    return {0: "0", ONES32: "ones", ONES64: "ones"}.get(value, f"{value:#x}")


def register_header_fields():
    for field, values in FIELD_VALUES.items():
        for base in FIELD_BASES.get(field, ["v3", "v2"]):
            if base.startswith("v2") and field in V3_FIELDS:
                continue
            for value in values:
                vid = value_id(value)
                add(f"hdr-{field}-{vid}-{base}", base, f"header {field} = {vid}",
                    set_field(field, value))


register_header_fields()


# cross-field: just past the limits, with the other fields consistent
@variant("lim-l1-over-32MiB", "v3", "size needing an L1 table of 32 MiB + 8 (past QEMU's limit)")
def _(img, d):
    entries = (32 << 20) // 8 + 1
    img.set("size", entries * (img.cluster_size * img.cluster_size // 8))
    img.set("l1_size", entries)


@variant("lim-l1-16MiB-past-eof", "v3", "a 4 TiB disk whose 16 MiB L1 table runs past EOF")
def _(img, d):
    img.set("size", (2 << 20) * (img.cluster_size * img.cluster_size // 8))
    img.set("l1_size", 2 << 20)


@variant("lim-reftable-over-8MiB", "v3", "refcount table of 8 MiB + 1 cluster")
def _(img, d):
    img.set("refcount_table_clusters", (8 << 20) // img.cluster_size + 1)


@variant("lim-cluster-bits-8-consistent", "v3", "cluster_bits 8 (256-byte clusters)")
def _(img, d):
    img.set("cluster_bits", 8)
    img.set("l1_size", 4 << 20 >> 8 >> 5)


@variant("lim-cluster-bits-22", "v3", "cluster_bits 22 (4 MiB clusters)")
def _(img, d):
    img.set("cluster_bits", 22)
    img.set("l1_size", 1)


@variant("lim-snapshots-65537", "v3-snap", "65537 snapshots at the real table")
def _(img, d):
    img.set("nb_snapshots", 65537)


@variant("lim-header-length-unaligned", "v3", "header_length 108 (not a multiple of 8)")
def _(img, d):
    img.set("header_length", 108)


@variant("lim-header-length-past-cluster", "v3", "header_length = cluster size + 8")
def _(img, d):
    img.set("header_length", img.cluster_size + 8)


@variant("lim-compression-zstd-bit-no-type", "v3", "compression bit set, type 0")
def _(img, d):
    img.set("incompatible_features", img.get("incompatible_features") | 8)


@variant("lim-compression-type-unknown-with-bit", "v3", "compression bit, type 7")
def _(img, d):
    img.set("incompatible_features", img.get("incompatible_features") | 8)
    img.set("compression_type", 7)


# ------------------------------------------------------------ extensions

def ext_variant(name, base, what, make, outside=False, bits=None):
    def fn(img, d):
        exts, backing = make(img)
        img.set_extensions(exts, backing=backing)
        if bits:
            for field, value in bits.items():
                img.set(field, img.get(field) | value)
    add(f"ext-{name}-{base}", base, what, fn, outside)


for base in ("v3", "v3-backing"):
    ext_variant("len-past-cluster", base, "an extension longer than the cluster",
                lambda i: ([(0x12345678, b"x" * 16, i.cluster_size)], i.backing_name() or None))
    ext_variant("len-ones", base, "an extension of length 0xffffffff",
                lambda i: ([(0x12345678, b"x" * 16, ONES32)], i.backing_name() or None))
    ext_variant("first-len-ones", base, "the first real extension with length 0xffffffff",
                lambda i: ([(*(i.extensions() or [(EXT_FEATURES, bytes(48))])[0], ONES32)],
                           i.backing_name() or None))
    ext_variant("no-end-marker", base, "extensions up to the cluster end without an end marker",
                lambda i: ([(0x1, b"", 0)] * (i.cluster_size // 8), None))
    ext_variant("feature-table-odd", base, "feature table of 47 bytes and of 65535 bytes",
                lambda i: ([(EXT_FEATURES, b"\1" * 47), (EXT_FEATURES, b"\2" * 100, 65535)],
                           i.backing_name() or None))
    ext_variant("bitmaps-garbage", base, "bitmaps extension: 2^32-1 bitmaps past EOF",
                lambda i: ([(EXT_BITMAPS, struct.pack(">IIQQ", ONES32, 0, 1 << 40, 1 << 50))],
                           i.backing_name() or None), bits={"autoclear_features": 1})
    ext_variant("bitmaps-short", base, "bitmaps extension of 3 bytes",
                lambda i: ([(EXT_BITMAPS, b"\xff\xff\xff")], i.backing_name() or None),
                bits={"autoclear_features": 1})
    ext_variant("crypto-garbage", base, "LUKS crypto header extension past EOF",
                lambda i: ([(EXT_CRYPTO, struct.pack(">QQ", 1 << 40, 1 << 40))],
                           i.backing_name() or None), bits={"crypt_method": 2})
    ext_variant("data-file-passwd", base, "external data file /etc/passwd",
                lambda i: ([(EXT_DATA_FILE, PASSWD.encode())], i.backing_name() or None),
                outside=True, bits={"incompatible_features": 4})
    ext_variant("data-file-passwd-raw", base, "external raw data file /etc/passwd",
                lambda i: ([(EXT_DATA_FILE, PASSWD.encode())], i.backing_name() or None),
                outside=True, bits={"incompatible_features": 4, "autoclear_features": 2})
    ext_variant("data-file-dotdot", base, "external data file ../outside.raw",
                lambda i: ([(EXT_DATA_FILE, b"../outside.raw")], i.backing_name() or None),
                outside=True, bits={"incompatible_features": 4})
    ext_variant("data-file-no-bit", base, "data file extension without the feature bit",
                lambda i: ([(EXT_DATA_FILE, b"data.raw")], i.backing_name() or None))
    ext_variant("data-file-empty", base, "data file bit and an empty name",
                lambda i: ([(EXT_DATA_FILE, b"")], i.backing_name() or None),
                bits={"incompatible_features": 4})

for fmt_name in (b"", b"vmdk", b"A" * 255, b"raw", b"qcow2\0garbage", b"../../qcow2"):
    tag = {b"": "empty", b"A" * 255: "long", b"qcow2\0garbage": "nul",
           b"../../qcow2": "dotdot"}.get(fmt_name, fmt_name.decode())
    for base in ("v3-backing", "v2-backing"):
        ext_variant(f"backing-fmt-{tag}", base, f"backing format extension {fmt_name!r}",
                    lambda i, f=fmt_name: ([(EXT_BACKING_FMT, f)], i.backing_name()))


# ----------------------------------------------------------- L1 / L2 / refcounts

def entry_variant(kind, name, base, what, value):
    def fn(img, d):
        slot = {"l1": img.l1_slot, "l2": img.l2_slot}[kind]()
        img.pack(slot, ">Q", value(img))
    add(f"{kind}-{name}-{base}", base, what, fn)


def metadata_targets(kind):
    return {
        "header": lambda i: COPIED | 0,
        "l1": lambda i: COPIED | i.get("l1_table_offset"),
        "reftable": lambda i: COPIED | i.get("refcount_table_offset"),
        "refblock": lambda i: COPIED | i.refcount_block(),
        "past-eof": lambda i: COPIED | i.past_eof(),
        "far-past-eof": lambda i: COPIED | (1 << 55) - i.cluster_size,
        "misaligned": lambda i: COPIED | ((i.unpack(
            {"l1": i.l1_slot, "l2": i.l2_slot}[kind](), ">Q") & OFFSET_MASK) + 512),
        "ones": lambda i: ONES64,
        "reserved-bits": lambda i: i.unpack({"l1": i.l1_slot, "l2": i.l2_slot}[kind](),
                                            ">Q") | 0x1FE,
    }


for base in ("v3", "v2", "v3-snap"):
    for tname, value in metadata_targets("l1").items():
        entry_variant("l1", tname, base, f"L1 entry 0 points at {tname}", value)
    for tname, value in metadata_targets("l2").items():
        entry_variant("l2", tname, base, f"L2 entry 0 points at {tname}", value)
    entry_variant("l2", "self", base, "L2 entry 0 points at its own L2 table",
                  lambda i: COPIED | i.l2_table())

for base in ("v3", "v2"):
    entry_variant("l2", "zero-garbage-offset", base, "zero flag with a misaligned offset",
                  lambda i: 1 | 0x1234600 | COPIED)
    entry_variant("l2", "compressed-garbage", base, "compressed entry of random bits",
                  lambda i: COMPRESSED | 0x2a5f0e1d3c4b7a69 & ~(COPIED | COMPRESSED))
    entry_variant("l2", "compressed-past-eof", base, "compressed data past EOF",
                  lambda i: COMPRESSED | (i.past_eof() >> 0) & ((1 << 46) - 1))
    entry_variant("l2", "compressed-header", base, "compressed data = the header",
                  lambda i: COMPRESSED | (5 << 46))
    entry_variant("l2", "compressed-max-sectors", base, "compressed, 2^14-1 extra sectors",
                  lambda i: COMPRESSED | ((1 << 62) - 1) & ~((1 << 46) - 1) | 0x10000)
    entry_variant("l2", "compressed-copied", base, "compressed with COPIED set too",
                  lambda i: COPIED | COMPRESSED | 0x10000)


@variant("comp-garbage-stream", "v3-comp", "compressed cluster bytes replaced by garbage")
def _(img, d):
    entry = img.unpack(img.l2_slot(0), ">Q")
    off = entry & ((1 << 46) - 1)
    img.write(off, bytes((x * 131 + 7) & 0xFF for x in range(512)))


@variant("comp-truncated", "v3-comp", "the file ends inside a compressed cluster")
def _(img, d):
    entry = img.unpack(img.l2_slot(0), ">Q")
    off = entry & ((1 << 46) - 1)
    del img.data[off + 10:]


@variant("comp-overlong-size", "v3-comp", "a compressed entry claiming the longest size")
def _(img, d):
    entry = img.unpack(img.l2_slot(0), ">Q")
    img.pack(img.l2_slot(0), ">Q", entry | (((1 << 16) - 1) << 46) & ~COPIED)


@variant("comp-zstd-garbage", "v3-comp", "zlib data read as zstd")
def _(img, d):
    img.set("incompatible_features", img.get("incompatible_features") | 8)
    img.set("compression_type", 1)


def ext_l2_variant(name, what, bitmap):
    def fn(img, d):
        slot = img.l2_slot(0)
        img.pack(slot + 8, ">Q", bitmap(img, slot))
    add(f"xl2-{name}", "v3-ext", what, fn)


ext_l2_variant("alloc-and-zero", "subcluster both allocated and zero",
               lambda i, s: i.unpack(s + 8, ">Q") | (i.unpack(s + 8, ">Q") << 32))
ext_l2_variant("ones", "bitmap all ones", lambda i, s: ONES64)
ext_l2_variant("alloc-no-offset", "allocation bits on an unallocated cluster",
               lambda i, s: 0xFFFF)


@variant("xl2-alloc-no-offset-real", "v3-ext", "allocation bits with host offset 0")
def _(img, d):
    slot = img.l2_slot(5 * img.cluster_size)
    img.pack(slot, ">Q", 0)
    img.pack(slot + 8, ">Q", 0xFFFFFFFF)


@variant("xl2-compressed-bitmap", "v3-ext", "a compressed entry with a nonzero bitmap")
def _(img, d):
    slot = img.l2_slot(0)
    img.pack(slot, ">Q", COMPRESSED | 0x10000)
    img.pack(slot + 8, ">Q", 0x5)


def reftable_variant(name, base, what, target):
    def fn(img, d):
        img.pack(img.get("refcount_table_offset"), ">Q", target(img))
    add(f"reftable-{name}-{base}", base, what, fn)


for base in ("v3", "v2"):
    reftable_variant("zero", base, "refcount table entry 0 = 0 (no block)", lambda i: 0)
    reftable_variant("past-eof", base, "refcount block past EOF", lambda i: i.past_eof())
    reftable_variant("misaligned", base, "refcount block misaligned",
                     lambda i: i.refcount_block() + 8)
    reftable_variant("ones", base, "refcount table entry 0 = all ones", lambda i: ONES64)
    reftable_variant("itself", base, "refcount block = the refcount table",
                     lambda i: i.get("refcount_table_offset"))

    @variant(f"refblock-ones-{base}", base, "refcount block full of 0xff")
    def _(img, d):
        img.write(img.refcount_block(), b"\xff" * img.cluster_size)

    @variant(f"reftable-points-at-l1-{base}", base, "refcount table entry 0 = the L1 table")
    def _(img, d):
        img.pack(img.get("refcount_table_offset"), ">Q", img.get("l1_table_offset"))


# ------------------------------------------------------------ amplification
#
# Tables whose entries all name one structure: small files that claim far
# more work than they hold. Opening and checking must cost time bounded by
# the file, not by the claim (test_hangs.py times them at several cluster
# sizes; the corpus gets the 4 KiB ones).

def repeat_zero_refblock(img, table_bytes):
    """Move the refcount table to the end of the file, table_bytes long: its
    first entry the image's real refcount block, every other one the same
    all-zero cluster (appended too)."""
    cs = img.cluster_size
    zero = align_up(img.eof, cs)
    table = zero + cs
    entries = [img.refcount_block()] + [zero] * (table_bytes // 8 - 1)
    img.write(zero, bytes(cs))
    img.write(table, struct.pack(f">{len(entries)}Q", *entries))
    img.set("refcount_table_offset", table)
    img.set("refcount_table_clusters", table_bytes // cs)


def repeat_l2_table(img, entries):
    """Move the L1 table to the end of the file, entries long, every entry
    naming the image's first L2 table."""
    table = align_up(img.eof, img.cluster_size)
    img.write(table, struct.pack(">Q", img.unpack(img.l1_slot(0), ">Q")) * entries)
    img.set("l1_table_offset", table)
    img.set("l1_size", entries)


SNAPSHOT_ENTRY = ">QIHHIIQII"  # L1 offset and size, id and name sizes, date, vm clock, state size, extra size


def snapshots_sharing_l1(img, count):
    """A snapshot table of count snapshots ("1", "2", ... named "s1", ...), each
    of them the active L1 table (a version 3 entry: 16 bytes of extra data
    giving the disk size); the table goes at the end of the file."""
    table = bytearray()
    for n in range(1, count + 1):
        name_id, name = b"%d" % n, b"s%d" % n
        extra = struct.pack(">QQ", 0, img.get("size"))
        entry = struct.pack(SNAPSHOT_ENTRY, img.get("l1_table_offset"), img.get("l1_size"),
                            len(name_id), len(name), 0, 0, 0, 0, len(extra)) + extra + name_id + name
        table += entry + bytes(-len(entry) % 8)
    where = align_up(img.eof, img.cluster_size)
    img.write(where, bytes(table))
    img.set("snapshots_offset", where)
    img.set("nb_snapshots", count)


BITMAP_ENTRY = ">QIIBBHI"  # table offset, table size, flags, type, granularity bits, name size, extra


BITMAP_IN_USE = 1


def bitmap_directory(img, count, table_offset, table_size, granularity_bits=16, flags=0):
    """A bitmaps extension and directory of count entries (autoclear bit set),
    each a dirty tracking bitmap "b<n>" whose table is table_size entries at
    table_offset; the directory goes at the end of the file."""
    directory = bytearray()
    for n in range(count):
        name = b"b%d" % n
        entry = struct.pack(BITMAP_ENTRY, table_offset, table_size, flags, 1, granularity_bits,
                            len(name), 0) + name
        directory += entry + bytes(-len(entry) % 8)
    where = align_up(img.eof, img.cluster_size)
    img.write(where, bytes(directory))
    img.set_extensions([e for e in img.extensions() if e[0] != EXT_BITMAPS] +
                       [(EXT_BITMAPS, struct.pack(">IIQQ", count, 0, len(directory), where))],
                       backing=img.backing_name() or None)
    img.set("autoclear_features", img.get("autoclear_features") | 1)


@variant("amp-reftable-one-zero-block-v3", "v3",
         "a 512 KiB refcount table whose entries all name one zero cluster")
def _(img, d):
    repeat_zero_refblock(img, 512 << 10)


@variant("amp-bitmaps-huge-tables-v3", "v3",
         "2000 bitmaps, each naming the same 16 MiB table (in a sparse 16 MiB file)")
def _(img, d):
    bitmap_directory(img, 2000, img.cluster_size, (16 << 20) // 8)
    img.save(size=img.cluster_size + (16 << 20))
    return "reload"


# --------------------------------------------------------------- snapshots

def snap_variant(name, what, mutate):
    def fn(img, d):
        mutate(img, img.get("snapshots_offset"))
    add(f"snap-{name}", "v3-snap", what, fn)


snap_variant("l1-past-eof", "snapshot L1 table past EOF",
             lambda i, s: i.pack(s, ">Q", i.past_eof()))
snap_variant("l1-misaligned", "snapshot L1 table misaligned",
             lambda i, s: i.pack(s, ">Q", i.unpack(s, ">Q") + 8))
snap_variant("l1-size-ones", "snapshot L1 size 2^32-1", lambda i, s: i.pack(s + 8, ">I", ONES32))
snap_variant("l1-size-huge", "snapshot L1 size 32 MiB/8 + 1",
             lambda i, s: i.pack(s + 8, ">I", (32 << 20) // 8 + 1))
snap_variant("id-size-ones", "id_str_size 65535", lambda i, s: i.pack(s + 12, ">H", 0xFFFF))
snap_variant("name-size-ones", "name_size 65535", lambda i, s: i.pack(s + 14, ">H", 0xFFFF))
snap_variant("extra-ones", "extra_data_size 2^32-1", lambda i, s: i.pack(s + 36, ">I", ONES32))
snap_variant("extra-odd", "extra_data_size 7", lambda i, s: i.pack(s + 36, ">I", 7))
snap_variant("extra-1MiB", "extra_data_size 1 MiB", lambda i, s: i.pack(s + 36, ">I", 1 << 20))
snap_variant("disk-size-huge", "snapshot disk size 2^63",
             lambda i, s: i.pack(s + 48, ">Q", 1 << 63))
snap_variant("vmstate-huge", "vm state size 2^64-1",
             lambda i, s: (i.pack(s + 32, ">I", ONES32), i.pack(s + 40, ">Q", ONES64)))
snap_variant("two-entries-one-real", "nb_snapshots 2, one real entry then garbage",
             lambda i, s: i.set("nb_snapshots", 2))
snap_variant("table-past-eof", "snapshot table starts one byte before EOF",
             lambda i, s: i.set("snapshots_offset", (i.eof - 1) // 8 * 8))
snap_variant("zero-names", "id and name sizes 0", lambda i, s: (i.pack(s + 12, ">H", 0),
                                                                i.pack(s + 14, ">H", 0)))
snap_variant("l1-at-header", "snapshot L1 table = the header",
             lambda i, s: i.pack(s, ">Q", 0))


@variant("snap-table-size-over-64MiB", "v3-snap", "65536 snapshots with 1 KiB of extra data")
def _(img, d):
    s = img.get("snapshots_offset")
    img.set("nb_snapshots", 65536)
    img.pack(s + 36, ">I", 1024)


# ---------------------------------------------------------------- backing

def overlay(d, name, backing, fmt="qcow2", size="4M"):
    """An overlay made with qemu-img create -u (the backing file need not exist).

    The name is patched in afterwards, so that it may name the overlay itself."""
    placeholder = "\x01" * len(backing.encode())
    args = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-u", "-b", placeholder]
    if fmt:
        args += ["-F", fmt]
    else:
        args += ["-F", "raw"]
    qemu_img(*args, name, size, cwd=d)
    img = Image(os.path.join(d, name))
    where = img.get("backing_file_offset")
    img.write(where, backing.encode())
    if not fmt:  # no backing format extension at all
        img.set_extensions([e for e in img.extensions() if e[0] != EXT_BACKING_FMT],
                           backing=backing.encode())
    img.save()


def backing_variant(name, what, make, outside=False):
    def fn(img, d):
        make(d)
        return "reload"
    add(f"back-{name}", "v3", what, fn, outside)


backing_variant("loop-ab", "a -> b -> a", lambda d: (
    overlay(d, "disk.qcow2", "b.qcow2"), overlay(d, "b.qcow2", "disk.qcow2")))
backing_variant("loop-self", "a -> a", lambda d: overlay(d, "disk.qcow2", "disk.qcow2"))
backing_variant("loop-self-dot", "a -> ./a", lambda d: overlay(d, "disk.qcow2", "./disk.qcow2"))
backing_variant("loop-abc-probed", "a -> b -> c -> a, formats probed", lambda d: (
    overlay(d, "disk.qcow2", "b.qcow2", None), overlay(d, "b.qcow2", "c.qcow2", None),
    overlay(d, "c.qcow2", "disk.qcow2", None)))
backing_variant("passwd-raw", "backing /etc/passwd, format raw",
                lambda d: overlay(d, "disk.qcow2", PASSWD, "raw", size="64k"), outside=True)
backing_variant("passwd-probed", "backing /etc/passwd, no format recorded",
                lambda d: overlay(d, "disk.qcow2", PASSWD, None, size="64k"), outside=True)
backing_variant("dotdot", "backing ../outside.raw",
                lambda d: overlay(d, "disk.qcow2", "../outside.raw", "raw", size="64k"),
                outside=True)
backing_variant("symlink-out", "backing link.raw, a symlink to /etc/passwd",
                lambda d: (os.symlink(PASSWD, os.path.join(d, "link.raw")),
                           overlay(d, "disk.qcow2", "link.raw", "raw", size="64k")),
                outside=True)
backing_variant("fifo", "backing is a FIFO (opening it blocks)",
                lambda d: (os.mkfifo(os.path.join(d, "fifo.raw")),
                           overlay(d, "disk.qcow2", "fifo.raw", "raw")))
backing_variant("directory", "backing is a directory",
                lambda d: (os.mkdir(os.path.join(d, "sub")),
                           overlay(d, "disk.qcow2", "sub", "raw")))
backing_variant("dev-zero", "backing /dev/zero", lambda d: overlay(d, "disk.qcow2", "/dev/zero",
                                                                  "raw"), outside=True)
backing_variant("json-protocol", "a json: pseudo-protocol name", lambda d: overlay(
    d, "disk.qcow2", 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}',
    "raw"), outside=True)
backing_variant("missing", "backing file missing", lambda d: overlay(d, "disk.qcow2",
                                                                     "nothere.qcow2"))
backing_variant("name-1023", "a 1023-byte backing name",
                lambda d: overlay(d, "disk.qcow2", "a" * 1019 + ".raw", "raw"))
backing_variant("name-deep-1023", "a 1023-byte backing name of many directories",
                lambda d: overlay(d, "disk.qcow2", "d/" * 509 + "x.raw"[:1023 - 1018], "raw"))


@variant("back-name-1024", "v3-backing", "a 1024-byte backing name (past QEMU's limit)")
def _(img, d):
    img.set_extensions(img.extensions(), backing=b"b" * 1024)


@variant("back-name-nul", "v3-backing", "a backing name with a NUL in the middle")
def _(img, d):
    img.set_extensions(img.extensions(), backing=b"base.qcow2\0/etc/passwd")


@variant("back-name-past-cluster", "v3-backing", "backing name running past the first cluster")
def _(img, d):
    img.set("backing_file_offset", img.cluster_size - 5)


@variant("back-fmt-raw-on-qcow2", "v3-backing", "qcow2 backing declared raw")
def _(img, d):
    img.set_extensions([(EXT_BACKING_FMT, b"raw")] + [e for e in img.extensions()
                                                      if e[0] != EXT_BACKING_FMT],
                       backing=img.backing_name())


@variant("back-deep-chain-300", "v3", "a chain of 300 qcow2 overlays")
def _(img, d):
    overlay(d, "l0000.qcow2", "base.raw", "raw", size="64k")
    with open(os.path.join(d, "base.raw"), "wb") as f:
        f.write(b"\x5e" * 65536)
    with open(os.path.join(d, "l0000.qcow2"), "rb") as f:
        template = f.read()
    where = template.index(b"base.raw")
    for n in range(1, 300):
        name = f"l{n - 1:04d}.qcow2".encode()
        data = bytearray(template)
        data[where:where + len(b"base.raw")] = b"\0" * 8
        data[where:where + len(name)] = name
        struct.pack_into(">I", data, 16, len(name))
        data[where + len(name):where + 16] = b"\0" * (16 - len(name))
        with open(os.path.join(d, f"l{n:04d}.qcow2"), "wb") as f:
            f.write(data)
    os.replace(os.path.join(d, "l0299.qcow2"), os.path.join(d, "disk.qcow2"))
    return "reload"


# ------------------------------------------------------------ whole file

@variant("file-empty", "v3", "an empty file named .qcow2")
def _(img, d):
    del img.data[:]


@variant("file-magic-only", "v3", "the 4 magic bytes")
def _(img, d):
    del img.data[4:]


@variant("file-half-header", "v3", "the first 50 bytes")
def _(img, d):
    del img.data[50:]


@variant("file-header-cluster-only", "v3", "only the header cluster")
def _(img, d):
    del img.data[img.cluster_size:]


@variant("file-cut-in-l2", "v3", "the file ends inside the L2 table")
def _(img, d):
    del img.data[img.l2_table() + 100:]


@variant("file-cut-in-data", "v3", "the file ends inside a data cluster")
def _(img, d):
    entry = img.unpack(img.l2_slot(0), ">Q") & OFFSET_MASK
    del img.data[entry + 1000:]


@variant("file-v3-header-v2-length", "v2", "a v2 file claiming version 3")
def _(img, d):
    img.set("version", 3)


# ------------------------------------------------ VMDK and qcow (version 1)
#
# The same idea for the other sparse formats, shared by their own suites
# (tests/vmdk/test_vmdk_hostile.py, tests/qcow1/test_qcow1_hostile.py, which
# use them through libvdisk's Python package) and by test_hostile.py (which
# runs every one through hostile_probe, so that sanitizers see them).

ONES_OF = {"<I": ONES32, "<Q": ONES64, "<H": 0xFFFF, ">I": ONES32, ">Q": ONES64,
           ">H": 0xFFFF, ">B": 0xFF}
MiB = 1 << 20


def patched(data, patches):
    """A copy of data with (offset, struct format, value) patches."""
    buf = bytearray(data)
    for off, fmt, value in patches:
        struct.pack_into(fmt, buf, off, value)
    return bytes(buf)


def pattern_cmds(pattern):
    """qemu-io writes of (offset, length, byte) triples."""
    return [f"write -P {b} {off} {n}" for off, n, b in pattern]


# the hosted sparse extent header ("KDMV"), little-endian
VMDK_HEADER = {"version": (4, "<I"), "flags": (8, "<I"), "capacity": (12, "<Q"),
               "granularity": (20, "<Q"), "desc_offset": (28, "<Q"), "desc_size": (36, "<Q"),
               "num_gtes": (44, "<I"), "rgd_offset": (48, "<Q"), "gd_offset": (56, "<Q"),
               "grain_offset": (64, "<Q"), "compress": (77, "<H")}
VMDK_SPARSE_BASES = ["monolithicSparse", "streamOptimized"]


def vmdk_bases(d):
    """{subformat: bytes} of two small qemu-made images with data in them."""
    out = {}
    for sub in VMDK_SPARSE_BASES:
        p = os.path.join(d, f"{sub}.vmdk")
        if sub == "streamOptimized":
            raw = os.path.join(d, "src.raw")
            with open(raw, "wb") as f:
                f.truncate(4 * MiB)
                f.seek(MiB)
                f.write(os.urandom(100000) + b"\x11" * 200000)
            qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={sub}", raw, p)
        else:
            qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={sub}", p, 4 * MiB)
            qemu_io(p, *pattern_cmds([(0, 70000, 1), (2 * MiB, 65536, 2)]), fmt="vmdk")
        with open(p, "rb") as f:
            out[sub] = f.read()
    return out


def vmdk_header_variants():
    """(label, offset, format, value): every header field at 0, 1, 513, 2^40, all-ones."""
    for field, (off, fmt) in VMDK_HEADER.items():
        for value in (0, 1, 513, 1 << 40, ONES_OF[fmt]):
            if value <= ONES_OF[fmt]:
                yield f"{field}={value:#x}", off, fmt, value


def vmdk_tables(data):
    """(grain directory, first grain table) byte offsets of a KDMV image."""
    gd = struct.unpack_from("<Q", data, 56)[0] * 512
    return gd, struct.unpack_from("<I", data, gd)[0] * 512


VMDK_TABLE_EDITS = ["gd-past-eof", "gd-ones", "gd-at-header", "gt-past-eof", "gt-ones",
                    "gt-into-gd", "gte-one-no-flag", "rgd-differs"]


def vmdk_table_edit(data, what):
    """A monolithicSparse image's bytes with one grain directory or table entry broken."""
    gd, gt = vmdk_tables(data)
    rgd = struct.unpack_from("<Q", data, 48)[0] * 512
    edit = {"gd-past-eof": (gd, "<I", len(data) // 512 + 10),
            "gd-ones": (gd, "<I", ONES32),
            "gd-at-header": (gd, "<I", 0),
            "gt-past-eof": (gt, "<I", len(data) // 512 + 1000),
            "gt-ones": (gt + 4, "<I", ONES32),
            "gt-into-gd": (gt, "<I", gd // 512),
            "gte-one-no-flag": (gt, "<I", 1),
            "rgd-differs": (rgd, "<I", 7)}[what]
    return patched(data, [edit])


VMDK_GRAIN_EDITS = ["size-zero", "size-huge", "garbage", "truncated"]


def vmdk_grain_edit(data, what):
    """A streamOptimized image's bytes with its first compressed grain broken."""
    buf = bytearray(data)
    _, gt = vmdk_tables(buf)
    grain = next(e for e in struct.unpack_from("<512I", buf, gt) if e) * 512
    if what == "size-zero":
        struct.pack_into("<I", buf, grain + 8, 0)
    elif what == "size-huge":
        struct.pack_into("<I", buf, grain + 8, 0xFFFFFFF0)
    elif what == "garbage":
        buf[grain + 12:grain + 512] = bytes((i * 151 + 7) & 0xFF for i in range(500))
    else:
        del buf[grain + 100:]
    return bytes(buf)


VMDK_DESCRIPTOR = ('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                   'createType="{t}"\n{x}\n')
# (createType, extent lines) of descriptors naming d.img (8 KiB of 0x42) beside them
VMDK_DESCRIPTOR_CASES = [
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
    ("monolithicFlat", 'RW 8 FLAT "d.img" 0\nRW 8 ZERO'),
]


def vmdk_descriptor(create_type, extents):
    return VMDK_DESCRIPTOR.format(t=create_type, x=extents)


# seSparse (ESXi): qemu-img cannot make one, so it is built here byte by byte.
# Sector 0: the constant header; 1: the volatile header; 2: the grain
# directory (one sector, 64 entries); 8: the grain tables (64 sectors each);
# then the grains (8 sectors each).
SE_GD, SE_TABLES, SE_TABLE_SECTORS, SE_GRAIN = 2, 8, 64, 4096
SE_GTES = SE_TABLE_SECTORS * 512 // 8
SE_GRAINS = SE_TABLES + 2 * SE_TABLE_SECTORS
SE_CAPACITY = 40 * MiB  # three directory entries (16 MiB each), the last one partly used
SE_UNMAPPED, SE_ZERO = 1 << 60, 2 << 60
# the constant header's fields: (offset, value) of a sound image
SE_CONST = {"magic": (0, 0xCAFEBABE), "version": (8, 0x0000000200000001),
            "capacity": (16, SE_CAPACITY // 512), "grain_size": (24, 8),
            "grain_table_size": (32, SE_TABLE_SECTORS), "flags": (40, 0), "reserved1": (48, 0),
            "volatile_offset": (80, 1), "volatile_size": (88, 1), "gd_offset": (128, SE_GD),
            "gd_size": (136, 1), "gt_offset": (144, SE_TABLES),
            "gt_size": (152, 2 * SE_TABLE_SECTORS), "grains_offset": (192, SE_GRAINS),
            "grains_size": (200, 0)}


def se_allocated(n):
    """A grain table entry naming grain n: its low 12 bits in bits 48-59, the rest in 0-47."""
    return 3 << 60 | (n & 0xFFF) << 48 | n >> 12


def se_grain_bytes(n):
    return bytes((n * 37 + i * 7 + (i >> 9)) & 0xFF for i in range(SE_GRAIN))


def sesparse_layout(far=False):
    """{guest grain: table entry} of the sound image: data, runs, zero, unmapped
    and unallocated grains in two tables; far adds grain number 0x1005, whose
    entry splits the number (so that a swapped decoding reads past the end)."""
    t2 = 2 * SE_GTES  # the third directory entry; the second has no table
    entries = {0: se_allocated(0), 1: se_allocated(3), 2: SE_ZERO, 3: SE_UNMAPPED,
               5: se_allocated(1), 6: se_allocated(2), 4095: se_allocated(4),
               t2: se_allocated(5), t2 + 1: SE_ZERO, t2 + 7: se_allocated(6)}
    if far:
        entries[7] = se_allocated(0x1005)
    return entries


def se_number(entry):
    return (entry & 0xFFFFFFFFFFFF) << 12 | (entry >> 48 & 0xFFF)


def sesparse_model(far=False):
    """The raw bytes the sound image holds (sesparse_image(far))."""
    model = bytearray(SE_CAPACITY)
    for g, e in sesparse_layout(far).items():
        if e >> 60 == 3:
            model[g * SE_GRAIN:(g + 1) * SE_GRAIN] = se_grain_bytes(se_number(e))
    return bytes(model)


def sesparse_image(far=False, const=(), volatile=(), gd=(), gte=()):
    """The bytes of an seSparse extent; const: (field, value) header patches,
    volatile: (offset, value), gd: (index, entry) and gte: (guest grain,
    entry) overrides of the sound image."""
    entries = sesparse_layout(far)
    count = max(se_number(e) for e in entries.values() if e >> 60 == 3) + 1
    buf = bytearray((SE_GRAINS + count * 8) * 512)
    hdr = dict(SE_CONST)
    for field, value in const:
        hdr[field] = (hdr[field][0], value)
    for off, value in hdr.values():
        struct.pack_into("<Q", buf, off, value)
    struct.pack_into("<Q", buf, 512, 0xCAFECAFE)
    for off, value in volatile:
        struct.pack_into("<Q", buf, 512 + off, value)
    directory = {0: 1 << 60 | 0, 2: 1 << 60 | 1}
    directory.update(dict(gd))
    for i, e in directory.items():
        struct.pack_into("<Q", buf, SE_GD * 512 + 8 * i, e)
    for g, e in list(entries.items()) + list(gte):
        table = 0 if g < SE_GTES else 1
        struct.pack_into("<Q", buf, (SE_TABLES + table * SE_TABLE_SECTORS) * 512 +
                         8 * (g % SE_GTES), e)
    for e in entries.values():
        if e >> 60 == 3:
            at = (SE_GRAINS + se_number(e) * 8) * 512
            buf[at:at + SE_GRAIN] = se_grain_bytes(se_number(e))
    return bytes(buf)


def sesparse_descriptor(extent="se-sesparse.vmdk"):
    return (VMDK_DESCRIPTOR.format(t="seSparse", x=f'RW {SE_CAPACITY // 512} SESPARSE "{extent}"')
            .encode())


# name: sesparse_image keyword arguments of a broken image (the hostile variants)
SESPARSE_EDITS = {
    "const-magic": dict(const=[("magic", 0xCAFEBABF)]),
    "version": dict(const=[("version", 0x0000000100000001)]),
    "grain-size-16": dict(const=[("grain_size", 16)]),
    "grain-size-ones": dict(const=[("grain_size", ONES64)]),
    "table-size-128": dict(const=[("grain_table_size", 128)]),
    "flags": dict(const=[("flags", 1)]),
    "reserved": dict(const=[("reserved1", 1)]),
    "capacity-zero": dict(const=[("capacity", 0)]),
    "capacity-huge": dict(const=[("capacity", 1 << 62)]),
    "capacity-ones": dict(const=[("capacity", ONES64)]),
    "volatile-past-eof": dict(const=[("volatile_offset", 1 << 40)]),
    "volatile-ones": dict(const=[("volatile_offset", ONES64)]),
    "volatile-magic": dict(volatile=[(0, 0xCAFEBABE)]),
    "replay-journal": dict(volatile=[(24, 1)]),
    "gd-past-eof": dict(const=[("gd_offset", 1 << 40)]),
    "gd-size-huge": dict(const=[("gd_size", 1 << 40)]),
    "gd-size-ones": dict(const=[("gd_size", ONES64)]),
    "gd-size-zero": dict(const=[("gd_size", 0)]),
    "gd-entry-type": dict(gd=[(0, 2 << 60)]),
    "gd-entry-table-past-eof": dict(gd=[(0, 1 << 60 | 1000)]),
    "gd-entry-table-ones": dict(gd=[(0, 1 << 60 | ONES32)]),
    "tables-offset-huge": dict(const=[("gt_offset", 1 << 40)]),
    "grains-offset-huge": dict(const=[("grains_offset", 1 << 62)]),
    "grains-offset-ones": dict(const=[("grains_offset", ONES64)]),
    "gte-past-eof": dict(gte=[(0, se_allocated(1 << 40))]),
    "gte-ones-number": dict(gte=[(0, 3 << 60 | 0x0FFFFFFFFFFFFFFF)]),
    "gte-bad-type": dict(gte=[(0, 4 << 60)]),
    "gte-all-ones": dict(gte=[(5, ONES64)]),
    "gte-unallocated-bits": dict(gte=[(4, 5)]),
}


# the qcow (version 1) header, big-endian
QCOW1_HEADER = {"magic": (0, ">I"), "version": (4, ">I"), "backing_offset": (8, ">Q"),
                "backing_size": (16, ">I"), "mtime": (20, ">I"), "size": (24, ">Q"),
                "cluster_bits": (32, ">B"), "l2_bits": (33, ">B"), "padding": (34, ">H"),
                "crypt_method": (36, ">I"), "l1_offset": (40, ">Q")}
QCOW1_PAST_LIMITS = [("cluster_bits", 8), ("cluster_bits", 17), ("l2_bits", 5), ("l2_bits", 14),
                     ("size", 1), ("size", 1 << 62), ("size", (1 << 64) - (1 << 20)),
                     ("crypt_method", 2), ("version", 2), ("backing_size", 1024),
                     ("backing_offset", 1 << 40), ("backing_size", 1000), ("l1_offset", 8),
                     ("l1_offset", 1 << 40), ("l1_offset", 550)]
# (field, value): every field at "zero" and "ones", then the limits
QCOW1_HEADER_CASES = [(f, v) for f in QCOW1_HEADER for v in ("zero", "ones")] + QCOW1_PAST_LIMITS
QCOW1_L1_ENTRIES = [0, 8, 48, 100, 1 << 30, (1 << 63) - 4096, ONES64]
QCOW1_L2_ENTRIES = [8, 48, 1 << 30, 1 << 62, (1 << 63) | (1 << 40), (1 << 63) | (100 << 51) | 48,
                    (1 << 63) | 4096, ONES64]


def qcow1_base(d):
    """A small qemu-made qcow image with data in two L2 tables and a compressed cluster."""
    p = os.path.join(d, "p.qcow")
    qemu_img("create", "-q", "-f", "qcow", p, 8 * MiB)
    qemu_io(p, *pattern_cmds([(0, 8192, 0x11), (3 * MiB, 4096, 0x22)]),
            "write -c -P 0x33 6M 4k", fmt="qcow")
    with open(p, "rb") as f:
        return f.read()


def qcow1_header_patch(field, value):
    """The header patch of a QCOW1_HEADER_CASES entry."""
    off, fmt = QCOW1_HEADER[field]
    return (off, fmt, {"zero": 0, "ones": ONES_OF[fmt]}.get(value, value))


def qcow1_l1_entry(data, i):
    return struct.unpack_from(">Q", data, 48 + 8 * i)[0]


def other_variants(root):
    """Every VMDK and qcow (v1) variant: dicts of name, format, image (the
    file to open), files ({name: bytes}, written into its own directory)."""
    os.makedirs(root, exist_ok=True)
    vmdk, qcow1 = vmdk_bases(root), qcow1_base(root)
    out = []

    def add_other(name, fmt, image, files):
        out.append(dict(name=name, format=fmt, image=image, files=files))

    for sub in VMDK_SPARSE_BASES:
        for label, off, fmt, value in vmdk_header_variants():
            add_other(f"vmdk-{sub}-{label}", "vmdk", "disk.vmdk",
                      {"disk.vmdk": patched(vmdk[sub], [(off, fmt, value)])})
    for what in VMDK_TABLE_EDITS:
        add_other(f"vmdk-table-{what}", "vmdk", "disk.vmdk",
                  {"disk.vmdk": vmdk_table_edit(vmdk["monolithicSparse"], what)})
    for what in VMDK_GRAIN_EDITS:
        add_other(f"vmdk-grain-{what}", "vmdk", "disk.vmdk",
                  {"disk.vmdk": vmdk_grain_edit(vmdk["streamOptimized"], what)})
    for i, (create_type, extents) in enumerate(VMDK_DESCRIPTOR_CASES):
        add_other(f"vmdk-descriptor-{i}", "vmdk", "desc.vmdk",
                  {"desc.vmdk": vmdk_descriptor(create_type, extents).encode(),
                   "d.img": b"\x42" * 8192})
    for what, edit in SESPARSE_EDITS.items():
        add_other(f"vmdk-sesparse-{what}", "vmdk", "se.vmdk",
                  {"se.vmdk": sesparse_descriptor(), "se-sesparse.vmdk": sesparse_image(**edit)})
    add_other("vmdk-sesparse-truncated", "vmdk", "se.vmdk",
              {"se.vmdk": sesparse_descriptor(), "se-sesparse.vmdk": sesparse_image()[:40000]})
    for field, value in QCOW1_HEADER_CASES:
        add_other(f"qcow1-{field}-{value}", "qcow", "disk.qcow",
                  {"disk.qcow": patched(qcow1, [qcow1_header_patch(field, value)])})
    for entry in QCOW1_L1_ENTRIES:
        add_other(f"qcow1-l1-{entry:x}", "qcow", "disk.qcow",
                  {"disk.qcow": patched(qcow1, [(48, ">Q", entry)])})
    l2 = qcow1_l1_entry(qcow1, 0)
    for entry in QCOW1_L2_ENTRIES:
        add_other(f"qcow1-l2-{entry:x}", "qcow", "disk.qcow",
                  {"disk.qcow": patched(qcow1, [(l2, ">Q", entry)])})
    return out


def build_other(out):
    """Write every VMDK and qcow (v1) variant into out/<name>/; returns their index."""
    index = []
    for v in other_variants(os.path.join(out, "_bases")):
        d = os.path.join(out, v["name"])
        os.makedirs(d)
        for name, data in v["files"].items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        index.append({"name": v["name"], "dir": v["name"], "file": v["image"],
                      "format": v["format"]})
    shutil.rmtree(os.path.join(out, "_bases"))
    return index


# ---------------------------------------------------------------- driver

def copy_tree(src, dst):
    """Copy a base directory, keeping holes in sparse files."""
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as fin, \
                open(os.path.join(dst, name), "wb") as fout:
            while chunk := fin.read(1 << 16):
                if chunk.count(0) == len(chunk):
                    fout.seek(len(chunk), os.SEEK_CUR)
                else:
                    fout.write(chunk)
            fout.truncate()


def build(out):
    os.makedirs(out, exist_ok=True)
    bases = build_bases(os.path.join(out, "_bases"))
    with open(os.path.join(out, "outside.raw"), "wb") as f:
        f.write(b"OUTSIDE-THE-DIRECTORY\n" * 3000)
    index = []
    for v in VARIANTS:
        d = os.path.join(out, v["name"])
        copy_tree(bases[v["base"]], d)
        img = Image(os.path.join(d, "disk.qcow2"))
        if v["fn"](img, d) != "reload":
            img.save()
        index.append({"name": v["name"], "dir": v["name"], "file": "disk.qcow2",
                      "base": v["base"], "what": v["what"], "outside": v["outside"]})
    shutil.rmtree(os.path.join(out, "_bases"))
    names = [e["name"] for e in index]
    assert len(names) == len(set(names)), "duplicate variant names"
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    if "--list" in argv:
        for v in VARIANTS:
            print(f"{v['name']}\t{v['what']}")
        return 0
    index = build(argv[1])
    print(f"{len(index)} variants in {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
