"""vdisk convert: content, sparseness, options and failure handling."""
import os
import pty
import shutil
import subprocess

import pytest

from conftest import MiB, allocated, make_sparse, same_result

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


def progress_output(tool, *args):
    """The bytes a convert -p prints into a pipe."""
    return subprocess.run([tool.path, "convert", "-p", *map(str, args)], capture_output=True,
                          check=True, timeout=60).stdout


@pytest.mark.parametrize("out_format", ["raw", "qcow2"])
def test_progress_into_a_pipe_like_qemu_img(vdisk, qemu_img, tmp_path, out_format):
    """qemu-img prints its progress into a pipe too, in steps of the data copied."""
    src = make_sparse(tmp_path / "src.img", 64 * MiB,
                      data=[(offset * MiB, MiB) for offset in (0, 9, 20, 40, 63)])
    ours = progress_output(vdisk, "-O", out_format, src, tmp_path / "ours")
    theirs = progress_output(qemu_img, "-O", out_format, src, tmp_path / "theirs")
    assert ours == theirs
    assert ours == b"".join(b"    (%.2f/100%%)\r" % p for p in (0, 20, 40, 60, 80, 100, 100)) + b"\n"


def test_progress_follows_the_data_not_the_offset(vdisk, tmp_path):
    """Half the data at the start, half at the end of a sparse image: 50% after the first."""
    src = make_sparse(tmp_path / "src.img", 256 * MiB, data=[(0, MiB), (255 * MiB, MiB)])
    steps = progress_output(vdisk, src, tmp_path / "out.img").split(b"\r")
    assert steps == [b"    (0.00/100%)", b"    (50.00/100%)", b"    (100.00/100%)",
                     b"    (100.00/100%)", b"\n"]


def test_progress_of_an_empty_image_like_qemu_img(vdisk, qemu_img, tmp_path):
    src = make_sparse(tmp_path / "src.img", 16 * MiB)
    assert progress_output(vdisk, src, tmp_path / "ours") == \
        progress_output(qemu_img, src, tmp_path / "theirs") == \
        b"    (0.00/100%)\r    (100.00/100%)\r\n"


def test_progress_on_a_terminal(vdisk, sparse_image, tmp_path):
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
    assert result.stderr == (f"vdisk: {fifo}: error while converting raw: {fifo}: not a regular "
                             "file or block device\n")
    assert fifo.is_fifo()


@pytest.fixture
def small_image(tmp_path):
    """Like sparse_image, in 4 MiB: enough for the format and option tests."""
    return make_sparse(tmp_path / "small.img", 4 * MiB,
                       data=[(0, 64 * 1024), (MiB + 512, 300 * 1024), (4 * MiB - 4096, 4096)],
                       zero_data=[(2 * MiB, MiB)])


@pytest.fixture
def qcow2_source(qemu_img, small_image, tmp_path):
    path = tmp_path / "src.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", small_image, path, check=0)
    return path


QCOW2_OPTIONS = ["", "cluster_size=4k", "compat=0.10", "preallocation=metadata",
                 "preallocation=full,cluster_size=512k", "lazy_refcounts=on,refcount_bits=1",
                 "extended_l2=on"]


@pytest.mark.parametrize("options", QCOW2_OPTIONS)
def test_to_qcow2_like_qemu_img(vdisk, qemu_img, small_image, tmp_path, options):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    extra = ["-o", options] if options else []
    vdisk("convert", "-O", "qcow2", *extra, small_image, ours, check=0)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *extra, small_image, theirs, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", small_image, ours, check=0)
    qemu_img("check", ours, check=0)
    infos = [qemu_img.json("info", "--output=json", path) for path in (ours, theirs)]
    for key in ("cluster-size", "format-specific", "virtual-size"):
        assert infos[0][key] == infos[1][key], key


def test_from_qcow2(vdisk, qemu_img, small_image, qcow2_source, tmp_path):
    out = tmp_path / "out.img"
    vdisk("convert", "-O", "raw", qcow2_source, out, check=0)
    assert out.read_bytes() == small_image.read_bytes()
    assert allocated(out) < 4 * MiB


def test_qcow2_to_qcow2(vdisk, qemu_img, qcow2_source, tmp_path):
    out = tmp_path / "out.qcow2"
    vdisk("convert", "-f", "qcow2", "-O", "qcow2", "-o", "cluster_size=16k", qcow2_source, out,
          check=0)
    qemu_img("compare", qcow2_source, out, check=0)
    qemu_img("check", out, check=0)


@pytest.mark.parametrize("mode", ["unsafe", "writeback", "off"])
def test_cache_modes(vdisk, small_image, tmp_path, mode):
    out = tmp_path / "out.img"
    vdisk("convert", "-t", mode, "-T", mode, small_image, out, check=0)
    assert out.read_bytes() == small_image.read_bytes()


@pytest.mark.parametrize("option, message", [("-t", "vdisk: Invalid cache option: fast\n"),
                                             ("-T", "vdisk: Invalid source cache option: fast\n")])
def test_bad_cache_mode(vdisk, qemu_img, small_image, tmp_path, option, message):
    result = vdisk("convert", option, "fast", small_image, tmp_path / "out.img", check=1)
    assert result.stderr == message
    assert qemu_img("convert", option, "fast", small_image, tmp_path / "q.img").returncode == 1
    assert not (tmp_path / "out.img").exists()


@pytest.fixture(scope="module")
def count_syncs():
    """Counts the fsync and fdatasync calls of a command, with strace where it works."""
    # LeakSanitizer cannot run under ptrace: in a sanitizer build, trace without it
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")

    def run(*args):
        return subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync",
                               *map(str, args)], capture_output=True, text=True, timeout=60, env=env)
    if not shutil.which("strace") or run("true").returncode != 0:
        pytest.skip("strace is not installed or may not trace here")

    def count(*args):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        return sum("sync(" in line for line in result.stderr.splitlines())
    return count


