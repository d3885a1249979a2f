"""Crash-ish durability smoke tests: a writer that flushes (or writes FUA) and
then vanishes without closing, and lazy-refcount images left dirty."""
import hashlib
import os
import random
import subprocess
import sys
import textwrap

import pytest

import libvdisk
from qcow2meta import Qcow2
from vdhelp import (MiB, assert_qemu_clean, qemu_check, qemu_raw, read_all, vd_check)

DIRTY = 1  # incompatible feature bit 0


def abandon(path, script, seed=0):
    """Run script in a child with `img` open read-write, then _exit without closing.

    The child writes the model it expects to a file; returns it.
    """
    model_path = str(path) + ".model"
    code = textwrap.dedent(f"""
        import os, random, sys
        import libvdisk
        rnd = random.Random({seed})
        img = libvdisk.open({str(path)!r}, "r+")
        model = bytearray(img.pread(0, img.size))
    """) + textwrap.dedent(script) + textwrap.dedent(f"""
        with open({model_path!r}, "wb") as f:
            f.write(model)
        sys.stdout.flush()
        os._exit(0)  # no close: whatever was not made durable is lost
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with open(model_path, "rb") as f:
        return f.read()


WORKLOAD = """
for i in range(40):
    off, n = rnd.randrange(img.size - 300000), rnd.randrange(1, 300000)
    kind = rnd.random()
    if kind < 0.7:
        data = rnd.randbytes(n)
        img.pwrite(off, data{fua})
        model[off:off + n] = data
    else:
        img.write_zeroes(off, n, may_unmap=kind < 0.85)
        model[off:off + n] = bytes(n)
"""


@pytest.mark.parametrize("options", [dict(cluster_size=65536), dict(cluster_size=4096,
                                                                     refcount_bits=2),
                                     dict(compat="0.10", cluster_size=512)],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_flushed_data_survives_an_abandoned_handle(tmp_path, options):
    path = tmp_path / "f.qcow2"
    libvdisk.create(path, "qcow2", 16 * MiB, **options)
    model = abandon(path, WORKLOAD.format(fua="") + "img.flush()\n")
    assert read_all(path) == model
    assert_qemu_clean(path)
    assert qemu_raw(path) == model


def test_fua_writes_survive_without_any_flush(tmp_path):
    path = tmp_path / "fua.qcow2"
    libvdisk.create(path, "qcow2", 16 * MiB, cluster_size=65536)
    model = abandon(path, WORKLOAD.format(fua=", fua=True"))
    assert read_all(path) == model
    rc, report = qemu_check(path)
    assert report.get("corruptions", 0) == 0, report  # leaks would be acceptable
    assert qemu_raw(path) == model


def test_abandoned_lazy_image_is_dirty_and_repaired_on_writable_open(tmp_path):
    path = tmp_path / "lazy.qcow2"
    libvdisk.create(path, "qcow2", 16 * MiB, cluster_size=65536, lazy_refcounts=True)
    model = abandon(path, WORKLOAD.format(fua="") + "img.flush()\n", seed=3)
    with Qcow2(path) as q:
        assert q.field("incompatible_features") & DIRTY, "an open lazy image is marked dirty"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    # a read-only open reads everything right and changes nothing
    with libvdisk.open(path) as img:
        assert img.info()["dirty-flag"]
        assert img.pread(0, img.size) == model
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with libvdisk.open(path, "r+") as img:
        counts, lines = vd_check(img)
        assert counts["corruptions"] == 0 and counts["leaks"] == 0, lines
    with Qcow2(path) as q:
        assert not q.field("incompatible_features") & DIRTY
    assert_qemu_clean(path)
    assert qemu_raw(path) == model


@pytest.mark.parametrize("damage", ["refcount_zero", "refcount_high", "leak"])
def test_dirty_flag_makes_writable_open_repair_refcounts(tmp_path, damage):
    """A clean lazy image, then refcounts damaged and the dirty bit set by hand
    (what a crash leaves): the next writable open rebuilds the refcounts."""
    path = tmp_path / "d.qcow2"
    libvdisk.create(path, "qcow2", 16 * MiB, cluster_size=65536, lazy_refcounts=True)
    rnd = random.Random(damage)
    model = bytearray(16 * MiB)
    with libvdisk.open(path, "r+") as img:
        for off in (0, 3 * MiB + 12345, 9 * MiB, 15 * MiB):
            data = rnd.randbytes(200000)
            img.pwrite(off, data)
            model[off:off + len(data)] = data
    assert_qemu_clean(path)
    with Qcow2(path) as q:
        host = q.host_cluster(9 * MiB)
        if damage == "refcount_zero":
            q.set_refcount(host, 0)
        elif damage == "refcount_high":
            q.set_refcount(host, 5)
        else:
            end = os.path.getsize(path)
            q.pwrite(end, bytes(q.cluster_size))
            q.set_refcount(end, 1)
        q.set_field("incompatible_features", q.field("incompatible_features") | DIRTY)
    with libvdisk.open(path, "r+") as img:
        assert img.pread(0, img.size) == model
        counts, lines = vd_check(img)
        assert counts["corruptions"] == 0 and counts["leaks"] == 0, (counts, lines)
        img.pwrite(5 * MiB, b"after repair")  # allocating must not hit the damaged cluster
        model[5 * MiB:5 * MiB + 12] = b"after repair"
    with Qcow2(path) as q:
        assert not q.field("incompatible_features") & DIRTY
    assert_qemu_clean(path)
    assert qemu_raw(path) == model


def test_refcount_damage_without_dirty_flag_is_not_silently_rebuilt(tmp_path):
    """Control for the test above: the same damage on a clean-flagged image is
    a corruption that check reports (so the repair above is the dirty flag's)."""
    path = tmp_path / "c.qcow2"
    libvdisk.create(path, "qcow2", 16 * MiB, cluster_size=65536, lazy_refcounts=True)
    with libvdisk.open(path, "r+") as img:
        img.pwrite(9 * MiB, b"x" * 100000)
    with Qcow2(path) as q:
        q.set_refcount(q.host_cluster(9 * MiB), 0)
    with libvdisk.open(path, "r") as img:
        counts, _ = vd_check(img)
    assert counts["corruptions"] >= 1
    assert qemu_check(path)[1].get("corruptions", 0) >= 1
