"""vdisk snapshot, info of images with snapshots, and convert -l against qemu-img.

Snapshots taken by either tool are listed by both: on the same image the
lists agree byte for byte (dates are local time, as qemu-img prints them).
"""
import shutil

import pytest

from conftest import MiB, make_sparse, same_result

KiB = 1024

# libvdisk records no instruction count (-1) in the snapshots it takes, where qemu-img
# records 0, and vd_snapshot_info does not report it: vdisk always shows qemu-img's 0.


def mask_icount(listing):
    """A snapshot list without its ICOUNT column (the last 11 characters of each row)."""
    return "\n".join(line[:-11] if line[:1].isdigit() else line
                     for line in listing.splitlines())


@pytest.fixture(scope="module")
def source(qemu_img, tmp_path_factory):
    """A 4 MiB qcow2 image with data (version A) and a raw copy of it."""
    directory = tmp_path_factory.mktemp("snapshot")
    raw = make_sparse(directory / "a.raw", 4 * MiB, data=[(0, 256 * KiB), (3 * MiB, 64 * KiB)])
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, directory / "a.qcow2", check=0)
    return directory


@pytest.fixture(scope="module")
def with_snapshots(qemu_img, qemu_io, source):
    """source's image with qemu-img snapshots 'first' (A), 'second' and '1x' (both B)."""
    path = source / "snaps.qcow2"
    shutil.copy(source / "a.qcow2", path)
    qemu_img("snapshot", "-c", "first", path, check=0)
    qemu_io("-c", "write -P 0x42 64k 128k", path, check=0)
    qemu_img("snapshot", "-c", "second", path, check=0)
    qemu_img("snapshot", "-c", "1x", path, check=0)
    return path


@pytest.fixture
def image(with_snapshots, tmp_path):
    path = tmp_path / "snaps.qcow2"
    shutil.copy(with_snapshots, path)
    return path


@pytest.fixture
def copies(with_snapshots, tmp_path):
    """Directories ours/ and theirs/, each with a copy of with_snapshots as snaps.qcow2."""
    for name in ("ours", "theirs"):
        (tmp_path / name).mkdir()
        shutil.copy(with_snapshots, tmp_path / name / "snaps.qcow2")
    return tmp_path / "ours", tmp_path / "theirs"


def test_list_identical_to_qemu_img(vdisk, qemu_img, with_snapshots):
    ours = vdisk("snapshot", "-l", with_snapshots, check=0)
    assert ours.stdout == qemu_img("snapshot", "-l", with_snapshots, check=0).stdout
    lines = ours.stdout.splitlines()
    assert lines[:2] == ["Snapshot list:", "ID        TAG               VM SIZE                DATE"
                         "     VM CLOCK     ICOUNT"]
    assert [line.split()[:2] for line in lines[2:]] == [["1", "first"], ["2", "second"],
                                                       ["3", "1x"]]
    assert vdisk("snapshot", "-U", "-q", "-l", with_snapshots, check=0).stdout == ours.stdout


@pytest.mark.parametrize("output", ["human", "json"])
def test_info_identical_to_qemu_img(vdisk, qemu_img, with_snapshots, output):
    args = ["info", f"--output={output}", with_snapshots]
    assert vdisk(*args, check=0).stdout == qemu_img(*args, check=0).stdout


def test_info_json_snapshots(vdisk, with_snapshots):
    snapshots = vdisk.json("info", "--output=json", with_snapshots)["snapshots"]
    assert list(snapshots[0]) == ["icount", "vm-clock-nsec", "name", "date-sec", "date-nsec",
                                  "vm-clock-sec", "id", "vm-state-size"]
    assert [(s["id"], s["name"]) for s in snapshots] == [("1", "first"), ("2", "second"),
                                                         ("3", "1x")]


def test_no_snapshots_no_list(vdisk, qemu_img, source):
    for path in (source / "a.qcow2", source / "a.raw"):
        ours = vdisk("snapshot", "-l", path)
        assert same_result(ours, qemu_img("snapshot", "-l", path))
        assert ours.stdout == ""
        assert "Snapshot list" not in vdisk("info", path, check=0).stdout
        assert "snapshots" not in vdisk.json("info", "--output=json", path)


def _take_snapshots(tool, path):
    tool("snapshot", "-c", "one", path, check=0)
    tool("snapshot", "-q", "-c", "two", path, check=0)


def test_created_snapshots_listed_by_qemu_img(vdisk, qemu_img, source, tmp_path):
    path = tmp_path / "a.qcow2"
    shutil.copy(source / "a.qcow2", path)
    _take_snapshots(vdisk, path)
    theirs = qemu_img("snapshot", "-l", path, check=0).stdout
    assert mask_icount(vdisk("snapshot", "-l", path, check=0).stdout) == mask_icount(theirs)
    assert [line.split()[:2] for line in theirs.splitlines()[2:]] == [["1", "one"],
                                                                      ["2", "two"]]
    qemu_img("check", path, check=0)
    qemu_img("compare", path, source / "a.raw", check=0)


def test_created_snapshots_identical_in_qemu_img(vdisk, qemu_img, source, tmp_path):
    path = tmp_path / "a.qcow2"
    shutil.copy(source / "a.qcow2", path)
    _take_snapshots(vdisk, path)
    for args in (["snapshot", "-l"], ["info", "--output=json"]):
        assert vdisk(*args, path, check=0).stdout == qemu_img(*args, path, check=0).stdout


