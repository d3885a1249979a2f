"""Fixtures for the vdisk CLI tests: the tools and sparse test images.

The tests compare vdisk with qemu-img 7.2; meson passes the paths in the
environment (VDISK, QEMU_IMG, and QEMU_IO when it is installed).
"""
import contextlib
import hashlib
import json
import os
import subprocess

import pytest

MiB = 1 << 20


def _tool(variable):
    path = os.environ.get(variable)
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"{variable} does not name an executable (run through meson test)")
    return path


class Tool:
    """Runs one command line tool and captures its output as text."""

    def __init__(self, path):
        self.path = path

    def __call__(self, *args, cwd=None, check=None):
        result = subprocess.run([self.path, *map(str, args)], cwd=cwd, capture_output=True,
                                text=True, errors="surrogateescape", timeout=60)
        if check is not None:
            assert result.returncode == check, (args, result.returncode, result.stdout,
                                                result.stderr)
        return result

    def json(self, *args, **kwargs):
        return json.loads(self(*args, check=0, **kwargs).stdout)


@pytest.fixture(scope="session")
def vdisk():
    return Tool(_tool("VDISK"))


@pytest.fixture(scope="session")
def qemu_img():
    return Tool(_tool("QEMU_IMG"))


@pytest.fixture(scope="session")
def qemu_io():
    return Tool(_tool("QEMU_IO"))


def make_sparse(path, size, data=(), zero_data=()):
    """A sparse file of size bytes: random non-zero bytes in each (offset, length)
    of data (so tests may name the first data byte), explicitly written
    (allocated) zeroes in each of zero_data."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in data:
            f.seek(offset)
            f.write(bytes(b | 1 for b in os.urandom(length)))
        for offset, length in zero_data:
            f.seek(offset)
            f.write(bytes(length))
    return path


def same_result(ours, theirs):
    """Whether vdisk and qemu-img gave the same exit status and output, naming
    themselves ("vdisk: ...", "Try 'vdisk --help'") where qemu-img names itself."""
    return (ours.returncode, ours.stdout, ours.stderr) == \
        (theirs.returncode, theirs.stdout, theirs.stderr.replace("qemu-img", "vdisk"))


def allocated(path):
    """Bytes the file occupies on disk, once flushed: before writeback, a
    delayed-allocation file system may not count its extent blocks yet."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_by_qemu_io(qemu_io, path, fmt="qcow2", read_only=False):
    """An interactive qemu-io holding the image read-write (and so its QEMU
    write lock), as a running virtual machine would, or read-only, until the
    block ends."""
    mode = ["-r"] if read_only else []
    holder = subprocess.Popen([qemu_io.path, *mode, "-f", fmt, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        holder.stdin.write("read 0 512\n")
        holder.stdin.flush()
        answer = holder.stdout.readline()  # once a read is answered, the image is open
        assert "read 512/512 bytes" in answer, answer
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()
