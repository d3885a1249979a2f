"""vdisk --safe: every command that opens images refuses a file outside the image's
directory (here a backing file), says so, exits 1 and changes nothing; inside the
directory it works as without the flag.

Layout: img/escaping.qcow2 -> ../out/base.qcow2 (outside), img/fine.qcow2 ->
inside.qcow2, and img/link.qcow2, a symbolic link to ../out/base.qcow2.
"""
import hashlib

import pytest

IMAGE = object()  # where the image goes in a command line

COMMANDS = {
    "info": ["info", "--backing-chain", IMAGE],
    "check": ["check", IMAGE],
    "map": ["map", IMAGE],
    "convert": ["convert", "-O", "raw", IMAGE, "copy.raw"],
    "snapshot-list": ["snapshot", "-l", IMAGE],
    "snapshot-create": ["snapshot", "-c", "s1", IMAGE],
    "resize": ["resize", IMAGE, "2M"],
    "commit": ["commit", IMAGE],
    "rebase": ["rebase", "-b", "inside.qcow2", "-F", "qcow2", IMAGE],
}

REFUSAL = "outside the image's directory"


@pytest.fixture
def img(tmp_path, qemu_img):
    img, out = tmp_path / "img", tmp_path / "out"
    img.mkdir()
    out.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", out / "base.qcow2", "1M", check=0)
    qemu_img("create", "-q", "-f", "qcow2", img / "inside.qcow2", "1M", check=0)
    for name, backing in (("escaping.qcow2", "../out/base.qcow2"), ("fine.qcow2", "inside.qcow2")):
        qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", name, cwd=img,
                 check=0)
    (img / "link.qcow2").symlink_to("../out/base.qcow2")
    return img


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(name, image):
    args = COMMANDS[name]
    return [args[0], "--safe", *(image if a is IMAGE else a for a in args[1:])]


@pytest.mark.parametrize("name", COMMANDS)
def test_safe_refuses_a_backing_file_outside(vdisk, img, name):
    outside = img.parent / "out" / "base.qcow2"
    before = digest(outside), digest(img / "escaping.qcow2")
    result = vdisk(*command(name, "escaping.qcow2"), cwd=img)
    assert result.returncode == 1, result
    assert REFUSAL in result.stderr and "../out/base.qcow2" in result.stderr
    assert result.stderr.startswith("vdisk: ")
    assert (digest(outside), digest(img / "escaping.qcow2")) == before
    assert not (img / "copy.raw").exists()


@pytest.mark.parametrize("name", COMMANDS)
def test_safe_works_inside_the_directory(vdisk, img, name):
    vdisk(*command(name, "fine.qcow2"), cwd=img, check=0)


def test_without_safe_the_backing_file_outside_is_read(vdisk, img):
    """The control: qemu-img's default, which --safe changes."""
    vdisk("check", "escaping.qcow2", cwd=img, check=0)


@pytest.mark.parametrize("backing", ["../out/base.qcow2", "link.qcow2"])
def test_safe_rebase_refuses_a_new_backing_file_outside(vdisk, qemu_img, img, backing):
    before = digest(img / "fine.qcow2")
    result = vdisk("rebase", "--safe", "-b", backing, "-F", "qcow2", "fine.qcow2", cwd=img)
    assert result.returncode == 1 and "outside the image's directory" in result.stderr
    assert digest(img / "fine.qcow2") == before
    vdisk("rebase", "-b", backing, "-F", "qcow2", "fine.qcow2", cwd=img, check=0)


def test_safe_rebase_needs_the_new_backing_format(vdisk, img):
    result = vdisk("rebase", "--safe", "-b", "inside.qcow2", "fine.qcow2", cwd=img)
    assert result.returncode == 1 and "give the format" in result.stderr


@pytest.mark.parametrize("backing", ["../out/base.qcow2", "link.qcow2"])
def test_safe_create_refuses_a_backing_file_outside(vdisk, img, backing):
    result = vdisk("create", "--safe", "-f", "qcow2", "-b", backing, "-F", "qcow2", "new.qcow2",
                   cwd=img)
    assert result.returncode == 1 and REFUSAL in result.stderr
    assert not (img / "new.qcow2").exists()
    vdisk("create", "--safe", "-q", "-f", "qcow2", "-b", "inside.qcow2", "-F", "qcow2",
          "new.qcow2", cwd=img, check=0)


def test_safe_convert_refuses_a_destination_backing_file_outside(vdisk, img):
    result = vdisk("convert", "--safe", "-O", "qcow2", "-B", "../out/base.qcow2", "-F", "qcow2",
                   "fine.qcow2", "new.qcow2", cwd=img)
    assert result.returncode == 1 and REFUSAL in result.stderr
    assert not (img / "new.qcow2").exists()


@pytest.mark.parametrize("name", ["info", "check", "convert", "rebase", "create", "commit"])
def test_help_lists_safe(vdisk, name):
    assert "--safe" in vdisk("help", name, check=0).stdout
