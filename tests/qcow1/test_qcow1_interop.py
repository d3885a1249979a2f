"""qcow (version 1) against qemu-img/qemu-io 7.2, both ways."""
import json
import os
import random

import pytest

import libvdisk
from vdhelp import (MiB, QEMU_IMG, QEMU_IO, VDISK, compare, qemu_io, qemu_raw, raw_model, run,
                    write_pattern_qemu)

SIZE = 8 * MiB
# (offset, length, byte) writes over cluster and L2-table boundaries, unaligned ones too
PATTERN = [(0, 512, 0x11), (4096 - 100, 300, 0x22), (1 * MiB, 3 * MiB, 0x5A),
           (2 * MiB - 4096, 8192, 0x33), (7 * MiB + 1000, 5000, 0x44)]


def vdisk_raw(path, out):
    run(VDISK, "convert", "-O", "raw", path, out)
    with open(out, "rb") as f:
        return f.read()


@pytest.mark.parametrize("size", [SIZE, 1000, 5 * MiB + 512])
def test_qemu_image_reads_identically(tmp_path, size):
    img = tmp_path / "q.qcow"
    run(QEMU_IMG, "create", "-f", "qcow", img, size)
    pattern = [(o, min(n, (size & ~511) - o), b) for o, n, b in PATTERN if o < (size & ~511)]
    write_pattern_qemu(img, pattern, "qcow")
    assert vdisk_raw(img, tmp_path / "v.raw") == qemu_raw(img, "qcow")
    with libvdisk.open(str(img), "r") as h:
        assert h.format == "qcow"
        assert h.size == size // 512 * 512 if size % 512 == 0 else h.size == (size + 511) // 512 * 512


def test_info_matches_qemu(tmp_path):
    base = tmp_path / "base.raw"
    run(QEMU_IMG, "create", "-f", "raw", base, "4M")
    for img, extra in ((tmp_path / "a.qcow", []), (tmp_path / "b.qcow", ["-b", "base.raw", "-F", "raw"])):
        run(QEMU_IMG, "create", "-f", "qcow", *extra, img, "4M")
        write_pattern_qemu(img, PATTERN[:2], "qcow")
        for out in ([], ["--output=json"]):
            ours = run(VDISK, "info", *out, img.name, cwd=tmp_path).stdout
            theirs = run(QEMU_IMG, "info", *out, img.name, cwd=tmp_path).stdout
            if out:
                assert json.loads(ours) == json.loads(theirs)
            else:
                assert ours == theirs
    assert "cluster_size: 512" in ours or '"cluster-size": 512' in ours


def test_backing_file_falls_through(tmp_path):
    base = tmp_path / "base.qcow"
    run(QEMU_IMG, "create", "-f", "qcow", base, SIZE)
    write_pattern_qemu(base, [(0, 2 * MiB, 0x61), (5 * MiB, 7000, 0x62)], "qcow")
    top = tmp_path / "top.qcow"
    run(QEMU_IMG, "create", "-f", "qcow", "-b", "base.qcow", "-F", "qcow", top)
    write_pattern_qemu(top, [(100, 1000, 0x71), (5 * MiB + 4000, 10, 0x72)], "qcow")
    assert vdisk_raw(top, tmp_path / "v.raw") == qemu_raw(top, "qcow")
    with libvdisk.open(str(top), "r+") as h:  # copy-on-write from the backing file
        h.pwrite(3000, b"\x7f" * 10)
    assert vdisk_raw(top, tmp_path / "v2.raw") == qemu_raw(top, "qcow")
    assert qemu_raw(top, "qcow")[2990:3020] == b"\x61" * 10 + b"\x7f" * 10 + b"\x61" * 10


