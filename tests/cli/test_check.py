"""vdisk check against qemu-img check, on clean and deliberately damaged qcow2 images."""
import json
import shutil

import pytest

from conftest import MiB, make_sparse
from qcow2_file import Qcow2File

KiB = 1024
CLUSTER = 64 * KiB


def leaks(q):
    q.add_leak()
    q.add_leak()


def refcount_zero(q):
    q.set_refcount(q.host_cluster(0), 0)


def copied_flag(q):
    q.clear_copied(CLUSTER)


def mixed(q):
    q.add_leak()
    q.clear_copied(CLUSTER)
    q.set_refcount(q.host_cluster(0), 2)


def fragmented(q):
    q.swap_clusters(0, 2 * CLUSTER)


DAMAGE = {"clean": None, "leaks": leaks, "refcount-zero": refcount_zero,
          "copied-flag": copied_flag, "mixed": mixed, "fragmented": fragmented}


@pytest.fixture(scope="module")
def pristine(qemu_img, tmp_path_factory):
    """A 1 MiB qcow2 image with data in its first three clusters, written by qemu-img."""
    directory = tmp_path_factory.mktemp("check")
    raw = make_sparse(directory / "src.raw", MiB, data=[(0, 3 * CLUSTER)])
    path = directory / "pristine.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, path, check=0)
    return path


@pytest.fixture
def damaged(request, pristine, tmp_path):
    """The pristine image with the damage named by the parameter, in tmp_path/<name>.qcow2."""
    path = tmp_path / f"{request.param}.qcow2"
    shutil.copy(pristine, path)
    if DAMAGE[request.param]:
        DAMAGE[request.param](Qcow2File(path))
    return path


def same_stderr(ours, theirs):
    """The problem lines are the library's and qemu's: compare them, tool names aside."""
    return ours.stderr.replace("vdisk: ", "") == theirs.stderr.replace("qemu-img: ", "")


@pytest.mark.parametrize("damaged", sorted(DAMAGE), indirect=True)
@pytest.mark.parametrize("output", ["human", "json"])
def test_check_identical_to_qemu_img(vdisk, qemu_img, damaged, output):
    args = ("check", f"--output={output}", damaged.name)
    ours = vdisk(*args, cwd=damaged.parent)
    theirs = qemu_img(*args, cwd=damaged.parent)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    assert same_stderr(ours, theirs)
    assert ours.returncode == {"clean": 0, "fragmented": 0, "leaks": 3}.get(damaged.stem, 2)


