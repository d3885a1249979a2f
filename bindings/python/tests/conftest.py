"""Shared fixtures. Tests that need the C library use the ``library`` fixture:
they are skipped when it cannot be found, unless LIBVDISK_LIBRARY names it
(as under ``meson test``), in which case a load failure is an error."""

import os
import random
import shutil
import subprocess
import sys

import pytest

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACKAGE_ROOT not in sys.path:
    sys.path.insert(0, PACKAGE_ROOT)

from libvdisk import _lib  # noqa: E402

MIB = 1 << 20
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"
needs_qemu_img = pytest.mark.skipif(not os.access(QEMU_IMG, os.X_OK), reason="no qemu-img")
needs_qemu_io = pytest.mark.skipif(not os.access(QEMU_IO, os.X_OK), reason="no qemu-io")


def qemu_img(*args, cwd=None):
    """Run qemu-img; the CompletedProcess, with text output."""
    return subprocess.run([QEMU_IMG, *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=60, cwd=cwd)


def qemu_io(*args, cwd=None):
    """Run qemu-io, failing the test if it fails."""
    result = subprocess.run([QEMU_IO, *map(str, args)], capture_output=True, text=True,
                            check=False, timeout=60, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def pattern(length, seed=0):
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(length)


@pytest.fixture(scope="session")
def library():
    """The loaded libvdisk (skips the test if there is none to load)."""
    try:
        return _lib.lib()
    except ImportError as exc:
        if os.environ.get(_lib.ENV_VAR):
            raise
        pytest.skip(str(exc))


@pytest.fixture
def patterned_raw(tmp_path, library):
    """A 4 MiB raw file, written with plain Python, and its contents."""
    data = pattern(4 * MIB, seed=1)
    path = tmp_path / "pattern.raw"
    path.write_bytes(data)
    return path, data
