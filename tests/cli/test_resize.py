"""vdisk resize against qemu-img resize."""
import shutil

import pytest

from conftest import MiB, make_sparse

PROBE_WARNING = "WARNING: Image format was not specified"  # qemu-img's, for probed raw images


def both(vdisk, qemu_img, tmp_path, args, create):
    """Run the same resize on two equal images; returns (ours, theirs, our path, their path)."""
    ours_path, theirs_path = create(tmp_path / "ours"), tmp_path / "theirs"
    shutil.copy(ours_path, theirs_path)
    ours = vdisk("resize", *args(ours_path))
    theirs = qemu_img("resize", *args(theirs_path))
    return ours, theirs, ours_path, theirs_path


def raw_image(path):
    return make_sparse(path, 2 * MiB, data=[(0, 4096), (MiB + 512 * 1024, 4096)])


def qemu_error_lines(result):
    return [line.replace("qemu-img: ", "vdisk: ") for line in result.stderr.splitlines()
            if not line.startswith((PROBE_WARNING, " "))]


@pytest.mark.parametrize("args", [
    ["+1M"], ["3M"], ["2M"], ["--shrink", "-512k"], ["-f", "raw", "--shrink", "1.5M"],
    ["--", "-1k"], ["-q", "+1.5M"], ["-512k"], ["1M"], ["--shrink", "-2M"], ["0"], ["1.5"],
    ["-f", "qcow2", "1M"],
])
def test_raw_identical_to_qemu_img(vdisk, qemu_img, tmp_path, args):
    ours, theirs, ours_path, theirs_path = both(
        vdisk, qemu_img, tmp_path, lambda path: [path, *args], raw_image)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    assert ours.stdout in ("Image resized.\n", "")
    assert ours_path.read_bytes() == theirs_path.read_bytes()
    if "qcow2" not in args:  # the library words open errors its own way
        assert ours.stderr.splitlines() == qemu_error_lines(theirs)


def test_shrink_needs_the_option(vdisk, tmp_path):
    path = raw_image(tmp_path / "a.img")
    result = vdisk("resize", path, "1M", check=1)
    assert result.stderr == (
        "vdisk: Use the --shrink option to perform a shrink operation.\n"
        "vdisk: warning: Shrinking an image will delete all data beyond the shrunken image's end. "
        "Before performing such an operation, make sure there is no important data there.\n")
    assert path.stat().st_size == 2 * MiB


def qcow2_image(qemu_img, data=((0, 4096),)):
    """Makes a 2 MiB qcow2 image (written by qemu-img) with data in the given runs."""
    def create(path):
        raw = make_sparse(path.with_suffix(".raw"), 2 * MiB, data=data)
        qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, path, check=0)
        return path
    return create


@pytest.mark.parametrize("args", [["+1M"], ["3G"], ["--shrink", "1M"], ["--shrink", "1000000"]])
def test_qcow2_like_qemu_img(vdisk, qemu_img, tmp_path, args):
    ours, theirs, ours_path, theirs_path = both(
        vdisk, qemu_img, tmp_path, lambda path: [path, *args], qcow2_image(qemu_img))
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", ours_path, theirs_path, check=0)
    qemu_img("check", ours_path, check=0)


