"""Locating and loading libvdisk.so.1, and the ctypes prototypes of its API.

The library is looked up, in order, at:

1. the path in the ``LIBVDISK_LIBRARY`` environment variable;
2. a meson build directory (one holding ``meson-info/`` and
   ``lib/libvdisk.so.1``) found by walking up from this package's directory
   and from the current directory: a directory on the way, or a
   subdirectory of a libvdisk source tree on the way;
3. the system's library search path.

Loading happens on first use, so the pure-Python parts of the package work
without the library.
"""

import ctypes
import ctypes.util
import functools
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_int32, c_size_t,
                    c_uint, c_uint32, c_uint64, c_void_p)

from .errors import make_error

ENV_VAR = "LIBVDISK_LIBRARY"
SONAME = "libvdisk.so.1"

# vd_open() flags
OPEN_RDWR = 1 << 0
OPEN_NO_BACKING = 1 << 1
OPEN_NO_LOCK = 1 << 2
OPEN_CONFINED = 1 << 3
OPEN_UNSAFE_RAW = 1 << 4
OPEN_REPAIR = 1 << 5
OPEN_NO_FLUSH = 1 << 6
OPEN_SAFE = 1 << 7
OPEN_DIRECT = 1 << 8
OPEN_WRITETHROUGH = 1 << 9
OPEN_DIRECT_FALLBACK = 1 << 10
# vd_create() flags
CREATE_EXCL = 1 << 0
CREATE_UNSAFE_BACKING = 1 << 1
CREATE_CONFINED = 1 << 2
# vd_write() flags
WRITE_FUA = 1 << 0
WRITE_COMPRESSED = 1 << 1
# vd_write_zeroes() flags
ZERO_MAY_UNMAP = 1 << 0
# vd_resize() flags
RESIZE_SHRINK = 1 << 0

BITMAP_IN_USE = 1 << 0
BITMAP_AUTO = 1 << 1
BITMAP_INCONSISTENT = 1 << 2
BITMAP_ADD_DISABLED = 1 << 0
# vd_property types
PROP_STRING, PROP_INT, PROP_BOOL = 0, 1, 2
# vd_extent flags
EXTENT_DATA = 1 << 0
EXTENT_ZERO = 1 << 1
EXTENT_ALLOCATED = 1 << 2
NO_HOST_OFFSET = 2**64 - 1
# vd_check() flags
CHECK_REPAIR_LEAKS = 1 << 0
CHECK_REPAIR_ALL = 1 << 1
# vd_rebase() flags
REBASE_UNSAFE = 1 << 0
# vd_commit() flags
COMMIT_EMPTY = 1 << 0
# vd_convert_opts.flags
CONVERT_EXISTING = 1 << 0
CONVERT_TARGET_IS_ZERO = 1 << 1
CONVERT_OUT_OF_ORDER = 1 << 2
CONVERT_COMPRESS = 1 << 3
CONVERT_BITMAPS = 1 << 4
CONVERT_SKIP_BROKEN_BITMAPS = 1 << 5
CONVERT_MAX_PARALLEL = 16


class VdImage(Structure):
    """The opaque ``vd_image``; only ever handled through pointers."""


class VdInfo(Structure):
    """``struct vd_info``."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("cluster_size", c_uint32),
        ("virtual_size", c_uint64),
        ("actual_size", c_uint64),
        ("format", c_char_p),
        ("filename", c_char_p),
        ("backing_file", c_char_p),
        ("backing_format", c_char_p),
        ("dirty", c_int),
        ("read_only", c_int),
        ("encrypted", c_int),
        ("probed", c_int),
        ("data_file", c_char_p),
    ]


class VdExtent(Structure):
    """``struct vd_extent``."""

    _fields_ = [
        ("offset", c_uint64),
        ("length", c_uint64),
        ("flags", c_uint32),
        ("depth", c_int32),
        ("host_offset", c_uint64),
    ]


class VdCheckResult(Structure):
    """``struct vd_check_result``."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("reserved_", c_uint32),
        ("corruptions", c_uint64),
        ("leaks", c_uint64),
        ("corruptions_fixed", c_uint64),
        ("leaks_fixed", c_uint64),
        ("check_errors", c_uint64),
        ("total_clusters", c_uint64),
        ("allocated_clusters", c_uint64),
        ("fragmented_clusters", c_uint64),
        ("compressed_clusters", c_uint64),
        ("image_end_offset", c_uint64),
    ]


# vd_secret_fn: (ctx, path, depth, buf, size) -> passphrase length, 0 for none, or a VD_E* code
SecretFn = CFUNCTYPE(c_int, c_void_p, c_char_p, c_uint, c_void_p, c_size_t)


