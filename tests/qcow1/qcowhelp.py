"""Helpers for the qcow (v1) suite: QEMU's tools, vdisk, patterns and raw models.

meson passes LIBVDISK_LIBRARY, PYTHONPATH (bindings/python), QEMU_IMG,
QEMU_IO and VDISK in the environment.
"""
import os
import shutil
import subprocess

QEMU_IMG = os.environ.get("QEMU_IMG") or shutil.which("qemu-img") or "qemu-img"
QEMU_IO = os.environ.get("QEMU_IO") or shutil.which("qemu-io") or "qemu-io"
VDISK = os.environ.get("VDISK") or shutil.which("vdisk") or "vdisk"
MiB = 1 << 20

# (offset, length, byte) writes over cluster and L2-table boundaries, unaligned ones too
PATTERN = [(0, 512, 0x11), (4096 - 100, 300, 0x22), (1 * MiB, 3 * MiB, 0x5A),
           (2 * MiB - 4096, 8192, 0x33), (7 * MiB + 1000, 5000, 0x44)]


def run(*args, check=True, cwd=None, timeout=300):
    env = None
    if str(args[0]) in (QEMU_IMG, QEMU_IO):  # qemu-img hangs with ASan preloaded (sanitized runs)
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout, env=env)
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


def write_pattern_qemu(path, fmt="qcow", pattern=PATTERN):
    qemu_io(path, fmt, *[f"write -P {b} {off} {n}" for off, n, b in pattern])


def raw_model(path, size, pattern=PATTERN, base=None):
    """A raw file holding what pattern writes onto zeroes (or onto a copy of base)."""
    with open(path, "wb") as f:
        if base:
            with open(base, "rb") as b:
                f.write(b.read())
        f.truncate(size)
        for off, n, b in pattern:
            f.seek(off)
            f.write(bytes([b]) * n)
    return path


def compare(a, b, fa="raw", fb="qcow"):
    r = run(QEMU_IMG, "compare", "-f", fa, "-F", fb, a, b, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Images are identical" in r.stdout


def qemu_raw(path, out, fmt="qcow"):
    """What qemu reads from path, as a raw file."""
    run(QEMU_IMG, "convert", "-f", fmt, "-O", "raw", path, out)
    with open(out, "rb") as f:
        return f.read()
