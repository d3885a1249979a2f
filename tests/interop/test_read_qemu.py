"""Images qemu-img creates and qemu-io writes read identically through libvdisk,
and libvdisk's allocation map agrees with qemu-img map."""
import random

import pytest

from vdhelp import (KiB, MiB, assert_maps_agree, merge_extents, qemu_img, qemu_io, qemu_map,
                    qemu_raw, read_all, vd_map)

SIZE = 16 * MiB

CREATE = [
    "cluster_size=512,refcount_bits=1",
    "cluster_size=512,compat=0.10",
    "cluster_size=4k,refcount_bits=2,preallocation=falloc",
    "cluster_size=4k,refcount_bits=64,lazy_refcounts=on",
    "cluster_size=16k,extended_l2=on,refcount_bits=4",
    "cluster_size=64k,refcount_bits=8,preallocation=metadata",
    "cluster_size=64k,compat=0.10,preallocation=metadata",
    "cluster_size=64k,extended_l2=on,preallocation=metadata",
    "cluster_size=64k,compression_type=zstd,preallocation=full",
    "cluster_size=64k,refcount_bits=32,extended_l2=on,compression_type=zstd",
    "cluster_size=2M,refcount_bits=16",
    "cluster_size=2M,compat=0.10,preallocation=falloc",
    "cluster_size=2M,extended_l2=on,lazy_refcounts=on",
]


def cluster_of(options):
    value = dict(o.split("=") for o in options.split(","))["cluster_size"]
    return int(value[:-1]) * {"k": KiB, "M": MiB}[value[-1]] if value[-1] in "kM" else int(value)


def qemu_io_script(options, seed):
    """A seeded list of qemu-io commands: data, zeroes (with and without unmap),
    discards, sub-cluster writes, and compressed clusters where allowed."""
    rnd = random.Random(seed)
    cluster = cluster_of(options)
    v2 = "compat=0.10" in options
    sub = cluster // 32 if "extended_l2=on" in options else None
    cmds = []

    def span(limit):
        off = rnd.randrange(0, SIZE - limit) // 512 * 512
        return off, rnd.randrange(1, limit // 512) * 512

    for i in range(40):
        kind = rnd.choices(["data", "zero", "zero-u", "discard", "sub", "comp"],
                           [6, 2, 2, 2, 2 if sub else 0, 2])[0]
        if kind == "data":
            off, n = span(min(4 * cluster, 2 * MiB) + 4096)
            cmds.append(f"write -P {rnd.randrange(1, 256)} {off} {n}")
        elif kind == "zero":
            off, n = span(min(4 * cluster, 2 * MiB) + 4096)
            cmds.append(f"write -z {off} {n}")
        elif kind == "zero-u":
            off, n = span(min(4 * cluster, 2 * MiB) + 4096)
            cmds.append(f"write -z -u {off} {n}")
        elif kind == "discard":
            off, n = span(min(4 * cluster, 2 * MiB) + 4096)
            cmds.append(f"discard {off} {n}")
        elif kind == "sub":  # a few subclusters inside one cluster
            base = rnd.randrange(SIZE // cluster) * cluster
            first = rnd.randrange(32)
            count = rnd.randrange(1, 33 - first)
            cmds.append(f"write -P {rnd.randrange(1, 256)} {base + first * sub} {count * sub}")
        elif kind == "comp" and cluster <= 64 * KiB and "preallocation" not in options:
            base = rnd.randrange(SIZE // cluster) * cluster
            cmds.append(f"write -c -P {rnd.randrange(1, 256)} {base} {cluster}")
        if i == 20 and not v2:
            # a zeroed and a discarded range over data, exactly cluster aligned
            base = rnd.randrange(SIZE // cluster - 4) * cluster
            cmds += [f"write -P 77 {base} {4 * cluster}", f"write -z -u {base} {cluster}",
                     f"discard {base + 2 * cluster} {cluster}"]
    return cmds


@pytest.mark.parametrize("options", CREATE)
def test_qemu_written_image_reads_identically(tmp_path, options):
    path = tmp_path / "q.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, path, str(SIZE))
    qemu_io(path, *qemu_io_script(options, options))
    expected = qemu_raw(path)
    assert read_all(path) == expected
    if "preallocation=metadata" in options:
        # qemu-img also reports zero for data clusters over holes in the host
        # file; see test_map_zero_over_preallocated_holes
        assert_maps_agree(path, keys=("data", "present"))
    else:
        assert_maps_agree(path)


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
@pytest.mark.parametrize("cluster", ["4k", "64k", "2M"])
def test_compressed_images_read_identically(tmp_path, compression, cluster):
    """qemu-img convert -c output (then partly overwritten by qemu-io) reads identically."""
    src, path = tmp_path / "src.raw", tmp_path / "c.qcow2"
    rnd = random.Random(cluster + compression)
    data = bytearray(SIZE)
    for _ in range(30):  # compressible runs, incompressible runs, zeroes in between
        off, n = rnd.randrange(SIZE - 300 * KiB), rnd.randrange(1, 300 * KiB)
        data[off:off + n] = (rnd.randbytes(n) if rnd.random() < 0.3
                             else bytes([rnd.randrange(256)]) * n)
    src.write_bytes(data)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
             f"cluster_size={cluster},compression_type={compression}", src, path)
    info = qemu_img("check", "--output=json", path).stdout
    assert '"compressed-clusters": 0' not in info  # there is something compressed to read
    assert read_all(path) == bytes(data)
    qemu_io(path, "write -P 9 100000 70000", "write -z 3000000 200000", "discard 8M 4M")
    assert read_all(path) == qemu_raw(path)
    assert_maps_agree(path)


def test_compressed_cluster_at_every_position(tmp_path):
    """Compressed clusters written by qemu-io next to each other, all distinct."""
    path = tmp_path / "cc.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", path, "1M")
    qemu_io(path, *[f"write -c -P {i % 255 + 1} {i * 4096} 4096" for i in range(256)])
    got = read_all(path)
    assert got == b"".join(bytes([i % 255 + 1]) * 4096 for i in range(256))


def test_map_agrees_on_every_kind_of_cluster(tmp_path):
    """One image with each L2 state side by side: unallocated, data, zero
    (allocated and not), compressed, and subclusters of each kind."""
    path = tmp_path / "k.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=64k,extended_l2=on", path, "4M")
    qemu_io(path, "write -P 1 64k 64k", "write -z 128k 64k", "write -P 2 192k 64k",
            "write -z 192k 64k", "write -z -u 256k 64k", "write -c -P 3 320k 64k",
            "write -P 4 390k 6k", "write -z 460k 2k", "write -P 5 1M 1k")
    assert read_all(path) == qemu_raw(path)
    assert_maps_agree(path)
    # and the data the map calls data is where the bytes are
    ours = merge_extents(vd_map(path), ("data",))
    theirs = merge_extents(qemu_map(path), ("data",))
    assert ours == theirs


def test_map_zero_over_preallocated_holes(tmp_path):
    """preallocation=metadata leaves the data clusters as holes in the file:
    qemu-img map says data and zero; the whole disk reads as zeroes."""
    path = tmp_path / "m.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=64k,preallocation=metadata",
             path, "4M")
    qemu_io(path, "write -P 1 1M 64k")
    assert merge_extents(qemu_map(path), ("data", "zero"))[0] == (0, MiB, (True, True))
    assert_maps_agree(path)