class VdOpenOpts(Structure):
    """``struct vd_open_opts``."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("format", c_char_p),
        ("cache_bytes", c_uint64),
        ("snapshot", c_char_p),
        ("secret", c_char_p),
        ("formats", c_char_p),
        ("relative_to", c_char_p),
        ("cache", c_char_p),
        ("secret_fn", SecretFn),
        ("secret_ctx", c_void_p),
    ]


class VdSnapshotInfo(Structure):
    """``struct vd_snapshot_info``."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("date_nsec", c_uint32),
        ("id", c_char_p),
        ("name", c_char_p),
        ("date_sec", c_uint64),
        ("vm_clock_ns", c_uint64),
        ("vm_state_size", c_uint64),
        ("disk_size", c_uint64),
        ("icount", c_uint64),
    ]


class VdBitmapInfo(Structure):
    """``struct vd_bitmap_info``."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("name", c_char_p),
        ("granularity", c_uint64),
    ]


ImagePtr = POINTER(VdImage)


class IoVec(Structure):
    """``struct iovec``."""

    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]
# vd_bitmap_extent_fn: int (*)(void *ctx, uint64_t offset, uint64_t length, int dirty)
BitmapExtentFn = CFUNCTYPE(c_int, c_void_p, c_uint64, c_uint64, c_int)
# vd_check_report_fn: void (*)(void *ctx, const char *message)
CheckReportFn = CFUNCTYPE(None, c_void_p, c_char_p)
# vd_convert_progress_fn: int (*)(void *ctx, uint64_t done, uint64_t total)
ConvertProgressFn = CFUNCTYPE(c_int, c_void_p, c_uint64, c_uint64)


class VdConvertOpts(Structure):
    """``struct vd_convert_opts``."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("src", ImagePtr),
        ("src_path", c_char_p),
        ("src_format", c_char_p),
        ("src_open_flags", c_uint32),
        ("dst_open_flags", c_uint32),
        ("snapshot", c_char_p),
        ("dst_path", c_char_p),
        ("dst_format", c_char_p),
        ("dst_options", c_char_p),
        ("backing_file", c_char_p),
        ("backing_format", c_char_p),
        ("sparse_size", c_uint64),
        ("parallel", c_uint32),
        ("reserved_", c_uint32),
        ("progress", ConvertProgressFn),
        ("progress_ctx", c_void_p),
        ("bitmap", c_char_p),
    ]

# name: (restype, argtypes)
_PROTOTYPES = {
    "vd_strerror": (c_char_p, [c_int]),
    "vd_errname": (c_char_p, [c_int]),
    "vd_errmsg": (c_char_p, []),
    "vd_version": (c_char_p, []),
    "vd_version_number": (c_uint, []),
    "vd_open": (c_int, [POINTER(ImagePtr), c_char_p, c_char_p, c_uint32]),
    "vd_open_ext": (c_int, [POINTER(ImagePtr), c_char_p, POINTER(VdOpenOpts)]),
    "vd_close": (c_int, [ImagePtr]),
    "vd_create": (c_int, [c_char_p, c_char_p, c_uint64, c_char_p, c_uint32]),
    "vd_read": (c_int, [ImagePtr, c_uint64, c_void_p, c_size_t, c_uint32]),
    "vd_write": (c_int, [ImagePtr, c_uint64, c_void_p, c_size_t, c_uint32]),
    "vd_preadv": (c_int, [ImagePtr, c_uint64, c_void_p, c_int, c_uint32]),
    "vd_pwritev": (c_int, [ImagePtr, c_uint64, c_void_p, c_int, c_uint32]),
    "vd_write_zeroes": (c_int, [ImagePtr, c_uint64, c_uint64, c_uint32]),
    "vd_discard": (c_int, [ImagePtr, c_uint64, c_uint64, c_uint32]),
    "vd_flush": (c_int, [ImagePtr, c_uint32]),
    "vd_resize": (c_int, [ImagePtr, c_uint64, c_uint32]),
    "vd_get_size": (c_int, [ImagePtr, POINTER(c_uint64)]),
    "vd_get_format": (c_char_p, [ImagePtr]),
    "vd_get_filename": (c_char_p, [ImagePtr]),
    "vd_get_backing": (ImagePtr, [ImagePtr]),
    "vd_get_info": (c_int, [ImagePtr, POINTER(VdInfo)]),
    "vd_get_property": (c_int, [ImagePtr, c_size_t, POINTER(c_char_p), POINTER(c_char_p),
                                POINTER(c_int)]),
    "vd_block_status": (c_int, [ImagePtr, c_uint64, c_uint64, POINTER(VdExtent), c_uint32]),
    "vd_check": (c_int, [ImagePtr, c_uint32, POINTER(VdCheckResult), CheckReportFn, c_void_p]),
    "vd_rebase": (c_int, [ImagePtr, c_char_p, c_char_p, c_uint32]),
    "vd_commit": (c_int, [ImagePtr, c_uint32]),
    "vd_snapshot_count": (c_int, [ImagePtr, POINTER(c_size_t)]),
    "vd_snapshot_get": (c_int, [ImagePtr, c_size_t, POINTER(VdSnapshotInfo)]),
    "vd_snapshot_create": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_snapshot_apply": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_snapshot_delete": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_bitmap_count": (c_int, [ImagePtr, POINTER(c_size_t)]),
    "vd_bitmap_get": (c_int, [ImagePtr, c_size_t, POINTER(VdBitmapInfo)]),
    "vd_bitmap_add": (c_int, [ImagePtr, c_char_p, c_uint64, c_uint32]),
    "vd_bitmap_remove": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_bitmap_clear": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_bitmap_enable": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_bitmap_disable": (c_int, [ImagePtr, c_char_p, c_uint32]),
    "vd_bitmap_merge": (c_int, [ImagePtr, c_char_p, ImagePtr, c_char_p, c_uint32]),
    "vd_bitmap_extents": (c_int, [ImagePtr, c_char_p, c_uint64, c_uint64, BitmapExtentFn, c_void_p,
                                  c_uint32]),
    "vd_format_name": (c_char_p, [c_size_t]),
    "vd_format_option": (c_int, [c_char_p, c_size_t, POINTER(c_char_p), POINTER(c_char_p),
                                 POINTER(c_char_p)]),
    "vd_probe": (c_int, [c_char_p, POINTER(c_char_p)]),
    "vd_convert": (c_int, [POINTER(VdConvertOpts)]),
    "vd_secret_add": (c_int, [c_char_p, c_char_p, c_size_t]),
    "vd_secret_remove": (c_int, [c_char_p]),
}