def test_compressed_from_qemu(tmp_path):
    src = tmp_path / "src.raw"
    raw_model(src, SIZE, PATTERN)
    with open(src, "r+b") as f:  # data that does not compress, too
        f.seek(6 * MiB)
        f.write(random.Random(1).randbytes(64 * 1024))
    img = tmp_path / "c.qcow"
    # qemu-img 7.2 fails (status 1, no message) on the empty compressed write that ends a
    # compressed convert, which qcow refuses; every cluster is written by then
    run(QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow", src, img, check=False)
    mapped = json.loads(run(QEMU_IMG, "map", "--output=json", img).stdout)
    assert any(e["data"] and "offset" not in e for e in mapped)  # compressed runs
    assert vdisk_raw(img, tmp_path / "v.raw") == src.read_bytes()
    with libvdisk.open(str(img), "r+") as h:  # a partial write into a compressed cluster
        h.pwrite(1 * MiB + 10, b"\x01" * 20)
    data = bytearray(src.read_bytes())
    data[MiB + 10:MiB + 30] = b"\x01" * 20
    assert qemu_raw(img, "qcow") == bytes(data)


def test_vdisk_create_matches_qemu(tmp_path):
    ours, theirs = tmp_path / "v.qcow", tmp_path / "q.qcow"
    run(VDISK, "create", "-q", "-f", "qcow", ours, "3000000")
    run(QEMU_IMG, "create", "-f", "qcow", theirs, "3000000")
    assert ours.read_bytes() == theirs.read_bytes()
    base = tmp_path / "base.raw"
    run(QEMU_IMG, "create", "-f", "raw", base, "1M")
    ours, theirs = tmp_path / "vb.qcow", tmp_path / "qb.qcow"
    run(VDISK, "create", "-q", "-f", "qcow", "-b", "base.raw", "-F", "raw", ours.name, cwd=tmp_path)
    run(QEMU_IMG, "create", "-f", "qcow", "-b", "base.raw", "-F", "raw", theirs.name, cwd=tmp_path)
    assert ours.read_bytes() == theirs.read_bytes()


def test_vdisk_writes_read_by_qemu(tmp_path):
    img = tmp_path / "w.qcow"
    run(VDISK, "create", "-q", "-f", "qcow", img, SIZE)
    rnd = random.Random(7)
    model = bytearray(SIZE)
    with libvdisk.open(str(img), "r+") as h:
        for _ in range(300):
            off = rnd.randrange(SIZE - 1)
            n = rnd.randrange(1, min(20000, SIZE - off))
            buf = rnd.randbytes(n)
            h.pwrite(off, buf)
            model[off:off + n] = buf
        h.write_zeroes(4096 * 3 + 5, 70000)
        model[4096 * 3 + 5:4096 * 3 + 5 + 70000] = bytes(70000)
        h.discard(0, 4096)  # qcow has no discard: ignored, as QEMU ignores it
    model_path = tmp_path / "model.raw"
    model_path.write_bytes(model)
    compare(model_path, img)
    qemu_io(img, f"read -P 0 {4096 * 3 + 5} 70000", fmt="qcow")


def test_convert_to_qcow(tmp_path):
    src = tmp_path / "src.raw"
    raw_model(src, SIZE, PATTERN)
    plain, comp = tmp_path / "p.qcow", tmp_path / "c.qcow"
    run(VDISK, "convert", "-O", "qcow", src, plain)
    run(VDISK, "convert", "-c", "-O", "qcow", src, comp)
    compare(src, plain)
    compare(src, comp)
    assert comp.stat().st_size < plain.stat().st_size
    mapped = json.loads(run(QEMU_IMG, "map", "--output=json", comp).stdout)
    assert any(e["data"] and "offset" not in e for e in mapped)  # compressed runs
    qemu_io(comp, f"read -P 0x5a 1M {MiB - 4096}", fmt="qcow")
    with libvdisk.open(str(comp), "r+") as h:  # rewriting a compressed cluster in part
        h.pwrite(1 * MiB + 4000, b"\x99" * 200)
    qemu_io(comp, "read -P 0x5a 1M 4000", f"read -P 0x99 {MiB + 4000} 200",
            f"read -P 0x5a {MiB + 4200} 100", fmt="qcow")


def test_vdisk_writes_into_qemu_images(tmp_path):
    img = tmp_path / "q.qcow"
    run(QEMU_IMG, "create", "-f", "qcow", img, SIZE)
    write_pattern_qemu(img, PATTERN, "qcow")
    more = [(4096 * 5 + 7, 9000, 0x81), (1 * MiB + 100, 50, 0x82)]
    with libvdisk.open(str(img), "r+") as h:
        for off, n, b in more:
            h.pwrite(off, bytes([b]) * n)
    compare(raw_model(tmp_path / "m.raw", SIZE, PATTERN + more), img)
    qemu_io(img, f"read -P 0x81 {4096 * 5 + 7} 9000", f"read -P 0x82 {MiB + 100} 50", fmt="qcow")


def test_resize_refused(tmp_path):
    img = tmp_path / "r.qcow"
    run(VDISK, "create", "-q", "-f", "qcow", img, SIZE)
    r = run(VDISK, "resize", img, "16M", check=False)
    assert r.returncode != 0 and "Image format driver does not support resize" in r.stderr
    assert run(QEMU_IMG, "resize", img, "16M", check=False).returncode != 0


def test_create_options(tmp_path):
    r = run(VDISK, "create", "-f", "qcow", "-o", "encryption=on", tmp_path / "e.qcow", "1M",
            check=False)
    assert r.returncode != 0 and "'encrypt.key-secret' is required" in r.stderr
    r = run(VDISK, "create", "-f", "qcow", "-o", "cluster_size=512", tmp_path / "c.qcow", "1M",
            check=False)
    assert r.returncode != 0 and "cluster_size" in r.stderr
    r = run(VDISK, "create", "-f", "qcow", tmp_path / "z.qcow", "0", check=False)
    assert r.returncode != 0 and "zero length" in r.stderr


SECRET = ["--object", "secret,id=s0,data=weak passphrase"]


def image_opts(path, key=True):
    return f"driver=qcow,{'encrypt.key-secret=s0,' if key else ''}file.filename={path}"


def test_encrypted_both_ways(tmp_path):
    """Legacy AES-CBC (the IV from the guest sector): qemu's image reads and takes
    our writes; ours reads in qemu; no plaintext in the file; without the
    passphrase only info works; compression beside encryption is refused."""
    theirs, ours, model = tmp_path / "q.qcow", tmp_path / "v.qcow", tmp_path / "model.raw"
    run(QEMU_IMG, "create", "-q", *SECRET, "-f", "qcow",
        "-o", "encrypt.format=aes,encrypt.key-secret=s0", theirs, SIZE)
    run(QEMU_IO, *SECRET, "--image-opts", "-c", "write -P 0x5a 4096 64k", image_opts(theirs))
    data = bytearray(SIZE)
    data[4096:4096 + 65536] = b"\x5a" * 65536
    out = tmp_path / "out.raw"
    run(VDISK, "convert", *SECRET, "--image-opts", image_opts(theirs), "-O", "raw", out)
    assert out.read_bytes() == data
    with libvdisk.open(theirs, "r+", passphrase="weak passphrase") as img:
        img.pwrite(100000, b"ours" * 1000)
    data[100000:104000] = b"ours" * 1000
    model.write_bytes(data)
    run(QEMU_IMG, "compare", *SECRET, "--image-opts", f"driver=raw,file.filename={model}",
        image_opts(theirs))
    run(VDISK, "convert", *SECRET, "-f", "raw", "-O", "qcow",
        "-o", "encrypt.format=aes,encrypt.key-secret=s0", model, ours)
    run(QEMU_IMG, "compare", *SECRET, "--image-opts", f"driver=raw,file.filename={model}",
        image_opts(ours))
    assert b"ours" * 8 not in ours.read_bytes() and b"\x5a" * 64 not in ours.read_bytes()
    assert "encrypted: yes" in run(VDISK, "info", ours).stdout
    r = run(VDISK, "convert", "-O", "raw", ours, tmp_path / "nokey.raw", check=False)
    assert r.returncode == 1 and "opened without a passphrase" in r.stderr and "v.qcow" in r.stderr
    r = run(VDISK, "convert", "-c", *SECRET, "-f", "raw", "-O", "qcow",
            "-o", "encrypt.format=aes,encrypt.key-secret=s0", model, tmp_path / "c.qcow",
            check=False)
    assert r.returncode == 1 and "Compression and encryption" in r.stderr


def test_map_and_chain_match_qemu(tmp_path):
    base, top = tmp_path / "b.qcow", tmp_path / "t.qcow"
    run(QEMU_IMG, "create", "-f", "qcow", base, "4M")
    qemu_io(base, "write -P 1 0 1M", fmt="qcow")
    run(QEMU_IMG, "create", "-f", "qcow", "-b", "b.qcow", "-F", "qcow", top)
    qemu_io(top, "write -P 2 4k 8k", "write -c -P 3 64k 512", "write -z 2M 4k", fmt="qcow")
    for out in ([], ["--output=json"]):
        for cmd in (["map"], ["info", "--backing-chain"]):
            # the human map stops at the compressed cluster with an error, in both
            ours = run(VDISK, *cmd, *out, top.name, cwd=tmp_path, check=False)
            theirs = run(QEMU_IMG, *cmd, *out, top.name, cwd=tmp_path, check=False)
            assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode)
            assert ours.stderr.replace("vdisk:", "qemu-img:") == theirs.stderr


@pytest.mark.parametrize("size", [5 * MiB + 512, 3 * 4096 + 1024])
def test_compressed_convert_of_unaligned_size(tmp_path, size):
    src = tmp_path / "src.raw"
    raw_model(src, size, [(o, min(n, size - o), b) for o, n, b in PATTERN if o < size])
    img = tmp_path / "c.qcow"
    run(VDISK, "convert", "-c", "-O", "qcow", src, img)
    compare(src, img)
    assert vdisk_raw(img, tmp_path / "back.raw") == src.read_bytes()