@pytest.fixture
def compressed(qemu_img, tmp_path):
    """Three compressed clusters (of compressible data: qemu stores the others as they are)."""
    raw = tmp_path / "src.raw"
    raw.write_bytes(b"compressible " * (3 * CLUSTER // 13) + bytes(MiB - 3 * CLUSTER // 13 * 13))
    path = tmp_path / "compressed.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", raw, path, check=0)
    return path


def test_compressed_clusters(vdisk, qemu_img, compressed):
    ours = vdisk.json("check", "--output=json", compressed)
    theirs = qemu_img.json("check", "--output=json", compressed)
    assert ours["compressed-clusters"] == theirs["compressed-clusters"] == 3
    assert list(ours) == list(theirs)


def test_compressed_clusters_are_fragmented(vdisk, qemu_img, compressed):
    ours = vdisk("check", "--output=json", compressed, check=0).stdout
    assert ours == qemu_img("check", "--output=json", compressed, check=0).stdout


def repair_counts(result):
    """The counts of a JSON check result that say what was repaired and what remains."""
    counts = json.loads(result.stdout)
    return {key: counts.get(key)
            for key in ("corruptions", "leaks", "corruptions-fixed", "leaks-fixed", "check-errors")}


@pytest.mark.parametrize("damaged", ["leaks", "copied-flag", "mixed", "refcount-zero"],
                         indirect=True)
def test_repair_all_like_qemu_img(vdisk, qemu_img, damaged, tmp_path):
    theirs_path = tmp_path / "theirs.qcow2"
    shutil.copy(damaged, theirs_path)
    ours = vdisk("check", "-r", "all", "--output=json", damaged)
    theirs = qemu_img("check", "-r", "all", "--output=json", theirs_path)
    assert ours.returncode == theirs.returncode == 0
    # not all of the output: qemu rebuilds all refcounts for a refcount of 0, and may then
    # end the image elsewhere
    assert repair_counts(ours) == repair_counts(theirs)
    assert qemu_img("check", damaged).returncode == 0
    qemu_img("compare", damaged, theirs_path, check=0)


@pytest.mark.parametrize("damaged", ["leaks", "copied-flag", "mixed"],
                         indirect=True)
def test_repair_leaks_like_qemu_img(vdisk, qemu_img, damaged, tmp_path):
    theirs_path = tmp_path / "theirs.qcow2"
    shutil.copy(damaged, theirs_path)
    ours = vdisk("check", "-r", "leaks", "--output=json", damaged)
    theirs = qemu_img("check", "-r", "leaks", "--output=json", theirs_path)
    assert ours.returncode == theirs.returncode
    assert repair_counts(ours) == repair_counts(theirs)
    assert qemu_img("check", damaged).returncode == qemu_img("check", theirs_path).returncode


@pytest.mark.parametrize("damaged", ["refcount-zero"], indirect=True)
def test_repair_leaks_needs_rebuild(vdisk, qemu_img, damaged, tmp_path):
    # a referenced cluster with refcount 0 needs a rebuild, which -r leaks may not do:
    # both give up ("need to rebuild refcount structures", exit 1) and change nothing
    theirs_path = tmp_path / "theirs.qcow2"
    shutil.copy(damaged, theirs_path)
    ours = vdisk("check", "-r", "leaks", damaged)
    theirs = qemu_img("check", "-r", "leaks", theirs_path)
    assert ours.returncode == theirs.returncode == 1
    assert "ERROR need to rebuild refcount structures" in ours.stderr
    assert qemu_img("check", damaged).returncode == 2


@pytest.mark.parametrize("damaged, mode", [("leaks", "leaks"), ("leaks", "all"), ("mixed", "all")],
                         indirect=["damaged"])
def test_repair_human_output(vdisk, qemu_img, damaged, mode, tmp_path):
    theirs_path = tmp_path / "theirs.qcow2"
    shutil.copy(damaged, theirs_path)
    ours = vdisk("check", "-r", mode, damaged)
    theirs = qemu_img("check", "-r", mode, theirs_path)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    assert ours.stdout.startswith("The following inconsistencies were found and repaired:\n\n")
    assert "\nDouble checking the fixed image now...\nNo errors were found on the image.\n" \
        in ours.stdout


@pytest.mark.parametrize("damaged", ["copied-flag"], indirect=True)
def test_repair_opens_image_marked_corrupt(vdisk, qemu_img, damaged):
    Qcow2File(damaged).mark_corrupt()
    assert vdisk("check", damaged).returncode == 2  # read-only is fine
    vdisk("check", "-q", "-r", "all", damaged, check=0)
    info = qemu_img.json("info", "--output=json", damaged)
    assert info["format-specific"]["data"]["corrupt"] is False
    qemu_img("check", damaged, check=0)


@pytest.mark.parametrize("damaged", ["mixed"], indirect=True)
def test_quiet(vdisk, damaged):
    for output in ("human", "json"):
        result = vdisk("check", "-q", f"--output={output}", damaged)
        assert (result.returncode, result.stdout) == (2, "")
        assert "ERROR OFLAG_COPIED" in result.stderr  # the problems are still listed


def test_raw_does_not_support_checks(vdisk, qemu_img, tmp_path):
    path = make_sparse(tmp_path / "a.img", MiB)
    for args in ([], ["-r", "all"], ["-f", "raw", "--output=json"]):
        ours = vdisk("check", *args, path)
        assert (ours.returncode, ours.stdout) == (63, "")
        assert ours.stderr == "vdisk: This image format does not support checks\n"
        assert qemu_img("check", *args, path).returncode == 63


@pytest.mark.parametrize("damaged", ["clean"], indirect=True)
@pytest.mark.parametrize("args, message", [
    (["-r", "some"], "vdisk: Unknown option value for -r (expecting 'leaks' or 'all'): some\n"
                     "Try 'vdisk --help' for more information\n"),
    (["-T", "bogus"], "vdisk: Invalid source cache option: bogus\n"),
    (["--output=xml"], "vdisk: --output must be used with human or json as argument.\n"),
    (["-U", "-r", "all"], None),
])
def test_bad_arguments(vdisk, qemu_img, damaged, args, message):
    ours = vdisk("check", *args, damaged)
    assert ours.returncode == qemu_img("check", *args, damaged).returncode == 1
    assert ours.stdout == ""
    if message:
        assert ours.stderr == message


@pytest.mark.parametrize("damaged", ["clean"], indirect=True)
def test_options_accepted(vdisk, damaged):
    for args in (["-T", "none"], ["-U"], ["-f", "qcow2"], ["--force-share", "-T", "unsafe"]):
        assert vdisk("check", *args, damaged, check=0).stdout.startswith("No errors")


def test_missing_file(vdisk, tmp_path):
    result = vdisk("check", tmp_path / "missing.qcow2", check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{tmp_path / 'missing.qcow2'}': ")


def test_table_far_past_the_end_counted_as_qemu_img_and_kept(vdisk, qemu_img, tmp_path):
    """A snapshot table whose garbled name size makes it reach clusters past
    the end of the file: a corruption for both, and neither counts its
    clusters, so the one still in the file leaks; but -r leaks keeps it (the
    table is still read from there), where qemu-img frees it."""
    path = tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M", check=0)
    qemu_img("snapshot", "-c", "s0", path, check=0)
    with open(path, "r+b") as f:
        header = f.read(72)
        table = int.from_bytes(header[64:72], "big")
        assert table + 4096 >= path.stat().st_size, "the snapshot table is not the last cluster"
        f.seek(table + 14)
        f.write((0xffff).to_bytes(2, "big"))  # the name reads on, far past the end of the file
    theirs = qemu_img("check", "--output=json", path)
    ours = vdisk("check", "--output=json", path)
    assert ours.returncode == theirs.returncode == 2
    counts = [{k: json.loads(r.stdout)[k] for k in ("corruptions", "leaks")} for r in (ours, theirs)]
    assert counts[0] == counts[1] == {"corruptions": 1, "leaks": 1}
    vdisk("check", "-r", "leaks", path, check=2)
    assert json.loads(vdisk("check", "--output=json", path, check=2).stdout)["leaks"] == 1  # kept
    assert vdisk("snapshot", "-l", path, check=0).stdout.count("\n") == 3
