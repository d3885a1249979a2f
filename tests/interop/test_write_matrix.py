"""Images libvdisk writes pass qemu-img check and compare identical to a model.

A covering matrix (not the full product) of cluster size, compat level,
refcount width, preallocation, extended L2, lazy refcounts and compression
type; on each, a seeded random mix of unaligned writes spanning clusters,
zero writes with and without unmap, discards, a grow and a shrink.
"""
import random

import pytest

import libvdisk
from vdhelp import (KiB, MiB, assert_qemu_clean, qemu_check, qemu_compare, qemu_img, qemu_info,
                    qemu_raw, vd_check, vdisk_check)

# Every level of every factor appears at least once; the pairs that matter
# (cluster size x preallocation, extended L2 x cluster size, lazy x prealloc,
# v2 x cluster size) are covered.
MATRIX = [
    dict(cluster_size=512, refcount_bits=1),
    dict(cluster_size=512, compat="0.10", preallocation="metadata"),
    dict(cluster_size=512, refcount_bits=32, preallocation="full", lazy_refcounts=True),
    dict(cluster_size=4 * KiB, refcount_bits=2, preallocation="falloc"),
    dict(cluster_size=4 * KiB, refcount_bits=4, preallocation="full", lazy_refcounts=True),
    dict(cluster_size=4 * KiB, compat="0.10", preallocation="off"),
    dict(cluster_size=4 * KiB, refcount_bits=16, preallocation="metadata", lazy_refcounts=True,
         compression_type="zstd"),
    dict(cluster_size=16 * KiB, refcount_bits=4, extended_l2=True),
    dict(cluster_size=64 * KiB, refcount_bits=8, compression_type="zstd"),
    dict(cluster_size=64 * KiB, compat="0.10", preallocation="metadata"),
    dict(cluster_size=64 * KiB, refcount_bits=32, preallocation="metadata", extended_l2=True),
    dict(cluster_size=64 * KiB, refcount_bits=64, preallocation="full"),
    dict(cluster_size=64 * KiB, refcount_bits=1, preallocation="falloc", extended_l2=True,
         lazy_refcounts=True),
    dict(cluster_size=2 * MiB, refcount_bits=16, extended_l2=True),
    dict(cluster_size=2 * MiB, refcount_bits=64, preallocation="metadata", lazy_refcounts=True),
    dict(cluster_size=2 * MiB, compat="0.10", preallocation="falloc"),
    dict(cluster_size=2 * MiB, refcount_bits=2, preallocation="full", compression_type="zstd"),
]


def ident(options):
    return ",".join(f"{k}={v}" for k, v in options.items())


class Model:
    """The image and a bytearray of what it must read as, driven together."""

    def __init__(self, img, size, cluster, rnd):
        self.img, self.data, self.cluster, self.rnd = img, bytearray(size), cluster, rnd

    def span(self):
        size, c = len(self.data), self.cluster
        off = self.rnd.randrange(size)
        if self.rnd.random() < 0.3:
            off -= off % c  # sometimes cluster-aligned, so whole clusters are affected
        n = self.rnd.randrange(1, min(3 * c + 7777, 1536 * KiB))
        return off, min(n, size - off)

    def write(self):
        off, n = self.span()
        data = self.rnd.randbytes(n)
        self.img.pwrite(off, data)
        self.data[off:off + n] = data

    def zero(self):
        off, n = self.span()
        self.img.write_zeroes(off, n, may_unmap=self.rnd.random() < 0.5)
        self.data[off:off + n] = bytes(n)

    def discard(self):
        off, n = self.span()
        self.img.discard(off, n)
        # a hint: each byte now reads as before or as zero, never anything else
        got = self.img.pread(off, n)
        before = self.data[off:off + n]
        bad = [i for i in range(n) if got[i] != before[i] and got[i] != 0]
        assert not bad, f"discard {off}+{n} changed byte {off + bad[0]} to {got[bad[0]]:#x}"
        self.data[off:off + n] = got

    def grow(self, extra):
        self.img.resize(len(self.data) + extra)
        self.data += bytes(extra)

    def shrink(self, cut):
        new = len(self.data) - cut
        self.img.write_zeroes(new, cut, may_unmap=self.rnd.random() < 0.5)
        self.img.resize(new, shrink=True)
        del self.data[new:]

    def verify(self):
        assert self.img.size == len(self.data)
        got = self.img.pread(0, len(self.data))
        if got != self.data:
            first = next(i for i in range(len(got)) if got[i] != self.data[i])
            pytest.fail(f"libvdisk reads back differently from byte {first}")


