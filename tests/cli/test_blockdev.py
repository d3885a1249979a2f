"""vdisk on files that are not regular files: a block device is a raw image of
the device's size (compared with qemu-img on a loop device, where one can be
set up), and every other special file is refused, never read as empty."""
import json
import os
import shutil
import socket
import subprocess

import pytest

from conftest import MiB, make_sparse

DEVICE_SIZE = 8 * MiB


@pytest.fixture
def loop_device(tmp_path):
    """A loop device over an 8 MiB file with data from 1 to 4 MiB; skips where
    none can be set up (not root, no /dev/loop-control, no device nodes)."""
    losetup = shutil.which("losetup") or "/usr/sbin/losetup"
    backing = make_sparse(tmp_path / "device.img", DEVICE_SIZE, data=[(MiB, 3 * MiB)])
    try:
        attached = subprocess.run([losetup, "-f", "--show", str(backing)], capture_output=True,
                                  text=True, timeout=30)
    except OSError as e:
        pytest.skip(f"no loop device can be set up here ({losetup}: {e})")
    if attached.returncode != 0:
        pytest.skip(f"no loop device can be set up here (losetup -f: {attached.stderr.strip()})")
    device = attached.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run([losetup, "-d", device], check=True, timeout=30)


def test_info_shows_the_device_size(vdisk, qemu_img, loop_device):
    ours = vdisk.json("info", "--output=json", loop_device)
    theirs = qemu_img.json("info", "--output=json", loop_device)
    assert ours["virtual-size"] == DEVICE_SIZE
    # qemu-img reports the device node's st_blocks (0); a device occupies all of itself
    assert ours.pop("actual-size") == DEVICE_SIZE
    theirs.pop("actual-size")
    assert ours == theirs
    human = vdisk("info", loop_device, check=0).stdout
    assert "virtual size: 8 MiB (8388608 bytes)\n" in human
    assert "disk size: 8 MiB\n" in human


@pytest.mark.parametrize("output", ["human", "json"])
def test_map_is_one_data_run_as_in_qemu_img(vdisk, qemu_img, loop_device, output):
    ours = vdisk("map", f"--output={output}", loop_device, check=0).stdout
    assert ours == qemu_img("map", f"--output={output}", loop_device, check=0).stdout
    if output == "json":
        assert [(e["start"], e["length"], e["data"]) for e in json.loads(ours)] == \
            [(0, DEVICE_SIZE, True)]


def test_check_is_not_supported_as_for_raw(vdisk, qemu_img, loop_device):
    ours = vdisk("check", loop_device, check=63)
    theirs = qemu_img("check", loop_device, check=63)
    assert ours.stderr == theirs.stderr.replace("qemu-img", "vdisk")
    assert ours.stderr == "vdisk: This image format does not support checks\n"


def test_convert_copies_the_whole_device(vdisk, loop_device, tmp_path):
    for fmt in ("raw", "qcow2"):
        out = tmp_path / f"copy.{fmt}"
        vdisk("convert", "-O", fmt, loop_device, out, check=0)
        copy = tmp_path / "copy-back.raw"
        vdisk("convert", "-f", fmt, "-O", "raw", out, copy, check=0)
        assert copy.read_bytes() == (tmp_path / "device.img").read_bytes()


def test_overlay_reads_through_the_device(vdisk, qemu_img, loop_device, tmp_path):
    top = tmp_path / "top.qcow2"
    vdisk("create", "-q", "-f", "qcow2", "-b", loop_device, "-F", "raw", top, check=0)
    assert vdisk.json("info", "--output=json", top)["virtual-size"] == DEVICE_SIZE
    assert "Images are identical." in qemu_img("compare", top, loop_device, check=0).stdout
    flat = tmp_path / "flat.raw"
    vdisk("convert", "-O", "raw", top, flat, check=0)
    assert flat.read_bytes() == (tmp_path / "device.img").read_bytes()
    chain = vdisk("map", top, check=0).stdout
    assert chain == qemu_img("map", top, check=0).stdout
    assert loop_device in chain


# ---------------------------------------------------------------- special files


def special_files(tmp_path):
    """(path, what it is) of every kind of file that is not an image."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return [("/dev/null", "a character device"), ("/dev/zero", "a character device"),
            (str(fifo), "a FIFO"), (str(tmp_path), "a directory")]


@pytest.mark.parametrize("command", [["info"], ["map"], ["check"], ["info", "-f", "raw"]])
def test_special_files_are_refused(vdisk, tmp_path, command):
    for path, kind in special_files(tmp_path):
        result = vdisk(*command, path, check=1)
        assert result.stdout == ""
        assert result.stderr == (f"vdisk: Could not open '{path}': Could not open '{path}': it "
                                 f"is {kind}; an image must be a regular file or a block device, "
                                 "whose size can be known\n")


def test_a_socket_is_refused(vdisk, tmp_path):
    path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        result = vdisk("info", path, check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{path}': ")


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/null"])
def test_convert_from_a_character_device_fails_and_writes_nothing(vdisk, tmp_path, source):
    out = tmp_path / "out.raw"
    result = vdisk("convert", "-O", "raw", source, out, check=1)
    assert f"'{source}': it is a character device" in result.stderr
    assert not out.exists()
