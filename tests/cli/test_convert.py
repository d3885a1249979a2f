"""vdisk convert: content, sparseness, options and failure handling."""
import os
import pty
import subprocess

import pytest

from conftest import MiB, allocated, make_sparse

SIZE = 16 * MiB


@pytest.fixture
def sparse_image(tmp_path):
    """Data runs of several sizes, holes, and written (allocated) zeroes."""
    return make_sparse(tmp_path / "src.img", SIZE,
                       data=[(0, 64 * 1024), (MiB + 512, 3 * MiB), (9 * MiB, 4096),
                             (SIZE - 4096, 4096)],
                       zero_data=[(12 * MiB, 2 * MiB)])


def test_identical_and_as_sparse_as_qemu_img(vdisk, qemu_img, sparse_image, tmp_path):
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    result = vdisk("convert", "-O", "raw", sparse_image, ours, check=0)
    assert result.stdout == result.stderr == ""
    qemu_img("convert", "-O", "raw", sparse_image, theirs, check=0)
    assert ours.read_bytes() == sparse_image.read_bytes()
    qemu_img("compare", sparse_image, ours, check=0)
    assert allocated(ours) <= allocated(theirs)
    # the written zeroes of the source became a hole
    assert allocated(ours) < allocated(sparse_image)


def test_map_of_result_has_the_same_data(vdisk, qemu_img, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    vdisk("convert", sparse_image, out, check=0)
    data_runs = [(e["start"], e["length"])
                 for e in vdisk.json("map", "--output=json", out) if e["data"]]
    assert data_runs == [(0, 64 * 1024), (MiB, 3 * MiB + 4096), (9 * MiB, 4096),
                         (SIZE - 4096, 4096)]


def test_zero_blocks_inside_data_are_skipped(vdisk, tmp_path):
    block = os.urandom(4096)
    src = tmp_path / "src.img"
    src.write_bytes(block + bytes(8192) + block + bytes(4096))  # all allocated
    out = tmp_path / "out.img"
    vdisk("convert", src, out, check=0)
    assert out.read_bytes() == src.read_bytes()
    assert allocated(out) == 2 * 4096


def test_sparse_size_option(vdisk, tmp_path):
    block = os.urandom(4096)
    src = tmp_path / "src.img"
    src.write_bytes(block + bytes(64 * 1024) + block)
    out = tmp_path / "out.img"
    vdisk("convert", "-S", "64k", src, out, check=0)
    assert out.read_bytes() == src.read_bytes()
    # the zero run starts and ends inside 64 KiB blocks: nothing is skipped
    assert allocated(out) == len(src.read_bytes())


def test_sparse_size_zero_allocates_everything(vdisk, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    vdisk("convert", "-S", "0", sparse_image, out, check=0)
    assert out.read_bytes() == sparse_image.read_bytes()
    assert allocated(out) >= SIZE


@pytest.mark.parametrize("value", ["100", "1k1", "32M", "abc"])
def test_bad_sparse_size(vdisk, qemu_img, sparse_image, tmp_path, value):
    result = vdisk("convert", "-S", value, sparse_image, tmp_path / "out.img", check=1)
    assert result.stderr.startswith("vdisk: Invalid ")
    assert qemu_img("convert", "-S", value, sparse_image, tmp_path / "q.img").returncode == 1
    assert not (tmp_path / "out.img").exists()


def test_preallocation_option(vdisk, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    vdisk("convert", "-o", "preallocation=falloc", sparse_image, out, check=0)
    assert allocated(out) >= SIZE
    assert out.read_bytes() == sparse_image.read_bytes()


def test_formats_and_force_share(vdisk, qemu_img, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    vdisk("convert", "-U", "-f", "raw", "-O", "raw", sparse_image, out, check=0)
    qemu_img("compare", "-f", "raw", "-F", "raw", sparse_image, out, check=0)


def test_empty_image(vdisk, tmp_path):
    src = make_sparse(tmp_path / "src.img", 0)
    vdisk("convert", src, tmp_path / "out.img", check=0)
    assert (tmp_path / "out.img").stat().st_size == 0


def test_overwrites_existing_destination(vdisk, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    out.write_bytes(b"x" * (SIZE + MiB))
    vdisk("convert", sparse_image, out, check=0)
    assert out.read_bytes() == sparse_image.read_bytes()


def test_missing_source_creates_nothing(vdisk, tmp_path):
    result = vdisk("convert", tmp_path / "missing.img", tmp_path / "out.img", check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{tmp_path / 'missing.img'}': ")
    assert not (tmp_path / "out.img").exists()


def test_unknown_output_format(vdisk, sparse_image, tmp_path):
    result = vdisk("convert", "-O", "nosuchformat", sparse_image, tmp_path / "out.img", check=1)
    assert result.stderr == "vdisk: Unknown file format 'nosuchformat'\n"
    assert not (tmp_path / "out.img").exists()


def test_failed_create_keeps_existing_destination(vdisk, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    result = vdisk("convert", "-o", "bogus=1", sparse_image, out, check=1)
    assert result.stderr.startswith(f"vdisk: {out}: error while converting raw: ")
    assert out.read_bytes() == b"precious"


def test_failed_create_leaves_nothing(vdisk, sparse_image, tmp_path):
    out = tmp_path / "out.img"
    vdisk("convert", "-o", "preallocation=bogus", sparse_image, out, check=1)
    assert not out.exists()


def test_destination_is_source(vdisk, sparse_image):
    before = sparse_image.read_bytes()
    result = vdisk("convert", sparse_image, sparse_image, check=1)
    assert result.stderr.startswith(f"vdisk: {sparse_image}: ")
    assert sparse_image.read_bytes() == before


def test_option_help(vdisk):
    result = vdisk("convert", "-O", "raw", "-o", "help", check=0)
    assert result.stdout.startswith("Supported raw options:\n")


def test_progress_only_on_a_terminal(vdisk, sparse_image, tmp_path):
    result = vdisk("convert", "-p", sparse_image, tmp_path / "piped.img", check=0)
    assert result.stdout == ""  # not a terminal: no progress

    controller, terminal = pty.openpty()
    process = subprocess.Popen([vdisk.path, "convert", "-p", sparse_image, tmp_path / "tty.img"],
                               stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    assert output.startswith(b"    (0.00/100%)\r")
    assert output.endswith(b"    (100.00/100%)\r\r\n")  # the terminal turns \n into \r\n
    assert (tmp_path / "tty.img").read_bytes() == sparse_image.read_bytes()


def test_quiet_suppresses_progress(vdisk, sparse_image, tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen([vdisk.path, "convert", "-p", "-q", sparse_image,
                                tmp_path / "out.img"], stdout=terminal)
    os.close(terminal)
    assert process.wait(timeout=60) == 0
    os.set_blocking(controller, False)
    try:
        output = os.read(controller, 4096)
    except (BlockingIOError, OSError):
        output = b""
    os.close(controller)
    assert output == b""


def test_refuses_special_file_destination(vdisk, sparse_image, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = vdisk("convert", sparse_image, fifo, check=1)
    assert result.stderr.startswith(f"vdisk: {fifo}: not a regular file")
    assert fifo.is_fifo()
