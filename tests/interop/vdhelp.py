"""Helpers for the interop, vmdk and qcow1 suites (the one copy: tests/vmdk
and tests/qcow1 import it through their conftest.py): the library (the
Python package plus the few C calls it does not wrap), QEMU's tools, vdisk,
content models and map normalisation.

meson passes LIBVDISK_LIBRARY, PYTHONPATH (bindings/python), QEMU_IMG,
QEMU_IO, VDISK and VDISK_TESTDATA in the environment.
"""
import contextlib
import ctypes
import functools
import json
import os
import shutil
import subprocess
import time

import pytest

import libvdisk
from libvdisk import _lib

KiB, MiB = 1 << 10, 1 << 20

QEMU_IMG = os.environ.get("QEMU_IMG") or shutil.which("qemu-img") or "qemu-img"
QEMU_IO = os.environ.get("QEMU_IO") or shutil.which("qemu-io") or "qemu-io"
VDISK = os.environ.get("VDISK") or shutil.which("vdisk") or "vdisk"
# the oracle for dirty bitmaps; None when not installed
QEMU_NBD = os.environ.get("QEMU_NBD") or shutil.which("qemu-nbd")
NBDINFO = os.environ.get("NBDINFO") or shutil.which("nbdinfo")

# vd_open() flags the package does not name
RDWR, NO_BACKING, NO_LOCK, CONFINED, UNSAFE_RAW, REPAIR = 1, 2, 4, 8, 16, 32
CHECK_REPAIR_LEAKS, CHECK_REPAIR_ALL = 1, 2


class CheckResult(ctypes.Structure):
    """struct vd_check_result."""

    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved_", ctypes.c_uint32)] + [
        (name, ctypes.c_uint64) for name in (
            "corruptions", "leaks", "corruptions_fixed", "leaks_fixed", "check_errors",
            "total_clusters", "allocated_clusters", "fragmented_clusters",
            "compressed_clusters", "image_end_offset")]


class OpenOpts(ctypes.Structure):
    """struct vd_open_opts."""

    _fields_ = [("struct_size", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("format", ctypes.c_char_p), ("cache_bytes", ctypes.c_uint64),
                ("snapshot", ctypes.c_char_p), ("secret", ctypes.c_char_p)]


REPORT_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
_REPAIR_NAMES = {0: None, CHECK_REPAIR_LEAKS: "leaks", CHECK_REPAIR_LEAKS | CHECK_REPAIR_ALL: "all",
                 CHECK_REPAIR_ALL: "all"}


@functools.lru_cache(maxsize=None)
def lib():
    """Our own CDLL object for the calls made here, so that the prototypes
    declared here never clash with the package's (same library, same state)."""
    _lib.lib()  # the package's lookup rules and error if it cannot be loaded
    cdll = ctypes.CDLL(_lib.find_library())
    cdll.vd_check.restype = ctypes.c_int
    cdll.vd_check.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(CheckResult),
                              REPORT_FN, ctypes.c_void_p]
    cdll.vd_open_ext.restype = ctypes.c_int
    cdll.vd_open_ext.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                 ctypes.POINTER(OpenOpts)]
    cdll.vd_close.argtypes = [ctypes.c_void_p]
    cdll.vd_errmsg.restype = ctypes.c_char_p
    return cdll


def _raise(rc):
    if rc < 0:
        raise libvdisk.errors.make_error(rc, lib().vd_errmsg().decode(errors="replace"))


def vd_check_handle(handle, flags=0):
    """vd_check() through ctypes on a raw handle: (return code, counts dict, report lines)."""
    result = CheckResult(struct_size=ctypes.sizeof(CheckResult))
    lines = []
    callback = REPORT_FN(lambda ctx, msg: lines.append(msg.decode(errors="replace")))
    rc = lib().vd_check(handle, flags, ctypes.byref(result), callback, None)
    counts = {name: getattr(result, name) for name, _ in CheckResult._fields_[2:]}
    return rc, counts, lines


def vd_check(image, flags=0):
    """Check (and with flags, repair) a libvdisk.Image: (counts dict, report lines).

    Uses the package's Image.check() when it has one, else the C call."""
    if hasattr(image, "check"):
        result = image.check(_REPAIR_NAMES[flags])
        counts = {name: getattr(result, name) for name, _ in CheckResult._fields_[2:]}
        return counts, list(result.messages)
    rc, counts, lines = vd_check_handle(image._handle, flags)
    _raise(rc)
    return counts, lines


