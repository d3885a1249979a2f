"""Compressed writes through the Python binding (pwrite(compress=True)), judged by
qemu-img and qemu-io: images libvdisk compresses, and libvdisk's writes into
images qemu-img compressed."""
import json

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, needs_qemu_io, pattern, qemu_img, qemu_io

CLUSTER = 65536


def text(length, seed):
    return (b"cluster %d of compressible text " % seed * (length // 16 + 1))[:length]


def check_clean(path):
    result = qemu_img("check", "--output=json", path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0
    return report


@needs_qemu_img
@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_compressed_writes_then_overwrites(tmp_path, library, codec):
    """Many compressed clusters share host clusters; overwriting, recompressing
    and discarding some of them keeps every refcount exact."""
    path = tmp_path / "c.qcow2"
    libvdisk.create(path, "qcow2", 4 * MIB, compression_type=codec)
    model = bytearray(4 * MIB)
    with libvdisk.open(path, "r+") as img:
        for i in range(4 * MIB // CLUSTER):
            data = text(CLUSTER, i) if i % 3 else pattern(CLUSTER, i)
            img.pwrite(i * CLUSTER, data, compress=True)
            model[i * CLUSTER:(i + 1) * CLUSTER] = data
        img.pwrite(CLUSTER + 100, b"x" * 5000)            # partial: a normal cluster now
        model[CLUSTER + 100:CLUSTER + 5100] = b"x" * 5000
        again = text(CLUSTER, 99)
        img.pwrite(2 * CLUSTER, again, compress=True)     # compressed over compressed
        model[2 * CLUSTER:3 * CLUSTER] = again
        img.discard(4 * CLUSTER, 2 * CLUSTER)
        model[4 * CLUSTER:6 * CLUSTER] = bytes(2 * CLUSTER)
        img.flush()
        assert img.pread(0, 4 * MIB) == model
    report = check_clean(path)
    assert report["compressed-clusters"] > 0
    raw = tmp_path / "model.raw"
    raw.write_bytes(model)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", raw, path).returncode == 0


@needs_qemu_img
@needs_qemu_io
def test_writes_into_a_qemu_compressed_image(tmp_path, library):
    src = tmp_path / "src.raw"
    data = bytearray(b"".join(text(CLUSTER, i) for i in range(32)))
    src.write_bytes(data)
    path = tmp_path / "q.qcow2"
    assert qemu_img("convert", "-c", "-O", "qcow2", src, path).returncode == 0
    with libvdisk.open(path, "r+") as img:
        assert img.pread(0, len(data)) == data
        img.pwrite(3 * CLUSTER + 7, b"\x5a" * 1000)
        data[3 * CLUSTER + 7:3 * CLUSTER + 1007] = b"\x5a" * 1000
        img.pwrite(5 * CLUSTER, text(CLUSTER, 500), compress=True)
        data[5 * CLUSTER:6 * CLUSTER] = text(CLUSTER, 500)
    check_clean(path)
    out = qemu_io("-f", "qcow2", "-c", f"read -P 0x5a {3 * CLUSTER + 7} 1000", path)
    assert "read 1000/1000" in out.stdout
    src.write_bytes(data)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", src, path).returncode == 0


def test_compressed_writes_cover_whole_clusters(tmp_path, library):
    path = tmp_path / "c.qcow2"
    libvdisk.create(path, "qcow2", MIB + 512)
    with libvdisk.open(path, "r+") as img:
        with pytest.raises(libvdisk.InvalidArgument, match="whole clusters"):
            img.pwrite(512, bytes(CLUSTER), compress=True)
        # the last cluster may end with the image
        img.pwrite(MIB, text(512, 1), compress=True)
        assert img.pread(MIB, 512) == text(512, 1)
    raw = tmp_path / "r.raw"
    libvdisk.create(raw, "raw", MIB)
    with libvdisk.open(raw, "r+") as img:
        with pytest.raises(libvdisk.Unsupported):
            img.pwrite(0, bytes(CLUSTER), compress=True)


def test_convert_compress(tmp_path, library):
    src = tmp_path / "s.raw"
    src.write_bytes(b"".join(text(CLUSTER, i) for i in range(16)))
    out = tmp_path / "o.qcow2"
    libvdisk.convert(src, out, "qcow2", compress=True, compression_type="zstd")
    with libvdisk.open(out) as img:
        assert img.pread(0, 16 * CLUSTER) == src.read_bytes()
    with pytest.raises(libvdisk.Unsupported):
        libvdisk.convert(src, tmp_path / "o.raw", "raw", compress=True)
