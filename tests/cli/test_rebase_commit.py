"""vdisk rebase and commit against qemu-img doing the same on copies.

Each test gets two directories, ours/ and theirs/, holding the same chain:
top.qcow2 (6 MiB, relative names) -> base.raw (4 MiB), plus other.qcow2 to
rebase onto. vdisk works in one, qemu-img in the other, and the results must
compare identical (qemu-img compare) and pass qemu-img check.
"""
import shutil

import subprocess

import pytest

from conftest import MiB, make_sparse, same_result

KiB = 1024


@pytest.fixture(scope="module")
def pristine(qemu_img, qemu_io, tmp_path_factory):
    directory = tmp_path_factory.mktemp("rebase")
    make_sparse(directory / "base.raw", 4 * MiB, data=[(0, MiB), (3 * MiB, 64 * KiB)])
    qemu_img("create", "-q", "-f", "qcow2", "other.qcow2", "4M", cwd=directory, check=0)
    qemu_io("-c", "write -P 9 512k 1M", "other.qcow2", cwd=directory, check=0)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "top.qcow2", "6M",
             cwd=directory, check=0)
    qemu_io("-c", "write -P 4 256k 64k", "-c", "write -z 3M 64k", "-c", "write -P 5 5M 64k",
            "top.qcow2", cwd=directory, check=0)
    return directory


@pytest.fixture
def dirs(pristine, tmp_path):
    """(ours, theirs, original): two copies of the chain to work on and one to compare with."""
    result = tuple(tmp_path / name for name in ("ours", "theirs", "original"))
    for directory in result:
        shutil.copytree(pristine, directory)
    return result


def _backing(qemu_img, image):
    info = qemu_img.json("info", "--output=json", image)
    return info.get("backing-filename"), info.get("backing-filename-format")


REBASES = [
    ["-q", "-b", "other.qcow2", "-F", "qcow2"],
    ["-b", ""],
    ["-u", "-b", "other.qcow2", "-F", "qcow2"],
    ["-u"],
    ["-f", "qcow2", "-t", "writeback", "-T", "none", "-b", "base.raw", "-F", "raw"],
]


@pytest.mark.parametrize("args", REBASES)
def test_rebase_like_qemu_img(vdisk, qemu_img, dirs, args):
    ours, theirs, original = dirs
    assert same_result(vdisk("rebase", *args, "top.qcow2", cwd=ours),
                       qemu_img("rebase", *args, "top.qcow2", cwd=theirs))
    assert _backing(qemu_img, ours / "top.qcow2") == _backing(qemu_img, theirs / "top.qcow2")
    qemu_img("compare", ours / "top.qcow2", theirs / "top.qcow2", check=0)
    qemu_img("check", ours / "top.qcow2", check=0)
    if "-u" not in args:  # the safe mode keeps what the guest sees
        qemu_img("compare", ours / "top.qcow2", original / "top.qcow2", check=0)


def test_safe_rebase_onto_nothing_keeps_the_data(vdisk, qemu_img, dirs):
    ours, _, original = dirs
    vdisk("rebase", "-b", "", ours / "top.qcow2", check=0)
    assert _backing(qemu_img, ours / "top.qcow2") == (None, None)
    qemu_img("compare", "-F", "raw", ours / "top.qcow2", original / "base.raw", check=1)
    qemu_img("compare", ours / "top.qcow2", original / "top.qcow2", check=0)


def test_rebase_probes_a_missing_format(vdisk, qemu_img, dirs):
    ours, _, original = dirs
    vdisk("rebase", "-b", "other.qcow2", "top.qcow2", cwd=ours, check=0)
    assert _backing(qemu_img, ours / "top.qcow2") == ("other.qcow2", "qcow2")
    qemu_img("compare", ours / "top.qcow2", original / "top.qcow2", check=0)


@pytest.mark.parametrize("args", [
    ["-b", "missing.qcow2", "-F", "qcow2"],
    ["-u", "-b", "other.qcow2"],
    ["-b", "other.qcow2", "-F", "qcow2", "-t", "fast"],
])
def test_rebase_errors_like_qemu_img(vdisk, qemu_img, dirs, args):
    ours, theirs, original = dirs
    assert same_result(vdisk("rebase", *args, "top.qcow2", cwd=ours),
                       qemu_img("rebase", *args, "top.qcow2", cwd=theirs))
    assert (ours / "top.qcow2").read_bytes() == (original / "top.qcow2").read_bytes()


def test_rebase_probed_raw_needs_its_format(vdisk, dirs):
    ours, _, original = dirs
    result = vdisk("rebase", "-b", "base.raw", "top.qcow2", cwd=ours, check=1)
    assert result.stderr.startswith("vdisk: Could not change the backing file to 'base.raw': ")


@pytest.mark.parametrize("args", [[], ["-d"], ["-q", "-t", "unsafe"]])
def test_commit_like_qemu_img(vdisk, qemu_img, dirs, args):
    ours, theirs, original = dirs
    assert same_result(vdisk("commit", *args, "top.qcow2", cwd=ours),
                       qemu_img("commit", *args, "top.qcow2", cwd=theirs))
    # the base grew to the overlay's size and holds its data
    qemu_img("compare", "-f", "raw", "-F", "raw", ours / "base.raw", theirs / "base.raw", check=0)
    qemu_img("compare", "-f", "raw", ours / "base.raw", original / "top.qcow2", check=0)
    qemu_img("compare", ours / "top.qcow2", theirs / "top.qcow2", check=0)
    qemu_img("check", ours / "top.qcow2", check=0)
    own = [e for e in vdisk.json("map", "--output=json", ours / "top.qcow2") if e["depth"] == 0
           and e["present"]]
    assert bool(own) == ("-d" in args)  # emptied unless -d


def test_progress_also_into_a_pipe(vdisk, dirs):
    """As qemu-img prints it (which repeats its 0% on commit)."""
    ours = dirs[0]
    def stdout(*args):
        return subprocess.run([vdisk.path, *args], cwd=ours, capture_output=True, check=True,
                              timeout=60).stdout
    assert stdout("commit", "-p", "top.qcow2") == (
        b"    (0.00/100%)\r    (100.00/100%)\r\nImage committed.\n")
    assert stdout("rebase", "-p", "-b", "", "top.qcow2") == (
        b"    (0.00/100%)\r    (100.00/100%)\r\n")


@pytest.mark.parametrize("image", ["base.raw", "other.qcow2", "missing.qcow2"])
def test_commit_errors_like_qemu_img(vdisk, qemu_img, dirs, image):
    ours, theirs, _ = dirs
    fmt = ["-f", "raw"] if image == "base.raw" else []
    assert same_result(vdisk("commit", *fmt, image, cwd=ours),
                       qemu_img("commit", *fmt, image, cwd=theirs))
