"""Helpers for the VMDK suite: QEMU's tools, vdisk, patterns and raw models.

meson passes LIBVDISK_LIBRARY, PYTHONPATH (bindings/python), QEMU_IMG,
QEMU_IO, VDISK and VDISK_TESTDATA in the environment.
"""
import os
import shutil
import subprocess

import pytest

QEMU_IMG = os.environ.get("QEMU_IMG") or shutil.which("qemu-img") or "qemu-img"
QEMU_IO = os.environ.get("QEMU_IO") or shutil.which("qemu-io") or "qemu-io"
VDISK = os.environ.get("VDISK") or shutil.which("vdisk") or "vdisk"
MiB = 1 << 20

SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]

# (offset, length, byte) writes that cover grain and table boundaries, unaligned ones too
PATTERN = [(0, 512, 0x11), (65536 - 100, 300, 0x22), (1 * MiB, 3 * MiB, 0x5A),
           (32 * MiB - 4096, 8192, 0x33), (63 * MiB + 1000, 5000, 0x44)]


# a sanitizer build preloads ASan for the Python that loads libvdisk; the tools run
# without it (qemu-img hangs with it, vdisk links it itself)
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def run(*args, check=True, cwd=None, timeout=300):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout, env=TOOL_ENV)
    if check and r.returncode:
        raise AssertionError(f"{args} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r


def qemu_io(path, fmt, *cmds):
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    out = run(*args, path)
    assert "error" not in out.stdout.lower() and "failed" not in out.stdout.lower(), out.stdout
    return out


def write_pattern_qemu(path, fmt, pattern=PATTERN):
    qemu_io(path, fmt, *[f"write -P {b} {off} {n}" for off, n, b in pattern])


def raw_model(path, size, pattern=PATTERN):
    """A raw file holding what pattern writes onto zeroes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n, b in pattern:
            f.seek(off)
            f.write(bytes([b]) * n)
    return path


def compare(a, b, fa="raw", fb="vmdk"):
    r = run(QEMU_IMG, "compare", "-f", fa, "-F", fb, a, b, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Images are identical" in r.stdout


def qemu_check(path):
    r = run(QEMU_IMG, "check", "-f", "vmdk", path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No errors were found" in r.stdout


def vmdkinfo_accepts(path):
    tool = shutil.which("vmdkinfo")
    if not tool:
        return
    r = run(tool, path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def corpus_dir():
    d = os.environ.get("VDISK_TESTDATA") or os.path.join(os.path.dirname(__file__),
                                                          "../../../shared/testdata")
    if not os.path.isfile(os.path.join(d, "MANIFEST.tsv")):
        pytest.skip(f"the shared test corpus is absent ({d})")
    return d