def test_destination_synced_only_when_asked(vdisk, count_syncs, qcow2_source, tmp_path):
    out = tmp_path / "out.qcow2"
    default = count_syncs(vdisk.path, "convert", "-O", "qcow2", qcow2_source, out)
    assert count_syncs(vdisk.path, "convert", "-t", "unsafe", "-O", "qcow2", qcow2_source,
                       out) == default
    assert count_syncs(vdisk.path, "convert", "-t", "writeback", "-O", "qcow2", qcow2_source,
                       out) > default


def test_qcow2_option_help(vdisk):
    result = vdisk("convert", "-O", "qcow2", "-o", "help", check=0)
    assert result.stdout.startswith("Supported qcow2 options:\n")
    for name in ("compat", "cluster_size", "preallocation", "backing_file", "backing_fmt"):
        assert f"\n  {name} " in result.stdout


def dirty_target(path, size):
    path.write_bytes(b"\xee" * size)
    return path


def test_existing_target_like_qemu_img(vdisk, qemu_img, sparse_image, tmp_path):
    """-n writes the data and zeroes over the rest; past the source's end stays as it was."""
    ours = dirty_target(tmp_path / "ours.img", SIZE + MiB)
    theirs = dirty_target(tmp_path / "theirs.img", SIZE + MiB)
    assert vdisk("convert", "-n", "-O", "raw", sparse_image, ours, check=0).stderr == ""
    qemu_img("convert", "-n", "-O", "raw", sparse_image, theirs, check=0)
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.read_bytes()[:SIZE] == sparse_image.read_bytes()


def test_existing_qcow2_target(vdisk, qemu_img, small_image, tmp_path):
    out = tmp_path / "out.qcow2"
    qemu_img("create", "-f", "qcow2", out, "4M", check=0)
    qemu_img("convert", "-O", "qcow2", "-n", tmp_path / "small.img", out, check=0)
    vdisk("convert", "-n", "-O", "qcow2", small_image, out, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", small_image, out, check=0)
    qemu_img("check", out, check=0)


def test_target_is_zero_like_qemu_img(vdisk, qemu_img, sparse_image, tmp_path):
    """The target is said to read as zeroes: the source's zero runs are not written."""
    ours = dirty_target(tmp_path / "ours.img", SIZE)
    theirs = dirty_target(tmp_path / "theirs.img", SIZE)
    vdisk("convert", "-n", "--target-is-zero", sparse_image, ours, check=0)
    qemu_img("convert", "-n", "--target-is-zero", sparse_image, theirs, check=0)
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.read_bytes()[6 * MiB:6 * MiB + 4] == b"\xee" * 4  # a hole of the source


@pytest.mark.parametrize("args", [
    ["-n"],                                 # the target is smaller than the source
    ["-n", "-o", "preallocation=off"],      # -o has no effect with -n
    ["--target-is-zero"],                   # without -n
    ["-n", "--target-is-zero", "-O", "raw", "-f", "raw"],
])
def test_existing_target_errors_like_qemu_img(vdisk, qemu_img, sparse_image, tmp_path, args):
    ours = dirty_target(tmp_path / "ours.img", MiB)
    theirs = dirty_target(tmp_path / "theirs.img", MiB)
    result = vdisk("convert", *args, sparse_image, ours, check=1)
    assert qemu_img("convert", *args, sparse_image, theirs).returncode == 1
    assert result.stderr.startswith("vdisk: ")
    assert ours.read_bytes() == b"\xee" * MiB


def test_existing_target_must_exist(vdisk, qemu_img, sparse_image, tmp_path):
    result = vdisk("convert", "-n", sparse_image, tmp_path / "missing.img", check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{tmp_path / 'missing.img'}': ")
    assert qemu_img("convert", "-n", sparse_image, tmp_path / "missing.img").returncode == 1
    assert not (tmp_path / "missing.img").exists()


@pytest.mark.parametrize("args", [["-m", "1"], ["-m", "16"], ["-W"], ["-m", "8", "-W"],
                                  ["-W", "-S", "0"]])
@pytest.mark.parametrize("out_format", ["raw", "qcow2"])
def test_parallel_and_out_of_order(vdisk, qemu_img, sparse_image, tmp_path, args, out_format):
    out = tmp_path / "out"
    vdisk("convert", *args, "-O", out_format, sparse_image, out, check=0)
    qemu_img("compare", "-f", "raw", "-F", out_format, sparse_image, out, check=0)
    if out_format == "qcow2":
        qemu_img("check", out, check=0)


@pytest.mark.parametrize("value", ["0", "17", "x", "1x"])
def test_bad_parallel_like_qemu_img(vdisk, qemu_img, sparse_image, tmp_path, value):
    assert same_result(vdisk("convert", "-m", value, sparse_image, tmp_path / "out.img"),
                       qemu_img("convert", "-m", value, sparse_image, tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()


def test_read_error_midway_removes_the_destination(vdisk, qemu_img, small_image, tmp_path):
    """A qcow2 source whose last data cluster was cut off its file (qemu-img reads
    zeroes there; libvdisk reports the short read)."""
    src = tmp_path / "cut.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", small_image, src, check=0)
    os.truncate(src, os.path.getsize(src) - 65536)
    result = vdisk("convert", "-O", "qcow2", src, tmp_path / "out.qcow2", check=1)
    assert result.stderr.startswith("vdisk: error while reading at byte ")
    assert str(src) in result.stderr
    assert not (tmp_path / "out.qcow2").exists()