@contextlib.contextmanager
def open_handle(path, flags=0, fmt=None):
    """A raw vd_image handle (a c_void_p) opened with vd_open_ext and any VD_OPEN_* flags."""
    handle = ctypes.c_void_p()
    opts = OpenOpts(ctypes.sizeof(OpenOpts), flags, fmt.encode() if fmt else None, 0, None, None)
    _raise(lib().vd_open_ext(ctypes.byref(handle), os.fsencode(path), ctypes.byref(opts)))
    try:
        yield handle
    finally:
        _raise(lib().vd_close(handle))


def read_all(path, fmt=None, **kw):
    with libvdisk.open(path, "r", fmt, **kw) as img:
        return img.pread(0, img.size)


# -------------------------------------------------------------------- QEMU

# QEMU's tools run without the sanitizer runtime meson preloads into Python
# for a sanitized library (qemu-img hangs with libasan preloaded).
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def run(*args, cwd=None, check=True, timeout=300):
    # QEMU times PBKDF2 by the CPU time it used and gives up when that reads 0
    # ("Unable to get accurate CPU usage"), which a loaded machine makes likely: retry
    for _ in range(30):
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                           timeout=timeout, env=TOOL_ENV)
        if "Unable to get accurate CPU usage" not in r.stderr:
            break
    if check and r.returncode:
        raise AssertionError(f"{' '.join(map(str, args))}: exit {r.returncode}\n"
                             f"{r.stdout}{r.stderr}")
    return r


def qemu_img(*args, **kw):
    return run(QEMU_IMG, *args, **kw)


def qemu_io(path, *commands, fmt="qcow2", cwd=None):
    """Run qemu-io commands on an image; fails on any error message."""
    args = [QEMU_IO, "-f", fmt]
    for c in commands:
        args += ["-c", c]
    r = run(*args, path, cwd=cwd)
    bad = [line for line in (r.stdout + r.stderr).splitlines()
           if "error" in line.lower() or "failed" in line.lower()]
    assert not bad, f"qemu-io on {path}: {bad[:5]}"
    return r


def write_pattern_qemu(path, pattern, fmt):
    """qemu-io writes of (offset, length, byte) triples."""
    qemu_io(path, *[f"write -P {b} {off} {n}" for off, n, b in pattern], fmt=fmt)


def raw_model(path, size, pattern, base=None):
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


