"""Images whose tables name one structure many times: a small file that
claims hours of work. Opening and checking them must cost time bounded by
the file, so each command runs under a timeout of a few seconds (the code
before the fix took from 13 s to days on them), and `vdisk check` must reach
qemu-img check's verdict and exit code.

The images are built here by make_hostile.py's helpers from images qemu-img
creates; VDISK names the vdisk CLI (meson passes it).
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_hostile  # noqa: E402

# seconds; the fixed code needs milliseconds to a second (the largest images),
# a sanitizer build several times that; the hangs it guards against take minutes
TIMEOUT = 20 if os.environ.get("HOSTILE_SANITIZED") else 5


def vdisk():
    path = os.environ.get("VDISK")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("VDISK does not name the vdisk CLI (run via meson test)")
    return path


def run(*args):
    """(exit status, output) of a command that must finish within TIMEOUT."""
    try:
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, args))}: still running after {TIMEOUT} s")
    return r.returncode, r.stdout + r.stderr


def qemu_check_status(path):
    return subprocess.run([make_hostile.QEMU_IMG, "check", path], capture_output=True,
                          timeout=60).returncode


def new_image(tmp_path, cluster_size, options=""):
    path = tmp_path / "disk.qcow2"
    make_hostile.qemu_img("create", "-q", "-f", "qcow2",
                          "-o", f"cluster_size={cluster_size}{options}", path, "4M")
    make_hostile.qemu_io(str(path), "write -P 0x5a 0 64k")
    return make_hostile.Image(str(path))


# 1-bit refcounts at 4 KiB: 32768 entries a block, so that the small cluster
# size claims as much work as the large ones
@pytest.mark.parametrize("cluster_size,options", [
    (4096, ",refcount_bits=1"), (65536, ""), (2 << 20, "")], ids=["4k", "64k", "2M"])
def test_refcount_table_naming_one_zero_block(tmp_path, cluster_size, options):
    img = new_image(tmp_path, cluster_size, options)
    make_hostile.repeat_zero_refblock(img, 8 << 20)  # the largest table QEMU accepts
    img.save()
    status, out = run(vdisk(), "info", img.path)
    assert status == 0, out
    status, out = run(vdisk(), "check", img.path)
    assert status == qemu_check_status(img.path), out[-2000:]


def test_bitmap_directory_of_huge_tables_is_refused(tmp_path):
    """20000 bitmaps, each naming the same 1 GiB table inside a sparse 1 GiB
    file: far more than a 4 MiB disk needs, so QEMU refuses to open it."""
    img = new_image(tmp_path, 65536)
    make_hostile.bitmap_directory(img, 20000, img.cluster_size, 0x8000000)
    img.save(size=img.cluster_size + (1 << 30))
    qemu_status = qemu_check_status(img.path)
    status, out = run(vdisk(), "check", img.path)
    assert status == qemu_status == 1, out
    assert "Bitmap 'b0' doesn't satisfy the constraints" in out


def test_bitmaps_sharing_one_table_are_read_once(tmp_path):
    """20000 bitmaps marked in use (so any table size passes QEMU's checks)
    naming one 8 MiB table, the largest a 512-byte cluster allows: check
    reads it once and finds the table's refcount wrong."""
    img = new_image(tmp_path, 512)
    table = make_hostile.align_up(img.eof, 512)
    img.write(table, bytes(8 << 20))
    make_hostile.bitmap_directory(img, 20000, table, (8 << 20) // 8, granularity_bits=9,
                                  flags=make_hostile.BITMAP_IN_USE)
    img.save()
    status, out = run(vdisk(), "check", img.path)
    assert status == 2, out[-2000:]
    assert "reference=20000" in out


def image_sharing_tables(tmp_path, l1_entries, snapshots):
    """A 64 KiB-cluster image whose L1 table of l1_entries entries names one
    L2 table in every entry, shared by that many snapshots."""
    img = new_image(tmp_path, 65536)
    make_hostile.repeat_l2_table(img, l1_entries)
    if snapshots:
        make_hostile.snapshots_sharing_l1(img, snapshots)
    img.save()
    return img


@pytest.mark.parametrize("l1_entries,snapshots", [(1 << 20, 0), (1 << 16, 1000)],
                         ids=["l1-1M-entries", "1000-snapshots"])
def test_tables_named_many_times_are_walked_once(tmp_path, l1_entries, snapshots):
    """Check reads each distinct L2 and L1 table once and weights its
    references: 1M entries x 8192 entries per table, or 1000 walks of a
    table of 64K entries, would take minutes."""
    img = image_sharing_tables(tmp_path, l1_entries, snapshots)
    status, out = run(vdisk(), "check", img.path)
    assert status == 2, out[-2000:]
    # the L2 table and the data cluster: more references than 16-bit refcounts hold
    assert "refcount=1 reference=65535" in out, out[-2000:]


@pytest.mark.parametrize("l1_entries,snapshots", [(2048, 0), (256, 20)],
                         ids=["l1-2048-entries", "20-snapshots"])
def test_tables_named_many_times_counted_as_qemu_img(tmp_path, l1_entries, snapshots):
    """Weighted references give qemu-img check's counts exactly (small
    enough for qemu-img, which walks the table once per entry)."""
    img = image_sharing_tables(tmp_path, l1_entries, snapshots)
    results = [subprocess.run([tool, "check", "--output=json", img.path], capture_output=True,
                              text=True, timeout=60)
               for tool in (make_hostile.QEMU_IMG, vdisk())]
    assert [r.returncode for r in results] == [2, 2], results[1].stderr[-2000:]
    assert json.loads(results[1].stdout) == json.loads(results[0].stdout)
