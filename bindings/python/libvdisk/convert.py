"""convert(): copy a disk image into a new (or an existing) image of any format."""

import contextlib
import ctypes
import os

from . import _lib
from ._lib import check, lib
from .errors import Cancelled
from .formats import options_string
from .image import Image

# qemu's cache modes of the destination: unsafe never syncs, the others sync at the end
_SYNCING_CACHE_MODES = {"none", "off", "writeback", "writethrough", "directsync"}


def _dst_open_flags(cache, safe, confined):
    if cache == "unsafe":
        flags = _lib.OPEN_NO_FLUSH
    elif cache in _SYNCING_CACHE_MODES:
        flags = 0
    else:
        raise ValueError(f"invalid cache mode {cache!r} (expected unsafe, none, writeback, "
                         "writethrough or directsync)")
    return flags | (_lib.OPEN_SAFE if safe else 0) | (_lib.OPEN_CONFINED if confined else 0)


def _progress_callback(progress, failure):
    """The C callback around a Python progress callable; an exception it raises is kept
    in failure[0] and cancels the conversion."""
    def call(_context, done, total):
        try:
            return 1 if progress(done, total) is True else 0
        except BaseException as exc:  # noqa: B036 (re-raised by convert())
            failure.append(exc)
            return 1
    return _lib.ConvertProgressFn(call)


def convert(src, dst, fmt="raw", *, src_fmt=None, snapshot=None, backing_file=None,
            backing_fmt=None, sparse_size=4096, existing=False, target_is_zero=False,
            parallel=0, out_of_order=False, compress=False, cache="unsafe", no_lock=False, safe=False,
            confined=False, progress=None, bitmaps=False, skip_broken_bitmaps=False, bitmap=None,
            **options):
    """Copy the image ``src`` (a path, or an open :class:`Image`, read through its
    chain) into a new image ``dst`` of format ``fmt`` (``qemu-img convert``).

    Keyword options not listed here are ``fmt``'s create options, as for
    :func:`create` (``cluster_size=65536``, ``preallocation="full"``, ...).

    - ``src_fmt`` (default: probe), ``snapshot`` (an internal snapshot of the
      source, id or name), ``no_lock``, ``safe`` and ``confined`` apply to a
      source path; with an :class:`Image` it is read as it was opened.
    - ``backing_file``/``backing_fmt``: make ``dst`` an overlay of that image
      (``-B``/``-F``), holding only what reads differently; without it, a
      source chain is flattened.
    - ``sparse_size``: all-zero blocks of this many bytes stay holes (``-S``;
      0 fully allocates the output).
    - ``existing=True`` (``-n``): write into the existing image ``dst``, which
      must be at least as large (no create options then);
      ``target_is_zero=True`` says it reads as zeroes.
    - ``parallel`` (``-m``, 1 to 16; 0 picks), ``out_of_order`` (``-W``).
    - ``compress=True`` (``-c``): store every data cluster compressed (qcow2;
      zlib, or ``compression_type="zstd"``), compressed on a thread per core;
      formats without compressed clusters raise :class:`Unsupported`.
    - ``bitmaps=True`` (``--bitmaps``): copy the source's persistent dirty
      bitmaps too; an inconsistent one (in use after a crash) raises
      :class:`CorruptImage` before ``dst`` is touched, unless
      ``skip_broken_bitmaps=True`` (``--skip-broken-bitmaps``) leaves it
      out. ``bitmap="NAME"`` (``--bitmap``): copy only what that
      bitmap of the source marks dirty; with ``backing_file`` the previous
      backup, an incremental backup.
    - ``cache``: "unsafe" (the default, never syncs the output) or a mode that
      syncs it at the end ("none", "writeback", "writethrough", "directsync").
    - ``safe``/``confined`` also confine ``dst``'s backing file to its directory.
    - ``progress``: called as ``progress(done, total)`` with the bytes of work
      done (the source's data, not its virtual size), maybe from another
      thread. Returning ``True`` cancels the conversion with
      :class:`Cancelled`; raising an exception cancels it and ``convert``
      raises that exception (from the :class:`Cancelled`). Any other return
      value goes on.

    On failure or cancellation a ``dst`` that convert created is removed; an
    existing one is left as written so far.
    """
    dst_options = options_string(options) or None
    if existing and dst_options:
        raise ValueError("create options have no effect with existing=True")
    opts = _lib.VdConvertOpts(struct_size=ctypes.sizeof(_lib.VdConvertOpts))
    opts.flags = ((_lib.CONVERT_EXISTING if existing else 0)
                  | (_lib.CONVERT_TARGET_IS_ZERO if target_is_zero else 0)
                  | (_lib.CONVERT_OUT_OF_ORDER if out_of_order else 0)
                  | (_lib.CONVERT_COMPRESS if compress else 0)
                  | (_lib.CONVERT_BITMAPS if bitmaps else 0)
                  | (_lib.CONVERT_SKIP_BROKEN_BITMAPS if skip_broken_bitmaps else 0))
    opts.bitmap = bitmap.encode("utf-8", "surrogateescape") if bitmap is not None else None
    opts.dst_path = os.fsencode(dst)
    opts.dst_format = fmt.encode()
    opts.dst_options = dst_options.encode() if dst_options else None
    opts.dst_open_flags = _dst_open_flags(cache, safe, confined)
    opts.backing_file = os.fsencode(backing_file) if backing_file is not None else None
    opts.backing_format = backing_fmt.encode() if backing_fmt else None
    opts.sparse_size = sparse_size
    opts.parallel = parallel
    failure = []
    if progress is not None:
        opts.progress = _progress_callback(progress, failure)  # kept alive by opts
    with contextlib.ExitStack() as stack:
        if isinstance(src, Image):
            if src_fmt or snapshot or no_lock or safe or confined:
                raise ValueError("src_fmt, snapshot, no_lock, safe and confined apply to a "
                                 "source path, not an open Image")
            opts.src = stack.enter_context(src._using())
        else:
            opts.src_path = os.fsencode(src)
            opts.src_format = src_fmt.encode() if src_fmt else None
            opts.snapshot = str(snapshot).encode() if snapshot is not None else None
            opts.src_open_flags = ((_lib.OPEN_NO_LOCK if no_lock else 0)
                                   | (_lib.OPEN_SAFE if safe else 0)
                                   | (_lib.OPEN_CONFINED if confined else 0))
        rc = lib().vd_convert(ctypes.byref(opts))
    if failure:
        try:
            check(rc)
        except Cancelled as cancelled:
            raise failure[0] from cancelled
    check(rc)