def compare(a, b, fa="raw", fb=None):
    """qemu-img compare finds a (format fa) and b (fb, or probed) identical."""
    r = run(QEMU_IMG, "compare", "-f", fa, *(["-F", fb] if fb else []), a, b, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Images are identical" in r.stdout


def vmdkinfo_accepts(path):
    """libyal's vmdkinfo, where installed, reads path."""
    tool = shutil.which("vmdkinfo")
    if not tool:
        return
    r = run(tool, path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def qemu_check(path, *extra):
    """qemu-img check --output=json: (exit code, parsed report)."""
    r = run(QEMU_IMG, "check", "--output=json", *extra, path, check=False,
            cwd=os.path.dirname(os.path.abspath(path)))
    try:
        report = json.loads(r.stdout)
    except ValueError:
        report = {"raw-output": r.stdout + r.stderr}
    return r.returncode, report


def assert_qemu_clean(path):
    rc, report = qemu_check(path)
    assert rc == 0, f"qemu-img check {path}: exit {rc}: {report}"
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    assert report.get("check-errors", 0) == 0, report
    return report


def vdisk_check(path):
    """vdisk check --output=json: (exit code, report), or None without a vdisk
    that has a check command."""
    vdisk = os.environ.get("VDISK")
    if not vdisk or not os.access(vdisk, os.X_OK):
        return None
    r = run(vdisk, "check", "--output=json", path, check=False)
    if r.returncode == 1 and "check" in r.stderr and "unknown" in r.stderr.lower():
        return None
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        return r.returncode, {"raw-output": r.stdout + r.stderr}


def qemu_raw(path, fmt=None):
    """The guest content as qemu-img convert -O raw sees it."""
    out = str(path) + ".qemu.raw"
    args = ["convert"] + (["-f", fmt] if fmt else []) + ["-O", "raw", os.path.abspath(path), out]
    qemu_img(*args, cwd=os.path.dirname(os.path.abspath(path)))
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def qemu_info(path):
    return json.loads(qemu_img("info", "--output=json", "-U", path).stdout)


def qemu_compare(image, raw_path, fmt="qcow2"):
    r = run(QEMU_IMG, "compare", "-f", fmt, "-F", "raw", image, raw_path, check=False)
    return r.returncode, r.stdout + r.stderr


def merge_runs(runs):
    """(offset, length) runs with touching ones joined."""
    merged = []
    for offset, length in runs:
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((offset, length))
    return merged


@contextlib.contextmanager
def qemu_nbd_dirty_runs(workdir):
    """Yields dirty_runs(path, name): the dirty (offset, length) runs of
    bitmap name of a qcow2 image as qemu-nbd -r -B serves them on a unix
    socket in workdir, read with nbdinfo --map. Every qemu-nbd started is
    killed on the way out, whatever happened."""
    servers = []

    def dirty_runs(path, name):
        socket = os.path.join(str(workdir), f"nbd{len(servers)}.sock")
        server = subprocess.Popen([QEMU_NBD, "-r", "-f", "qcow2", "-B", name, "-k", socket,
                                   str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=TOOL_ENV)
        servers.append(server)
        deadline = time.monotonic() + 30
        while not os.path.exists(socket):
            if server.poll() is not None:
                raise AssertionError(f"qemu-nbd exited {server.returncode}: "
                                     f"{server.stderr.read().decode(errors='replace')}")
            assert time.monotonic() < deadline, "qemu-nbd did not listen within 30 s"
            time.sleep(0.05)
        r = run(NBDINFO, "--json", f"--map=qemu:dirty-bitmap:{name}",
                f"nbd+unix:///?socket={socket}", timeout=60)
        return merge_runs((e["offset"], e["length"]) for e in json.loads(r.stdout)
                          if e["type"] & 1)

    try:
        yield dirty_runs
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
            server.wait(timeout=30)
            server.stderr.close()


def qemu_map(path, fmt=None):
    args = ["map", "--output=json"] + (["-f", fmt] if fmt else []) + [os.path.abspath(path)]
    return json.loads(qemu_img(*args, cwd=os.path.dirname(os.path.abspath(path))).stdout)


def merge_extents(extents, keys):
    """[(start, end, (key values))] with adjacent equal runs merged."""
    merged = []
    for e in extents:
        start, length = e["start"], e["length"]
        value = tuple(e[k] for k in keys)
        if merged and merged[-1][1] == start and merged[-1][2] == value:
            merged[-1] = (merged[-1][0], start + length, value)
        else:
            merged.append((start, start + length, value))
    return merged


def vd_map(path, **kw):
    with libvdisk.open(path, "r", **kw) as img:
        return [e.to_dict() for e in img.map()]


def assert_maps_agree(path, keys=("data", "zero", "present"), **kw):
    ours = merge_extents(vd_map(path, **kw), keys)
    theirs = merge_extents(qemu_map(path), keys)
    assert ours == theirs, diff_maps(ours, theirs, keys)


def diff_maps(ours, theirs, keys):
    """A short description of where two merged maps first differ."""
    for a, b in zip(ours, theirs):
        if a != b:
            return f"{keys}: first difference: libvdisk {a} vs qemu-img {b}"
    return f"{keys}: lengths differ: libvdisk {ours[-3:]} vs qemu-img {theirs[-3:]}"


def corpus_dir():
    path = os.environ.get("VDISK_TESTDATA")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "..", "shared", "testdata")
    if not os.path.isdir(path):
        pytest.skip(f"no test data directory ({path}); set VDISK_TESTDATA")
    return path


# ------------------------------------------------------------ encrypted images

PASSPHRASE = "correct horse battery"  # of the encrypted images the tests make


def secret_object(pw, sid="sec0"):
    """qemu's --object defining secret sid from the passphrase file pw."""
    return f"secret,id={sid},file={pw}"


def qemu_io_secret(image_opts, pw, *commands, check=True):
    """qemu-io with the secret in file pw on --image-opts image_opts; with check,
    no command may report an error or a pattern mismatch."""
    args = [QEMU_IO, "--object", secret_object(pw), "--image-opts"]
    for c in commands:
        args += ["-c", c]
    r = run(*args, image_opts, check=check)
    if check:
        assert "error" not in (r.stdout + r.stderr).lower() and \
            "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    return r
