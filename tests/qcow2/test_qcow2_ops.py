"""qcow2 operations checked by qemu-img: resize, external data files, overlap guard, locks."""
import os
import random
import struct
import subprocess
import time

import pytest

from capi import Image, MiB, NO_LOCK, RDWR, VdError, create
from conftest import QEMU_IO, assert_clean, raw_content


@pytest.mark.parametrize("options", ["", "cluster_size=512", "compat=0.10,cluster_size=4k"])
def test_resize_grow_and_shrink(tmp_path, options):
    path = tmp_path / "r.qcow2"
    create(path, "qcow2", MiB, options)
    with Image(path, RDWR) as img:
        img.write(1000, b"A" * 5000)
        img.resize(3 << 30)  # the L1 table grows
        img.write((3 << 30) - 100, b"B" * 100)
        with pytest.raises(VdError) as data_lost:
            img.resize(MiB, shrink=True)
        assert "discard data" in data_lost.value.message
        with pytest.raises(VdError):
            img.resize(MiB + 1, shrink=True)  # sector multiples only, as in QEMU
        img.write_zeroes((3 << 30) - 100, 100)
        img.resize(2 * MiB, shrink=True)
    assert_clean(path)
    expected = bytearray(2 * MiB)
    expected[1000:6000] = b"A" * 5000
    assert raw_content(path) == bytes(expected)


@pytest.mark.parametrize("options", ["data_file=d.raw", "data_file=d.raw,data_file_raw=on",
                                     "data_file=d.raw,preallocation=metadata,cluster_size=4k",
                                     "data_file=d.raw,extended_l2=on"])
def test_external_data_file(tmp_path, options):
    path, size = tmp_path / "x.qcow2", 8 * MiB
    create(path, "qcow2", size, options)
    model, rnd = bytearray(size), random.Random(2)
    with Image(path, RDWR) as img:
        for _ in range(100):
            off, n = rnd.randrange(size - 90000), rnd.randrange(1, 90000)
            if rnd.random() < 0.7:
                data = rnd.randbytes(n)
                img.write(off, data)
                model[off:off + n] = data
            else:
                img.write_zeroes(off, n, unmap=True)
                model[off:off + n] = bytes(n)
    assert_clean(path)
    assert raw_content(path) == bytes(model)
    if "data_file_raw=on" in options:  # the data file alone is a raw image of the disk
        assert (tmp_path / "d.raw").read_bytes() == bytes(model)


def test_external_data_file_made_by_qemu(tmp_path, qemu_img, qemu_io):
    qemu_img("create", "-f", "qcow2", "-o", "data_file=q.raw", "q.qcow2", "4M", cwd=tmp_path)
    qemu_io("-c", "write -P 5 64k 100k", "-c", "write -z 1M 64k", "q.qcow2", cwd=tmp_path)
    with Image(tmp_path / "q.qcow2") as img:
        assert img.read() == raw_content(tmp_path / "q.qcow2")


def test_write_over_metadata_marks_corrupt_and_writes_nothing(tmp_path, qemu_img, qemu_io):
    path = tmp_path / "hostile.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    qemu_io("-c", "write -P 1 0 64k", path)
    data = bytearray(path.read_bytes())
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & 0x00fffffffffffe00
    struct.pack_into(">Q", data, l2, l1 | (1 << 63))  # guest cluster 0 -> the L1 table itself
    path.write_bytes(data)
    with Image(path, RDWR) as img:
        with pytest.raises(VdError) as refused:
            img.write(0, b"X" * 512)
        assert "overwrite metadata" in refused.value.message
        with pytest.raises(VdError):  # the handle is disabled
            img.write(0, b"X" * 512)
    after = path.read_bytes()
    assert after[l1:l1 + 8] == data[l1:l1 + 8]
    assert "corrupt: true" in qemu_img("info", path).stdout
    with pytest.raises(VdError) as read_only:
        Image(path, RDWR)
    assert "read-only" in read_only.value.message


def test_locks_exclude_qemu_and_libvdisk_writers(tmp_path, qemu_img):
    path = tmp_path / "l.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    with Image(path, RDWR):
        r = subprocess.run([QEMU_IO, "-c", "read 0 512", path], capture_output=True, text=True)
        assert r.returncode != 0 and "lock" in r.stderr
        with pytest.raises(VdError) as locked:
            Image(path)
        assert "lock" in locked.value.message and str(path) in locked.value.message
        Image(path, NO_LOCK).close()  # inspection without locks
        qemu_img("info", "-U", path)
    with Image(path), Image(path):  # readers coexist, with QEMU's too
        r = subprocess.run([QEMU_IO, "-r", "-c", "read 0 512", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    holder = subprocess.Popen([QEMU_IO, "-c", "sleep 3000", path])
    try:
        time.sleep(0.7)
        with pytest.raises(VdError) as busy:
            Image(path, RDWR)
        assert "lock" in busy.value.message
    finally:
        holder.wait()


def test_thin_provisioning(tmp_path, qemu_img):
    path = tmp_path / "big.qcow2"
    create(path, "qcow2", 1 << 40)
    with Image(path) as img:
        assert img.size == 1 << 40
    assert os.stat(path).st_blocks * 512 < MiB
    with Image(path, RDWR) as img:
        img.write(1 << 39, b"x" * MiB)
    assert os.stat(path).st_blocks * 512 < 3 * MiB
    assert_clean(path)
