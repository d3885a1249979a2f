"""Cache modes (-t, -T): qemu-img's names and wording, O_DIRECT really used, results
that qemu-img accepts, and a file system that refuses O_DIRECT."""
import os
import shutil
import subprocess

import pytest

from conftest import MiB

SIZE = 4 * MiB


@pytest.fixture
def image(vdisk, qemu_img, tmp_path):
    """A qcow2 image with 512-byte clusters (the unaligned case for O_DIRECT),
    written at unaligned offsets."""
    path = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path, SIZE, check=0)
    with open(path, "r+b"):
        pass
    raw = tmp_path / "model.raw"
    data = bytearray(SIZE)
    for off, length in [(1, 5000), (MiB + 333, 70000), (SIZE - 1000, 1000)]:
        data[off:off + length] = os.urandom(length)
    raw.write_bytes(bytes(data))
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512", raw, path,
             check=0)
    return path, raw


def traced(argv, tmp_path, calls):
    """Run argv under strace -e trace=calls; the lines of its log, or None without
    strace."""
    strace = shutil.which("strace")
    if not strace:
        return None
    log = tmp_path / "strace.log"
    # LeakSanitizer cannot run under ptrace: in a sanitizer build, trace without it
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
    subprocess.run([strace, "-f", "-o", str(log), "-e", f"trace={calls}", *map(str, argv)],
                   check=True, capture_output=True, timeout=60, env=env)
    return log.read_text().splitlines()


def traced_direct_opens(argv, tmp_path):
    """The number of files argv switched to O_DIRECT, or None without strace."""
    lines = traced(argv, tmp_path, "fcntl")
    return None if lines is None else sum("F_SETFL" in line and "O_DIRECT" in line
                                          for line in lines)


def test_writethrough_syncs_every_write(vdisk, image, tmp_path):
    src, raw = image
    syncs = {}
    for mode in ("writeback", "writethrough"):
        out = tmp_path / f"{mode}.raw"
        lines = traced([vdisk.path, "convert", "-t", mode, "-O", "raw", src, out], tmp_path,
                       "fdatasync,fsync")
        if lines is None:
            pytest.skip("strace is not installed")
        syncs[mode] = sum("sync(" in line for line in lines)
        assert out.read_bytes() == raw.read_bytes()
    # writeback syncs once at the end; writethrough after each of the three data runs at least
    assert syncs["writeback"] <= 2 and syncs["writethrough"] >= syncs["writeback"] + 3


def test_convert_none_both_sides(vdisk, qemu_img, image, tmp_path):
    src, raw = image
    out = tmp_path / "out.qcow2"
    vdisk("convert", "-t", "none", "-T", "none", "-O", "qcow2", "-o", "cluster_size=512",
          src, out, check=0)
    qemu_img("check", "-q", out, check=0)
    qemu_img("compare", "-q", "-F", "raw", out, raw, check=0)
    # the source and the destination, each switched to O_DIRECT once
    again = tmp_path / "again.qcow2"
    count = traced_direct_opens([vdisk.path, "convert", "-t", "none", "-T", "none", "-O",
                                 "qcow2", src, again], tmp_path)
    if count is not None:
        assert count == 2
    assert traced_direct_opens([vdisk.path, "convert", "-O", "qcow2", src,
                                tmp_path / "plain.qcow2"], tmp_path) in (0, None)


@pytest.mark.parametrize("mode", ["writethrough", "directsync", "writeback", "unsafe", "off"])
def test_convert_other_modes(vdisk, qemu_img, image, tmp_path, mode):
    src, raw = image
    out = tmp_path / "out.raw"
    vdisk("convert", "-t", mode, "-O", "raw", src, out, check=0)
    assert out.read_bytes() == raw.read_bytes()


def test_commands_take_cache_none(vdisk, qemu_img, image, tmp_path):
    src, raw = image
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", src, "-F", "qcow2", top, check=0)
    vdisk("check", "-T", "none", top, check=0)
    vdisk("compare", "-T", "none", top, raw, check=0)
    vdisk("bench", "-q", "-t", "none", "-w", "-c", "50", "-s", "3000", "-o", "513", top,
          check=0)
    vdisk("amend", "-t", "none", "-o", "lazy_refcounts=on", top, check=0)
    vdisk("commit", "-t", "directsync", "-d", top, check=0)
    qemu_img("check", "-q", src, check=0)
    vdisk("rebase", "-t", "none", "-T", "none", "-b", "", top, check=0)
    qemu_img("check", "-q", top, check=0)
    qemu_img("compare", "-q", "-f", "qcow2", "-F", "qcow2", top, src, check=0)


@pytest.mark.parametrize("argv", [
    ["convert", "-t", "bogus", "-O", "raw", "{src}", "{out}"],
    ["convert", "-T", "bogus", "-O", "raw", "{src}", "{out}"],
    ["check", "-T", "bogus", "{src}"],
    ["compare", "-T", "bogus", "{src}", "{src}"],
    ["commit", "-t", "bogus", "{src}"],
    ["rebase", "-t", "bogus", "-u", "-b", "", "{src}"],
    ["rebase", "-T", "bogus", "-u", "-b", "", "{src}"],
    ["amend", "-t", "bogus", "-o", "lazy_refcounts=on", "{src}"],
])
def test_bad_mode_names_as_qemu_img(vdisk, qemu_img, image, tmp_path, argv):
    src, _ = image
    args = [a.format(src=src, out=tmp_path / "out.raw") for a in argv]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert ours.returncode == theirs.returncode != 0
    assert ours.stderr.replace("vdisk:", "qemu-img:") == theirs.stderr


def test_refused_on_a_file_system_without_o_direct(vdisk):
    shm = "/dev/shm"
    if not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    probe = os.path.join(shm, f"vdtest-direct-{os.getpid()}")
    open(probe, "w").close()
    try:
        fd = os.open(probe, os.O_RDWR | os.O_DIRECT)
        os.close(fd)
        pytest.skip("tmpfs takes O_DIRECT on this kernel (Linux 6.6 and later): "
                    "no refusal to see")
    except OSError:
        pass
    finally:
        os.unlink(probe)
    path = os.path.join(shm, f"vdtest-refuse-{os.getpid()}.raw")
    try:
        vdisk("create", "-q", "-f", "raw", path, "1M", check=0)
        result = vdisk("check", "-T", "none", "-f", "raw", path)
        assert result.returncode != 0
        assert path in result.stderr and "O_DIRECT" in result.stderr
    finally:
        os.unlink(path)
