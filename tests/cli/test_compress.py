"""Compressed qcow2 clusters (zlib and zstd) written by vdisk and by qemu-img,
judged by qemu-img: convert -c, writes into compressed images, check counts."""
import json
import os
import random

import pytest

from conftest import MiB  # noqa: E402

CODECS = ["zlib", "zstd"]


def mixed_raw(path, size, seed=0):
    """Compressible text, incompressible random data, zeroes and holes, by 64 KiB piece."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(0, size, 64 * 1024):
            kind = rnd.choice(["text", "random", "zero", "hole"])
            if kind == "text":
                piece = (b"libvdisk compresses cluster %d " % offset) * 3000
            elif kind == "random":
                piece = rnd.randbytes(64 * 1024)
            elif kind == "zero":
                piece = bytes(64 * 1024)
            else:
                continue
            f.seek(offset)
            f.write(piece[:64 * 1024])
    return path


def check_json(tool, path):
    result = tool("check", "--output=json", path)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
def test_convert_c_is_what_qemu_reads(vdisk, qemu_img, tmp_path, codec, cluster_size):
    src = mixed_raw(tmp_path / "src.raw", 6 * MiB + 512 * 3, seed=cluster_size)
    ours = tmp_path / "ours.qcow2"
    vdisk("convert", "-c", "-O", "qcow2", "-o",
          f"cluster_size={cluster_size},compression_type={codec}", src, ours, check=0)
    theirs = tmp_path / "theirs.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o",
             f"cluster_size={cluster_size},compression_type={codec}", src, theirs, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", src, ours, check=0)
    report = check_json(qemu_img, ours)
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0
    # as many clusters compressed as qemu-img compresses: the same decisions
    assert report["compressed-clusters"] == check_json(qemu_img, theirs)["compressed-clusters"]
    assert report["compressed-clusters"] > 0
    # vdisk check counts them as qemu-img check does
    assert check_json(vdisk, ours)["compressed-clusters"] == report["compressed-clusters"]
    info = vdisk.json("info", "--output=json", ours)
    assert info["format-specific"]["data"]["compression-type"] == codec
    # within 2% of qemu-img's size
    assert os.path.getsize(ours) <= os.path.getsize(theirs) * 1.02 + cluster_size


@pytest.mark.parametrize("codec", CODECS)
def test_qemu_compressed_images_read_the_same(vdisk, qemu_img, tmp_path, codec):
    src = mixed_raw(tmp_path / "src.raw", 4 * MiB, seed=7)
    image = tmp_path / "q.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", f"compression_type={codec}", src, image,
             check=0)
    ours = tmp_path / "ours.raw"
    vdisk("convert", "-O", "raw", image, ours, check=0)
    assert ours.read_bytes() == src.read_bytes()
    assert check_json(vdisk, image)["compressed-clusters"] == \
        check_json(qemu_img, image)["compressed-clusters"] > 0


def bytes_file(tmp_path, data, name="model.raw"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def test_convert_c_needs_a_format_with_compressed_clusters(vdisk, qemu_img, tmp_path):
    src = mixed_raw(tmp_path / "src.raw", MiB)
    ours = vdisk("convert", "-c", "-O", "raw", src, tmp_path / "out.raw")
    theirs = qemu_img("convert", "-c", "-O", "raw", src, tmp_path / "q.raw")
    assert ours.returncode == 1 and theirs.returncode == 1
    assert "Compression not supported for this file format" in ours.stderr
    assert not (tmp_path / "out.raw").exists()


def test_convert_c_onto_a_base(vdisk, qemu_img, tmp_path):
    """-c with -B: only what differs from the base, compressed; zeroes over base data
    stay zero clusters."""
    base_raw = mixed_raw(tmp_path / "base.raw", 4 * MiB, seed=1)
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-O", "qcow2", base_raw, base, check=0)
    data = bytearray(base_raw.read_bytes())
    data[0:65536] = b"changed cluster " * 4096
    data[65536 * 5:65536 * 6] = bytes(65536)
    src = bytes_file(tmp_path, data, "src.raw")
    out = tmp_path / "out.qcow2"
    vdisk("convert", "-c", "-O", "qcow2", "-B", base, "-F", "qcow2", src, out, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", src, out, check=0)
    report = check_json(qemu_img, out)
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0
    assert report["compressed-clusters"] >= 1


def test_convert_c_parallel_output_is_in_order(vdisk, tmp_path):
    """The layout never depends on thread timing: two runs give the same file."""
    src = mixed_raw(tmp_path / "src.raw", 8 * MiB, seed=3)
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.qcow2"
        vdisk("convert", "-c", "-O", "qcow2", src, out, check=0)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
