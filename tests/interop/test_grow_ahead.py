"""Growing ahead (lib/io/ahead.c): a qcow2, qcow or sparse VMDK image opened
for writing reserves its file past the end of the data, writes allocating clusters into
the reserve, skips zeroing what the reserve already reads as zeroes, and
trims the reserve at close. A writer that vanishes leaves the reserve behind:
qemu-img must still find the image clean, and the next writer reuses it."""
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

import libvdisk
from vdhelp import (MiB, VDISK, assert_qemu_clean, qemu_check, qemu_compare, qemu_io, run)

CLUSTER = 65536


def image_end(path):
    """qemu-img check's "Image end offset": one past the last cluster in use."""
    rc, report = qemu_check(path)
    assert rc == 0, report
    return report["image-end-offset"]


def assert_reads_as(path, raw, model, fmt="qcow2"):
    raw.write_bytes(model)
    rc, out = qemu_compare(path, raw, fmt=fmt)
    assert rc == 0, out


def scattered_writes(img, model, rnd, count, cluster=CLUSTER):
    """4 KiB at a random place inside count random clusters: each allocates."""
    for _ in range(count):
        c = rnd.randrange(img.size // cluster)
        off = c * cluster + rnd.randrange(0, cluster - 4096 + 1, 512)
        data = rnd.randbytes(4096)
        img.pwrite(off, data)
        model[off:off + 4096] = data


@pytest.mark.parametrize("cache", [None, "none"])
def test_reserve_while_open_trimmed_at_close(tmp_path, cache):
    path, raw = tmp_path / "a.qcow2", tmp_path / "a.raw"
    run(VDISK, "create", "-f", "qcow2", str(path), str(64 * MiB))
    rnd, model = random.Random(7), bytearray(64 * MiB)
    try:
        img = libvdisk.open(path, "r+", cache=cache)
    except libvdisk.Error as e:  # a file system without O_DIRECT (tmpfs)
        pytest.skip(f"cache=none: {e}")
    with img:
        scattered_writes(img, model, rnd, 200)
        img.flush()
        written = os.stat(path).st_size
        assert img.pread(0, img.size) == model
    end = image_end(path)
    assert os.stat(path).st_size == end, "the reserve was not trimmed at close"
    assert end < written, "no reserve while the image was open (nothing tested)"
    assert_qemu_clean(path)
    assert_reads_as(path, raw, model)


@pytest.mark.parametrize("subformat", ["monolithicSparse", "twoGbMaxExtentSparse"])
def test_vmdk_reserve_trimmed_at_close(tmp_path, subformat):
    path, raw = tmp_path / "a.vmdk", tmp_path / "a.raw"
    run(VDISK, "create", "-f", "vmdk", "-o", f"subformat={subformat}", str(path), str(64 * MiB))
    grains = tmp_path / ("a.vmdk" if subformat == "monolithicSparse" else "a-s001.vmdk")
    rnd, model = random.Random(5), bytearray(64 * MiB)
    with libvdisk.open(path, "r+") as img:
        scattered_writes(img, model, rnd, 150)
        img.flush()
        written = os.stat(grains).st_size
    out = run(VDISK, "map", "--output=json", str(path)).stdout
    last = max(e["offset"] + e["length"] for e in json.loads(out) if e.get("data"))
    assert os.stat(grains).st_size == last, "the reserve was not trimmed at close"
    assert last < written, "no reserve while the image was open (nothing tested)"
    assert_qemu_clean(path)
    assert_reads_as(path, raw, model, fmt="vmdk")


def test_zeroes_in_fresh_clusters(tmp_path):
    """The unwritten part of every freshly allocated cluster reads as zeroes, in qemu too."""
    path = tmp_path / "z.qcow2"
    run(VDISK, "create", "-f", "qcow2", str(path), str(16 * MiB))
    with libvdisk.open(path, "r+") as img:
        for c in range(0, 16 * MiB // CLUSTER, 3):
            img.pwrite(c * CLUSTER + 8192, b"\xa5" * 4096)
        img.write_zeroes(CLUSTER + 4096, 4096)  # inside a cluster no write touched yet
    checks = []
    for c in range(0, 16 * MiB // CLUSTER, 3):
        base = c * CLUSTER
        checks += [f"read -P 0 {base} 8192", f"read -P 0xa5 {base + 8192} 4096",
                   f"read -P 0 {base + 12288} {CLUSTER - 12288}"]
    qemu_io(path, *checks)
    assert_qemu_clean(path)


def abandon_after_writes(path, seed, count):
    """A child writes count allocating 4 KiB writes, flushes, and _exits without closing."""
    code = textwrap.dedent(f"""
        import os, random
        import libvdisk
        from test_grow_ahead import scattered_writes
        rnd = random.Random({seed})
        img = libvdisk.open({str(path)!r}, "r+")
        model = bytearray(img.pread(0, img.size))
        scattered_writes(img, model, rnd, {count})
        img.flush()
        open({str(path) + '.model'!r}, "wb").write(model)
        os._exit(0)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                                      os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    with open(str(path) + ".model", "rb") as f:
        return bytearray(f.read())


def test_abandoned_reserve_is_clean_and_reused(tmp_path):
    path, raw = tmp_path / "c.qcow2", tmp_path / "c.raw"
    run(VDISK, "create", "-f", "qcow2", str(path), str(256 * MiB))
    model = abandon_after_writes(path, 11, 300)
    crashed = os.stat(path).st_size
    end = image_end(path)
    assert crashed > end, "the abandoned writer left no reserve (nothing tested)"
    assert_qemu_clean(path)  # the reserve is free space: no leak, no error
    assert_reads_as(path, raw, model)

    # the next writer allocates inside the abandoned reserve before growing the file
    rnd = random.Random(12)
    with libvdisk.open(path, "r+") as img:
        assert img.pread(0, img.size) == model
        scattered_writes(img, model, rnd, (crashed - end) // CLUSTER // 2)
    assert os.stat(path).st_size <= crashed
    assert_qemu_clean(path)
    assert_reads_as(path, raw, model)


def test_parallel_allocating_writes_cache_none(tmp_path):
    """vdisk bench: 4 threads, every write allocates, cache=none; qemu reads every block."""
    path = tmp_path / "p.qcow2"
    run(VDISK, "create", "-f", "qcow2", str(path), str(128 * MiB))
    r = subprocess.run([VDISK, "bench", "-w", "-t", "none", "-d", "4", "-c", "2048", "-s", "4k",
                        "-S", "64k", "--pattern=0x3c", str(path)], capture_output=True, text=True)
    if r.returncode != 0 and "O_DIRECT" in r.stderr:
        pytest.skip(f"cache=none: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert os.stat(path).st_size == image_end(path)
    assert_qemu_clean(path)
    cmds = []
    for c in range(0, 2048, 97):
        cmds += [f"read -P 0x3c {c * CLUSTER} 4096", f"read -P 0 {c * CLUSTER + 4096} {CLUSTER - 4096}"]
    qemu_io(path, *cmds)


def test_qcow_v1_reserve_trimmed(tmp_path):
    path, raw = tmp_path / "v1.qcow", tmp_path / "v1.raw"
    run(VDISK, "create", "-f", "qcow", str(path), str(32 * MiB))
    rnd, model = random.Random(3), bytearray(32 * MiB)
    with libvdisk.open(path, "r+") as img:
        scattered_writes(img, model, rnd, 100, cluster=4096)
        assert img.pread(0, img.size) == model
    assert_reads_as(path, raw, model, fmt="qcow")
    # the file ends with its last cluster: no reserve was left
    out = run(VDISK, "map", "--output=json", str(path)).stdout
    last = max(e["offset"] + e["length"] for e in json.loads(out) if e.get("data") and "offset" in e)
    assert os.stat(path).st_size <= last + 4096
