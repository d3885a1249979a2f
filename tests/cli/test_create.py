"""vdisk create against qemu-img create."""
import os

import pytest

from conftest import MiB, allocated

SIZES = ["0", "512", "1b", "1B", "100k", "100K", "1M", "512M", "1G", "1.5G", "0.5k", "1.k",
         "1.0000001k", "1T", "0x10", " 5"]


@pytest.mark.parametrize("size", SIZES)
def test_size_and_message_match_qemu_img(vdisk, qemu_img, tmp_path, size):
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours = vdisk("create", "-f", "raw", "disk.img", size, cwd=tmp_path / "ours", check=0)
    theirs = qemu_img("create", "-f", "raw", "disk.img", size, cwd=tmp_path / "theirs", check=0)
    assert ours.stdout == theirs.stdout  # "Formatting 'disk.img', fmt=raw size=N"
    assert ours.stderr == ""
    size = int(ours.stdout.rsplit("size=", 1)[1])
    sectors = -(-size // 512) * 512  # both round raw files up to whole sectors
    assert os.path.getsize(tmp_path / "ours" / "disk.img") == sectors
    assert os.path.getsize(tmp_path / "theirs" / "disk.img") == sectors


def test_default_format_is_raw(vdisk, tmp_path):
    result = vdisk("create", tmp_path / "a.img", "1M", check=0)
    assert result.stdout == f"Formatting '{tmp_path / 'a.img'}', fmt=raw size=1048576\n"
    assert vdisk.json("info", "--output=json", tmp_path / "a.img")["format"] == "raw"


def test_quiet(vdisk, tmp_path):
    assert vdisk("create", "-q", tmp_path / "a.img", "1M", check=0).stdout == ""
    assert os.path.getsize(tmp_path / "a.img") == MiB


@pytest.mark.parametrize("size", ["abc", "1.5", "1.5B", "10KiB", "", "1k ", "0x1.0", "k",
                                  "1.5e3k"])
def test_bad_size(vdisk, qemu_img, tmp_path, size):
    ours = vdisk("create", tmp_path / "a.img", size, check=1)
    assert ours.stderr == (
        "vdisk: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
        "vdisk: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n")
    assert qemu_img("create", tmp_path / "b.img", size).returncode == 1
    assert not (tmp_path / "a.img").exists()


def test_hex_takes_no_suffix(vdisk, tmp_path):
    # qemu-img 7.2 still accepts "0x1k" with a deprecation warning; later versions refuse it
    result = vdisk("create", tmp_path / "a.img", "0x1k", check=1)
    assert result.stderr.startswith("vdisk: Invalid image size specified.")


@pytest.mark.parametrize("size", ["8E", "16E", "99999999999999999999"])
def test_size_out_of_range(vdisk, qemu_img, tmp_path, size):
    ours = vdisk("create", tmp_path / "a.img", size, check=1)
    assert ours.stderr == ("vdisk: Invalid image size specified. Must be between 0 and "
                           "9223372036854775807.\n")
    assert qemu_img("create", tmp_path / "b.img", size).returncode == 1


@pytest.mark.parametrize("mode", ["off", "falloc", "full"])
def test_preallocation(vdisk, qemu_img, tmp_path, mode):
    size = 4 * MiB
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    result = vdisk("create", "-o", f"preallocation={mode}", ours, size, check=0)
    assert result.stdout.endswith(f"size={size} preallocation={mode}\n")
    qemu_img("create", "-f", "raw", "-o", f"preallocation={mode}", theirs, size, check=0)
    assert os.path.getsize(ours) == size
    if mode == "off":
        # qemu-img writes the first 4 KiB; we leave the file entirely sparse
        assert allocated(ours) <= allocated(theirs)
    else:
        assert allocated(ours) >= size
        assert allocated(theirs) >= size
    assert ours.read_bytes() == bytes(size)


def test_option_help_lists_preallocation(vdisk):
    result = vdisk("create", "-f", "raw", "-o", "help", check=0)
    assert result.stdout.startswith("Supported raw options:\n")
    assert "  preallocation " in result.stdout


def test_unknown_option_name(vdisk, tmp_path):
    result = vdisk("create", "-o", "bogus=1", tmp_path / "a.img", "1M", check=1)
    assert result.stderr.startswith(f"vdisk: {tmp_path / 'a.img'}: ")
    assert "'bogus'" in result.stderr
    assert not (tmp_path / "a.img").exists()


def test_bad_option_value(vdisk, tmp_path):
    result = vdisk("create", "-o", "preallocation=sometimes", tmp_path / "a.img", "1M", check=1)
    assert result.stderr.startswith(f"vdisk: {tmp_path / 'a.img'}: ")
    assert "sometimes" in result.stderr


def test_unknown_format(vdisk, tmp_path):
    result = vdisk("create", "-f", "nosuchformat", tmp_path / "a.img", "1M", check=1)
    assert result.stderr == f"vdisk: {tmp_path / 'a.img'}: Unknown file format 'nosuchformat'\n"
    assert result.stdout == ""
    assert not (tmp_path / "a.img").exists()


def test_missing_size(vdisk, tmp_path):
    result = vdisk("create", tmp_path / "a.img", check=1)
    assert result.stderr == f"vdisk: {tmp_path / 'a.img'}: Image creation needs a size parameter\n"


def test_missing_directory(vdisk, tmp_path):
    path = tmp_path / "no" / "a.img"
    result = vdisk("create", path, "1M", check=1)
    assert result.stderr.startswith(f"vdisk: {path}: ")
    assert "No such file or directory" in result.stderr


def test_overwrites_existing_file(vdisk, tmp_path):
    path = tmp_path / "a.img"
    path.write_bytes(b"x" * 3 * MiB)
    vdisk("create", "-q", path, "1M", check=0)
    assert path.read_bytes() == bytes(MiB)


def test_refuses_special_files(vdisk, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = vdisk("create", fifo, "1M", check=1)
    assert result.stderr == (f"vdisk: {fifo}: not a regular file; images are created in "
                             "regular files only\n")
    assert fifo.is_fifo()  # still there


@pytest.mark.parametrize("options", [
    [], ["-o", "cluster_size=4k"], ["-o", "compat=0.10,cluster_size=512"], ["-o", "refcount_bits=8"],
    ["-o", "preallocation=metadata,lazy_refcounts=on"], ["-o", "extended_l2=on", "-o", "compat=1.1"],
    ["-o", "data_file=x.data,data_file_raw=on"],
])
def test_qcow2_formatting_line_and_image_like_qemu_img(vdisk, qemu_img, tmp_path, options):
    for name in ("ours", "theirs"):
        (tmp_path / name).mkdir()
    ours = vdisk("create", "-f", "qcow2", *options, "x.qcow2", "3M", cwd=tmp_path / "ours")
    theirs = qemu_img("create", "-f", "qcow2", *options, "x.qcow2", "3M", cwd=tmp_path / "theirs")
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, theirs.stdout, "")
    infos = [qemu_img.json("info", "--output=json", "x.qcow2", cwd=tmp_path / name)
             for name in ("ours", "theirs")]
    for info in infos:
        del info["actual-size"]
    assert infos[0] == infos[1]


def test_qcow2_option_help(vdisk):
    result = vdisk("create", "-f", "qcow2", "-o", "help", check=0)
    assert result.stdout.startswith("Supported qcow2 options:\n")
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert {"compat", "cluster_size", "refcount_bits", "lazy_refcounts", "preallocation",
            "extended_l2", "compression_type", "data_file", "data_file_raw", "backing_file",
            "backing_fmt"} <= set(names)
    assert vdisk("create", "-f", "qcow2", "-o", "?", check=0).stdout == result.stdout
