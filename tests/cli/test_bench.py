"""vdisk bench against qemu-img bench: the same lines (but the time), exit status and effect."""
import re

import pytest

from conftest import MiB, make_sparse, same_result


def without_time(result):
    result.stdout = re.sub(r"in \d+\.\d{3} seconds", "in T seconds", result.stdout)
    return result


@pytest.fixture
def image(tmp_path, qemu_img):
    path = tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", path, "8M", check=0)
    return path


@pytest.mark.parametrize("args", [
    ["-c", "1000"],
    ["-c", "100", "-d", "4", "-s", "64k", "-S", "128k", "-o", "1M", "-w"],
    ["-c", "0x10", "-d", "1"],
    ["-c", "0"],
    ["-s", "0", "-c", "10"],
    ["-c", "300", "-o", "7M", "-S", "300k"],  # offsets wrap around before the end
    ["--pattern=0xff", "-c", "10", "-w"],
    ["--flush-interval=100", "-w", "-c", "1000", "-d", "4"],
    ["--flush-interval=100", "--no-drain", "-w", "-c", "1000", "-d", "4"],
    ["-n", "-t", "none", "-c", "10"],
    ["-i", "threads", "-c", "10", "-t", "unsafe", "-w"],
    ["-q", "-c", "10", "-U"],
    # bad input
    ["-d", "x"], ["-c", "-1"], ["-s", "3G"], ["-S", "-1"], ["-o", "-5"], ["--pattern=256"],
    ["--flush-interval=10"], ["--flush-interval=10", "-w", "-d", "20"], ["-t", "foo"],
    ["-n", "-c", "10"], ["-i", "foo"], ["-U", "-w", "-c", "10"], ["-z"], ["-c"],
], ids=" ".join)
def test_same_as_qemu_img(vdisk, qemu_img, image, args):
    ours, theirs = without_time(vdisk("bench", *args, image)), \
        without_time(qemu_img("bench", *args, image))
    assert same_result(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("args", [[], ["nosuch.qcow2"], ["a", "b"], ["-f", "qcow2", "r.raw"]])
def test_errors(vdisk, qemu_img, tmp_path, args):
    make_sparse(tmp_path / "r.raw", MiB)
    ours, theirs = vdisk("bench", *args, cwd=tmp_path), qemu_img("bench", *args, cwd=tmp_path)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    if "Could not open" in theirs.stderr:
        assert ours.stderr.startswith(f"vdisk: Could not open '{args[-1]}': ")
    else:
        assert same_result(ours, theirs)


def test_missing_backing_file(vdisk, qemu_img, tmp_path):
    qemu_img("create", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2",
             tmp_path / "over.qcow2", "1M", check=0)
    ours = vdisk("bench", "-c", "1", "over.qcow2", cwd=tmp_path)
    assert ours.returncode == qemu_img("bench", "-c", "1", "over.qcow2", cwd=tmp_path).returncode
    assert ours.stderr.startswith("vdisk: Could not open 'over.qcow2': ")


@pytest.mark.parametrize("depth", ["1", "7"])
def test_parallel_writes_land_where_qemu_img_puts_them(vdisk, qemu_img, tmp_path, depth):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for path, tool in ((ours, vdisk), (theirs, qemu_img)):
        qemu_img("create", "-f", "qcow2", path, "4M", check=0)
        tool("bench", "-w", "-d", depth, "-c", "100", "-s", "3k", "-S", "20k", "-o", "1000",
             "--pattern=0xa5", "--flush-interval=50", path, check=0)
    assert qemu_img("compare", ours, theirs, check=0).stdout == "Images are identical.\n"
    qemu_img("check", ours, check=0)


def test_request_past_the_end_fails(vdisk, image):
    result = vdisk("bench", "-c", "10", "-s", "128M", image, check=1)
    assert result.stderr.startswith("vdisk: Failed request: ")