def test_same_ids_as_qemu_img(vdisk, qemu_img, image, tmp_path):
    """After deletions, the next id is one past the largest, as qemu-img numbers them."""
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(image, theirs)
    for tool, path in ((vdisk, image), (qemu_img, theirs)):
        tool("snapshot", "-d", "second", path, check=0)
        tool("snapshot", "-c", "new", path, check=0)
    listings = [mask_icount(qemu_img("snapshot", "-l", p, check=0).stdout) for p in (image, theirs)]
    ids = [[line.split()[:2] for line in listing.splitlines()[2:]] for listing in listings]
    assert ids[0] == ids[1] == [["1", "first"], ["3", "1x"], ["4", "new"]]


@pytest.mark.parametrize("which", ["first", "3"])
def test_apply_reverts(vdisk, qemu_img, source, image, which):
    qemu_img("snapshot", "-c", "unused", image, check=0)  # the current state is kept apart
    result = vdisk("snapshot", "-a", which, image, check=0)
    assert result.stdout == result.stderr == ""
    expected = source / "a.raw" if which == "first" else None
    if expected:
        qemu_img("compare", "-f", "raw", "-F", "qcow2", expected, image, check=0)
    else:
        ours = qemu_img("convert", "-l", which, "-O", "raw", image, image.with_suffix(".raw"))
        assert ours.returncode == 0
        qemu_img("compare", "-F", "qcow2", image.with_suffix(".raw"), image, check=0)
    qemu_img("check", image, check=0)


def test_apply_after_writes(vdisk, qemu_img, qemu_io, source, tmp_path):
    path = tmp_path / "a.qcow2"
    shutil.copy(source / "a.qcow2", path)
    vdisk("snapshot", "-c", "clean", path, check=0)
    qemu_io("-c", "write -P 7 0 1M", "-c", "write -z 3M 64k", path, check=0)
    vdisk("snapshot", "-a", "clean", path, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", source / "a.raw", path, check=0)
    qemu_img("check", path, check=0)


@pytest.mark.parametrize("name", ["second", "1x"])
def test_delete_like_qemu_img(vdisk, qemu_img, copies, name):
    ours, theirs = copies
    assert same_result(vdisk("snapshot", "-d", name, "snaps.qcow2", cwd=ours),
                       qemu_img("snapshot", "-d", name, "snaps.qcow2", cwd=theirs))
    assert vdisk("snapshot", "-l", ours / "snaps.qcow2", check=0).stdout == \
        qemu_img("snapshot", "-l", theirs / "snaps.qcow2", check=0).stdout
    qemu_img("compare", ours / "snaps.qcow2", theirs / "snaps.qcow2", check=0)
    qemu_img("check", ours / "snaps.qcow2", check=0)


# -d looks for a name only ("2" is no name here), -a for an id first; the image is untouched
@pytest.mark.parametrize("args", [
    ["-d", "2"],
    ["-d", "nope"],
    ["-a", "nope"],
    ["-l", "-c", "x"],
    ["-a", "1", "-a", "1"],
    ["-U", "-c", "x"],
    ["-U", "-d", "first"],
    [],
])
def test_errors_like_qemu_img(vdisk, qemu_img, with_snapshots, copies, args):
    ours, theirs = copies
    assert same_result(vdisk("snapshot", *args, "snaps.qcow2", cwd=ours),
                       qemu_img("snapshot", *args, "snaps.qcow2", cwd=theirs))
    assert (ours / "snaps.qcow2").read_bytes() == with_snapshots.read_bytes()


@pytest.mark.parametrize("args", [["-l"], ["-l", "a.qcow2", "b.qcow2"], ["-c", "x"]])
def test_usage_errors_like_qemu_img(vdisk, qemu_img, tmp_path, args):
    assert same_result(vdisk("snapshot", *args, cwd=tmp_path),
                       qemu_img("snapshot", *args, cwd=tmp_path))


def test_missing_image_and_raw(vdisk, qemu_img, source, tmp_path):
    missing = tmp_path / "missing.qcow2"
    assert same_result(vdisk("snapshot", "-l", missing), qemu_img("snapshot", "-l", missing))
    raw = tmp_path / "a.raw"
    shutil.copy(source / "a.raw", raw)
    ours = vdisk("snapshot", "-f", "raw", "-c", "x", raw, check=1)
    assert ours.stderr.startswith("vdisk: Could not create snapshot 'x': ")
    assert qemu_img("snapshot", "-c", "x", raw).returncode == 1


# ------------------------------------------------------------------ convert -l

LOAD_FORMS = ["first", "3", "snapshot.id=1,snapshot.name=first", "snapshot.name=1x",
              "snapshot.id=2"]


@pytest.mark.parametrize("param", LOAD_FORMS)
def test_convert_snapshot_like_qemu_img(vdisk, qemu_img, with_snapshots, tmp_path, param):
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    vdisk("convert", "-l", param, with_snapshots, ours, check=0)
    qemu_img("convert", "-l", param, "-O", "raw", with_snapshots, theirs, check=0)
    assert ours.read_bytes() == theirs.read_bytes()


def test_convert_snapshot_to_qcow2(vdisk, qemu_img, source, with_snapshots, tmp_path):
    out = tmp_path / "out.qcow2"
    vdisk("convert", "-O", "qcow2", "-s", "first", with_snapshots, out, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", source / "a.raw", out, check=0)
    qemu_img("check", out, check=0)
    assert "snapshots" not in vdisk.json("info", "--output=json", out)


@pytest.mark.parametrize("param", ["first,second", "snapshot.id=2,snapshot.name=first",
                                   "snapshot.foo=1"])
def test_convert_snapshot_errors_like_qemu_img(vdisk, qemu_img, with_snapshots, tmp_path, param):
    ours = vdisk("convert", "-l", param, with_snapshots, tmp_path / "ours.raw")
    theirs = qemu_img("convert", "-l", param, with_snapshots, tmp_path / "theirs.raw")
    assert same_result(ours, theirs)
    assert not (tmp_path / "ours.raw").exists()
