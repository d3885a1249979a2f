"""Persistent dirty bitmaps: Image.bitmaps(), bitmap_add/remove/clear/enable/
disable/merge and dirty_extents(), with QEMU as the oracle both ways: bitmaps
qemu-img makes survive writes through libvdisk and are dirty exactly where it
wrote (qemu-nbd -B and nbdinfo --map read them), and bitmaps libvdisk makes
are seen by qemu-img info, check and qemu-nbd with the same dirty runs."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, needs_qemu_io, pattern, qemu_img, qemu_io

pytestmark = [pytest.mark.usefixtures("library"), needs_qemu_img]

KIB = 1024
SIZE = 64 * MIB
NBDINFO = shutil.which("nbdinfo")
QEMU_NBD = shutil.which("qemu-nbd")


@pytest.fixture(autouse=True)
def need_qcow2(library):
    if "qcow2" not in libvdisk.formats():
        pytest.skip("libvdisk has no qcow2")


def qemu_ok(*args):
    result = qemu_img(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_clean(path):
    result = qemu_img("check", "--output=json", path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert not report.get("corruptions") and not report.get("leaks"), report


def qemu_bitmaps(path, *extra):
    info = json.loads(qemu_ok("info", "--output=json", *extra, path).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def qemu_dirty_runs(path, name):
    """The dirty runs qemu-nbd serves for bitmap name (nbdinfo --map)."""
    if not NBDINFO or not QEMU_NBD:
        pytest.skip("nbdinfo (libnbd-bin) or qemu-nbd is not installed")
    result = subprocess.run([NBDINFO, "--json", f"--map=qemu:dirty-bitmap:{name}", "--",
                             "[", QEMU_NBD, "-r", "-f", "qcow2", "-B", name, str(path), "]"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [(e["offset"], e["length"]) for e in json.loads(result.stdout) if e["type"] & 1]


@pytest.fixture
def qemu_made(tmp_path):
    """A qcow2 image with bitmaps qemu-img made: b64k (enabled, 64 KiB), b4k
    (enabled, 4 KiB) and off (disabled)."""
    path = tmp_path / "disk.qcow2"
    qemu_ok("create", "-f", "qcow2", path, SIZE)
    qemu_ok("bitmap", "--add", path, "b64k")
    qemu_ok("bitmap", "--add", "-g", "4096", path, "b4k")
    qemu_ok("bitmap", "--add", path, "off", "--disable")
    return path


def write_some(img):
    img.pwrite(1 * MIB + 512, b"x" * 4096)
    img.write_zeroes(10 * MIB, 200_000)
    img.discard(40 * MIB, 128 * KIB)


# the runs write_some dirties, at each granularity
RUNS_64K = [(1 * MIB, 64 * KIB), (10 * MIB, 256 * KIB), (40 * MIB, 128 * KIB)]
RUNS_4K = [(1 * MIB, 8 * KIB), (10 * MIB, 49 * 4 * KIB), (40 * MIB, 128 * KIB)]


def test_qemu_bitmaps_survive_and_record_libvdisk_writes(qemu_made):
    listed = qemu_bitmaps(qemu_made)
    with libvdisk.open(qemu_made, "r+") as img:
        assert [b.to_dict() for b in img.bitmaps()] == listed
        # while the image is open for writing, the enabled bitmaps are in use on disk
        flags = {b["name"]: b["flags"] for b in qemu_bitmaps(qemu_made, "-U")}
        assert flags == {"b64k": ["in-use", "auto"], "b4k": ["in-use", "auto"], "off": []}
        write_some(img)
        assert img.dirty_extents("b64k") == RUNS_64K
        assert img.dirty_extents("b4k") == RUNS_4K
        assert img.dirty_extents("off") == []
    assert_clean(qemu_made)
    flags = {b["name"]: b["flags"] for b in qemu_bitmaps(qemu_made)}
    assert flags == {"b64k": ["auto"], "b4k": ["auto"], "off": []}
    assert qemu_dirty_runs(qemu_made, "b64k") == RUNS_64K
    assert qemu_dirty_runs(qemu_made, "b4k") == RUNS_4K
    assert qemu_dirty_runs(qemu_made, "off") == []


@needs_qemu_io
def test_qemu_writes_are_seen_and_kept(qemu_made):
    qemu_io("-c", "write -P 7 30M 64k", qemu_made)
    with libvdisk.open(qemu_made, "r+") as img:
        assert img.dirty_extents("b64k") == [(30 * MIB, 64 * KIB)]
        img.pwrite(0, b"y")
    assert qemu_dirty_runs(qemu_made, "b64k") == [(0, 64 * KIB), (30 * MIB, 64 * KIB)]
    assert_clean(qemu_made)


def test_libvdisk_bitmaps_as_qemu_sees_them(tmp_path):
    path = tmp_path / "ours.qcow2"
    libvdisk.create(path, "qcow2", SIZE)
    with libvdisk.open(path, "r+") as img:
        img.bitmap_add("a")
        img.bitmap_add("fine", granularity=512)
        img.bitmap_add("frozen", disabled=True)
        img.pwrite(5 * MIB, pattern(3000))
    assert qemu_bitmaps(path) == [
        {"flags": ["auto"], "name": "a", "granularity": 65536},
        {"flags": ["auto"], "name": "fine", "granularity": 512},
        {"flags": [], "name": "frozen", "granularity": 65536},
    ]
    assert_clean(path)
    assert qemu_dirty_runs(path, "a") == [(5 * MIB, 64 * KIB)]
    assert qemu_dirty_runs(path, "fine") == [(5 * MIB, 3072)]
    with libvdisk.open(path) as img:  # read-only: listed and queried, nothing changes
        assert img.dirty_extents("fine", 5 * MIB + 1024, 8192) == [(5 * MIB + 1024, 2048)]
        with pytest.raises(libvdisk.ReadOnly):
            img.bitmap_clear("a")


def test_clear_enable_disable_remove_merge(tmp_path, qemu_made):
    other = tmp_path / "other.qcow2"
    shutil.copy(qemu_made, other)
    with libvdisk.open(other, "r+") as img:
        img.pwrite(20 * MIB, b"z" * 10)
    with libvdisk.open(qemu_made, "r+") as img, libvdisk.open(other) as src:
        img.bitmap_merge("off", "b4k", source=src)
        assert img.dirty_extents("off") == [(20 * MIB, 64 * KIB)]
        img.bitmap_disable("b64k")
        img.pwrite(0, b"a")
        img.bitmap_enable("off")
        img.pwrite(SIZE - 1, b"a")
        img.bitmap_clear("b4k")
        img.bitmap_remove("b4k")
        with pytest.raises(libvdisk.NotFound):
            img.bitmap_remove("b4k")
        with pytest.raises(libvdisk.AlreadyExists):
            img.bitmap_add("off")
        with pytest.raises(libvdisk.InvalidArgument):
            img.bitmap_add("odd", granularity=1000)
    assert qemu_bitmaps(qemu_made) == [
        {"flags": [], "name": "b64k", "granularity": 65536},
        {"flags": ["auto"], "name": "off", "granularity": 65536},
    ]
    assert qemu_dirty_runs(qemu_made, "b64k") == []
    assert qemu_dirty_runs(qemu_made, "off") == [(20 * MIB, 64 * KIB), (SIZE - 64 * KIB, 64 * KIB)]
    assert_clean(qemu_made)


CRASH = """
import os, sys
sys.path.insert(0, sys.argv[2])
import libvdisk
img = libvdisk.open(sys.argv[1], "r+")
img.pwrite(0, b"lost")
img.flush()
os._exit(0)  # a crash: nothing stored, nothing closed
"""


def test_a_crash_leaves_the_bitmap_in_use_never_stale(qemu_made):
    package = os.path.dirname(os.path.dirname(libvdisk.__file__))
    subprocess.run([sys.executable, "-c", CRASH, str(qemu_made), package], check=True,
                   timeout=60, env=os.environ)
    flags = {b["name"]: b["flags"] for b in qemu_bitmaps(qemu_made)}
    assert flags == {"b64k": ["in-use", "auto"], "b4k": ["in-use", "auto"], "off": []}
    with libvdisk.open(qemu_made, "r+") as img:
        assert [b.inconsistent for b in img.bitmaps()] == [True, True, False]
        with pytest.raises(libvdisk.CorruptImage):
            img.dirty_extents("b64k")
        img.bitmap_remove("b64k")
        img.pwrite(0, b"more")
    # QEMU agrees: the one left is still inconsistent, the disabled one fine
    flags = {b["name"]: b["flags"] for b in qemu_bitmaps(qemu_made)}
    assert flags == {"b4k": ["in-use", "auto"], "off": []}
    result = qemu_img("check", qemu_made)
    assert "leaked" not in result.stdout, result.stdout


def test_convert_skips_broken_bitmaps_only_when_asked(qemu_made, tmp_path):
    package = os.path.dirname(os.path.dirname(libvdisk.__file__))
    subprocess.run([sys.executable, "-c", CRASH, str(qemu_made), package], check=True,
                   timeout=60, env=os.environ)
    copy = tmp_path / "copy.qcow2"
    with pytest.raises(libvdisk.CorruptImage, match="Cannot copy inconsistent bitmap 'b4k'"):
        libvdisk.convert(qemu_made, copy, "qcow2", bitmaps=True)
    assert not copy.exists()
    with pytest.raises(libvdisk.InvalidArgument, match="requires --bitmaps"):
        libvdisk.convert(qemu_made, copy, "qcow2", skip_broken_bitmaps=True)
    libvdisk.convert(qemu_made, copy, "qcow2", bitmaps=True, skip_broken_bitmaps=True)
    assert [(b["name"], b["flags"]) for b in qemu_bitmaps(copy)] == [("off", [])]
    assert_clean(copy)