@pytest.mark.parametrize("options", MATRIX, ids=ident)
def test_libvdisk_written_image_is_clean_and_identical(tmp_path, options):
    path, raw = tmp_path / "w.qcow2", tmp_path / "model.raw"
    size = 20 * MiB
    libvdisk.create(path, "qcow2", size, **options)
    rnd = random.Random(ident(options))
    cluster = options["cluster_size"]
    with libvdisk.open(path, "r+") as img:
        m = Model(img, size, cluster, rnd)
        for step in range(60):
            if step == 25:
                m.grow(5 * MiB + 512 * rnd.randrange(1, 64))  # not cluster aligned
            if step == 45:
                m.shrink(3 * MiB + 512 * rnd.randrange(1, 64))
            op = rnd.choices([m.write, m.zero, m.discard], weights=[6, 2, 2])[0]
            op()
            if step % 20 == 19:
                img.flush()
        # make sure the last cluster of the final size and the grown area hold data
        m.data[-100:] = tail = rnd.randbytes(100)
        img.pwrite(len(m.data) - 100, tail)
        m.verify()
        counts, lines = vd_check(img)
        assert counts["corruptions"] == 0 and counts["leaks"] == 0, (counts, lines)
        assert counts["check_errors"] == 0, (counts, lines)
    raw.write_bytes(m.data)

    report = assert_qemu_clean(path)
    info = qemu_info(path)
    assert info["virtual-size"] == len(m.data)
    assert info["cluster-size"] == cluster
    specific = info["format-specific"]["data"]
    assert specific["compat"] == options.get("compat", "1.1")
    if specific["compat"] == "1.1":
        assert specific["refcount-bits"] == options.get("refcount_bits", 16)
        assert specific.get("extended-l2", False) == options.get("extended_l2", False)
        assert specific["lazy-refcounts"] == options.get("lazy_refcounts", False)
        assert specific["compression-type"] == options.get("compression_type", "zlib")
    rc, out = qemu_compare(path, raw)
    assert rc == 0, out
    assert report.get("image-end-offset") is not None
    # the vdisk CLI's check says what qemu-img's says, key for key (but for
    # the fragmentation count: see test_fragmentation_counted_per_l2_table)
    ours = vdisk_check(path)
    if ours is not None:
        assert ours[0] == 0, ours
        skip = ("filename", "fragmented-clusters")
        assert {k: v for k, v in ours[1].items() if k not in skip} == \
            {k: v for k, v in report.items() if k not in skip}

    # reopened, libvdisk's own check is clean too, and lazy images are left clean
    with libvdisk.open(path, "r") as img:
        counts, lines = vd_check(img)
        assert counts["corruptions"] == 0 and counts["leaks"] == 0, (counts, lines)
        assert not img.info()["dirty-flag"]


@pytest.mark.parametrize("prealloc", ["metadata", "falloc", "full"])
def test_preallocation_allocates_like_qemu(tmp_path, prealloc):
    """A preallocated image reads as zeroes, is clean, and has as many clusters
    allocated up front as qemu-img's, in a file at least as long."""
    ours, theirs = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    libvdisk.create(ours, "qcow2", 8 * MiB, cluster_size=64 * KiB, preallocation=prealloc)
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size=64k,preallocation={prealloc}",
             theirs, "8M")
    assert_qemu_clean(ours)
    assert qemu_raw(ours) == bytes(8 * MiB)
    assert qemu_check(ours)[1]["allocated-clusters"] == qemu_check(theirs)[1]["allocated-clusters"]
    assert ours.stat().st_size >= theirs.stat().st_size


def test_fragmentation_counted_per_l2_table(tmp_path):
    """qemu-img check starts over at each L2 table: the first cluster an L2
    table maps is never fragmented."""
    path = tmp_path / "f.qcow2"
    libvdisk.create(path, "qcow2", 4 * MiB, cluster_size=4 * KiB)
    with libvdisk.open(path, "r+") as img:
        img.pwrite(0, b"x" * 4096)
        img.pwrite(2 * MiB, b"y" * 4096)  # the next L2 table (512 entries of 4 KiB)
    _, report = qemu_check(path)
    assert report["allocated-clusters"] == 2 and report.get("fragmented-clusters", 0) == 0
    with libvdisk.open(path) as img:
        counts, _ = vd_check(img)
    assert counts["allocated_clusters"] == 2
    assert counts["fragmented_clusters"] == report.get("fragmented-clusters", 0)


@pytest.mark.parametrize("options", ["cluster_size=4k", "cluster_size=64k,compression_type=zstd",
                                     "cluster_size=64k,extended_l2=on",
                                     "cluster_size=64k,compat=0.10"])
def test_libvdisk_writes_over_compressed_clusters(tmp_path, options):
    """Partial overwrites, zero writes and discards over clusters qemu-img
    convert -c compressed: clean, and identical to the model."""
    src, path, raw = tmp_path / "src.raw", tmp_path / "c.qcow2", tmp_path / "model.raw"
    rnd = random.Random(options)
    model = bytearray(b"\7" * (3 * MiB) + rnd.randbytes(MiB) + bytes(4 * MiB))
    src.write_bytes(model)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, src, path)
    assert qemu_check(path)[1].get("compressed-clusters")
    with libvdisk.open(path, "r+") as img:
        m = Model(img, 0, 4 * KiB, rnd)
        m.data = model
        for _ in range(40):
            rnd.choices([m.write, m.zero, m.discard], weights=[5, 3, 2])[0]()
        m.verify()
    raw.write_bytes(m.data)
    assert_qemu_clean(path)
    rc, out = qemu_compare(path, raw)
    assert rc == 0, out
