"""Images whose tables name one structure many times: a small file that
claims hours of work. Opening and checking them must cost time bounded by
the file, so each command runs under a timeout of a few seconds (the code
before the fix took from 13 s to days on them), and `vdisk check` must reach
qemu-img check's verdict and exit code.

The images are built here by make_hostile.py's helpers from images qemu-img
creates; VDISK names the vdisk CLI (meson passes it).
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_hostile  # noqa: E402

TIMEOUT = 5  # seconds; the fixed code needs a few milliseconds


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