def _is_build_dir(path):
    """The library path if ``path`` is a meson build directory holding it."""
    library = os.path.join(path, "lib", SONAME)
    if os.path.isdir(os.path.join(path, "meson-info")) and os.path.isfile(library):
        return library
    return None


def _is_source_root(path):
    """Whether ``path`` is the top of a libvdisk source tree."""
    return (os.path.isfile(os.path.join(path, "meson.build"))
            and os.path.isfile(os.path.join(path, "include", "libvdisk", "libvdisk.h")))


def _build_tree_library(start):
    """Walk up from ``start`` to a build directory holding the library.

    At each level, the directory itself may be a build directory; if it is
    the top of a libvdisk source tree, its subdirectories are candidates too
    (in name order, so "build" comes before "build-asan").
    """
    directory = os.path.abspath(start)
    while True:
        found = _is_build_dir(directory)
        if found:
            return found
        if _is_source_root(directory):
            with os.scandir(directory) as entries:
                children = sorted(entry.path for entry in entries if entry.is_dir())
            for child in children:
                found = _is_build_dir(child)
                if found:
                    return found
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def find_library(environ=os.environ, start_dirs=None):
    """The path or name to load libvdisk from, per the module's lookup order.

    ``start_dirs`` defaults to this package's directory and the current
    directory.
    """
    explicit = environ.get(ENV_VAR)
    if explicit:
        return explicit
    if start_dirs is None:
        start_dirs = [os.path.dirname(os.path.abspath(__file__)), os.getcwd()]
    for start in start_dirs:
        found = _build_tree_library(start)
        if found:
            return found
    return ctypes.util.find_library("vdisk") or SONAME


@functools.lru_cache(maxsize=None)
def lib():
    """The loaded library with every prototype declared (loaded once)."""
    path = find_library()
    try:
        cdll = ctypes.CDLL(path)
    except OSError as exc:
        raise ImportError(f"cannot load libvdisk from {path!r} ({exc}); "
                          f"set {ENV_VAR} to the full path of {SONAME}") from exc
    for name, (restype, argtypes) in _PROTOTYPES.items():
        function = getattr(cdll, name)
        function.restype = restype
        function.argtypes = argtypes
    return cdll


def text(value):
    """Decode a C string from the library (``None`` stays ``None``)."""
    return None if value is None else value.decode("utf-8", "surrogateescape")


def check(rc):
    """Raise the matching :class:`~libvdisk.Error` if ``rc`` is a failure code.

    Must run on the thread that made the failing call: vd_errmsg() is
    thread-local (ctypes calls run on the calling thread).
    """
    if rc >= 0:
        return
    cdll = lib()
    message = text(cdll.vd_errmsg()) or text(cdll.vd_strerror(rc))
    raise make_error(rc, message, text(cdll.vd_errname(rc)))