def test_qcow2_shrink_refuses_to_drop_data(vdisk, qemu_img, tmp_path):
    """A deliberate difference: qemu-img drops the data; libvdisk shrinks qcow2 only when
    nothing but zeroes would be cut off, and says where the data is."""
    path = qcow2_image(qemu_img, data=[(0, 4096), (3 * MiB // 2, 4096)])(tmp_path / "s.qcow2")
    before = path.read_bytes()
    result = vdisk("resize", path, "--shrink", "1M", check=1)
    assert "shrinking would discard data at offset 1572864" in result.stderr
    assert path.read_bytes() == before
    vdisk("resize", path, "--shrink", "1540k", check=0)  # only zeroes past this end
    assert vdisk.json("info", "--output=json", path)["virtual-size"] == 1540 * 1024
    qemu_img("check", path, check=0)


def test_overlay_grows_alone(vdisk, qemu_img, tmp_path):
    base = make_sparse(tmp_path / "base.raw", MiB, data=[(0, MiB)])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", tmp_path / "top.qcow2",
             check=0)
    vdisk("resize", tmp_path / "top.qcow2", "+1M", check=0)
    assert vdisk.json("info", "--output=json", tmp_path / "top.qcow2")["virtual-size"] == 2 * MiB
    assert base.stat().st_size == MiB


@pytest.mark.parametrize("args, message", [
    ([], "vdisk: Not enough arguments"),
    (["a.img"], "vdisk: Not enough arguments"),
    (["a.img", "b.img", "1M"], "vdisk: Expecting image file name and size"),
    (["--shrink", "1M"], "vdisk: Expecting image file name and size"),
    (["--bogus", "a.img", "1M"], "vdisk: unrecognized option '--bogus'"),
])
def test_usage_errors(vdisk, qemu_img, tmp_path, args, message):
    ours = vdisk("resize", *args, cwd=tmp_path)
    assert ours.returncode == qemu_img("resize", *args, cwd=tmp_path).returncode == 1
    assert ours.stderr == message + "\nTry 'vdisk --help' for more information\n"


def test_missing_file(vdisk, qemu_img, tmp_path):
    ours = vdisk("resize", tmp_path / "missing.img", "1M", check=1)
    assert ours.stderr.startswith(f"vdisk: Could not open '{tmp_path / 'missing.img'}': ")
    assert qemu_img("resize", tmp_path / "missing.img", "1M").returncode == 1


@pytest.mark.parametrize("args", [["+1M"], ["--shrink", "-1M"]])
def test_v2_image_with_snapshots_is_not_resized(vdisk, qemu_img, tmp_path, args):
    """qemu-img refuses: a v2 snapshot records no size of its own, so after a
    resize it would take the new one (and qemu cannot apply it any more)."""
    path = tmp_path / "v2.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", path, "2M", check=0)
    qemu_img("snapshot", "-c", "s1", path, check=0)
    before = path.read_bytes()
    result = vdisk("resize", path, *args, check=1)
    assert result.stderr == (f"vdisk: {path}: cannot resize a version 2 (compat=0.10) qcow2 "
                             "image that has snapshots\n")
    assert path.read_bytes() == before
    assert qemu_img("resize", path, *args, check=1).returncode == 1
    assert qemu_img("snapshot", "-a", "s1", path, check=0).returncode == 0


def test_v3_image_with_snapshots_shrinks_as_with_qemu_img(vdisk, qemu_img, qemu_io, tmp_path):
    """qemu-img shrinks a version 3 image with snapshots: each snapshot keeps
    its own size and L1 table, and applying it brings back the size and the
    data past the new end."""
    path = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=1.1", path, "8M", check=0)
    qemu_io("-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 6M 1M", path, check=0)
    qemu_img("convert", "-O", "raw", path, tmp_path / "before.raw", check=0)
    qemu_img("snapshot", "-c", "snap", path, check=0)
    # past the new end the active state reads as zeroes (our shrink cuts nothing else)
    qemu_io("-c", "write -P 0x33 0 64k", "-c", "write -z 6M 1M", path, check=0)
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(path, theirs)
    assert vdisk("resize", "--shrink", path, "4M", check=0).stdout == "Image resized.\n"
    qemu_img("resize", "--shrink", theirs, "4M", check=0)
    for image in (path, theirs):
        qemu_img("check", image, check=0)
        assert vdisk.json("info", "--output=json", image)["virtual-size"] == 4 * MiB
    vdisk("convert", "-O", "raw", "-l", "snapshot.name=snap", path, tmp_path / "snap.raw", check=0)
    assert (tmp_path / "snap.raw").read_bytes() == (tmp_path / "before.raw").read_bytes()
    # applied by qemu-img and by vdisk, the snapshot reads the data from before the shrink
    by_qemu, by_vdisk = tmp_path / "by_qemu.qcow2", tmp_path / "by_vdisk.qcow2"
    shutil.copy(path, by_qemu)
    shutil.copy(path, by_vdisk)
    qemu_img("snapshot", "-a", "snap", by_qemu, check=0)
    vdisk("snapshot", "-a", "snap", by_vdisk, check=0)
    for image in (by_qemu, by_vdisk):
        qemu_img("check", image, check=0)
        qemu_img("compare", "-f", "raw", "-F", "qcow2", tmp_path / "before.raw", image, check=0)
        vdisk("compare", "-f", "raw", "-F", "qcow2", tmp_path / "before.raw", image, check=0)
