"""The :class:`Image` file object, its allocation-map, check and snapshot records."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import io
import operator
import os
import threading
import weakref
from typing import Callable, Iterable, List, Optional, Union

from . import _lib
from ._lib import check as check_status
from ._lib import lib, text
from .errors import Cancelled, NotFound, RangeError

_MODES = {"r": 0, "r+": _lib.OPEN_RDWR}
# open() keyword -> vd_open() flag
_OPEN_FLAGS = {
    "no_backing": _lib.OPEN_NO_BACKING,
    "no_lock": _lib.OPEN_NO_LOCK,
    "confined": _lib.OPEN_CONFINED,
    "safe": _lib.OPEN_SAFE,
    "no_flush": _lib.OPEN_NO_FLUSH,
    "repair": _lib.OPEN_REPAIR,
    "direct_fallback": _lib.OPEN_DIRECT_FALLBACK,
}
_REPAIR_FLAGS = {None: 0, "leaks": _lib.CHECK_REPAIR_LEAKS, "all": _lib.CHECK_REPAIR_ALL}
_PROPERTY_TYPES = {
    _lib.PROP_STRING: str,
    _lib.PROP_INT: int,
    _lib.PROP_BOOL: lambda value: value == "true",
}


@dataclasses.dataclass(frozen=True)
class Extent:
    """One run of uniform allocation status, as ``qemu-img map --output=json``.

    ``offset`` is the host file offset of the data, or ``None`` if there is none.
    ``depth`` is the chain depth that defines the run (0: the image itself; for
    a run no image defines, the depth of the last image that covers it) and
    ``filename`` the name of the image at that depth, as :meth:`Image.chain`
    gives it (the "File" column of ``qemu-img map``'s human output).
    """

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: Optional[int] = None
    filename: Optional[str] = dataclasses.field(default=None, compare=False)

    def to_dict(self) -> dict:
        """The record as qemu-img prints it in JSON (no ``offset`` key when there is
        none, and no ``filename``: qemu-img's JSON has none)."""
        record = dataclasses.asdict(self)
        del record["filename"]
        if self.offset is None:
            del record["offset"]
        return record


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of :meth:`Image.check` (``struct vd_check_result``).

    ``corruptions`` and ``leaks`` count the problems left in the image,
    ``*_fixed`` those repaired; ``check_errors`` counts what the check could
    not read. ``messages`` holds the report lines, one per problem found or
    repaired ("Leaked cluster 5 refcount=1 reference=0").
    """

    corruptions: int
    leaks: int
    corruptions_fixed: int
    leaks_fixed: int
    check_errors: int
    total_clusters: int
    allocated_clusters: int
    fragmented_clusters: int
    compressed_clusters: int
    image_end_offset: int
    messages: list[str] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether nothing is wrong with the image now (no corruptions, leaks
        or check errors left)."""
        return not (self.corruptions or self.leaks or self.check_errors)

    def to_dict(self) -> dict:
        """The counts as ``qemu-img check --output=json`` prints them, without
        its "filename" and "format" keys: zero counts are left out, except
        "check-errors"."""
        record = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "messages" and (value or field.name == "check_errors"):
                record[field.name.replace("_", "-")] = value
        return record


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One internal snapshot (``struct vd_snapshot_info``), a row of
    ``qemu-img snapshot -l``.

    ``id`` is the id qemu-img assigned ("1", "2", ...) and ``name`` the
    snapshot's name; either refers to it (the id first, as in qemu-img).
    ``date`` is when it was taken, a timezone-aware UTC datetime (to the
    microsecond); ``date_sec`` and ``date_nsec`` are the exact stored values.
    ``vm_clock_ns`` is the guest run time then, ``vm_state_size`` the bytes of
    saved VM state (0 unless QEMU saved one) and ``disk_size`` the virtual size
    the snapshot has.
    """

    id: str
    name: str
    date: datetime.datetime
    date_sec: int
    date_nsec: int
    vm_clock_ns: int
    vm_state_size: int
    disk_size: int
    icount: Optional[int] = None  # guest instruction count; None if none was recorded

    def to_dict(self) -> dict:
        """The record as a "snapshots" entry of ``qemu-img info --output=json``."""
        recorded = {} if self.icount is None else {"icount": self.icount}
        return recorded | {
            "id": self.id,
            "name": self.name,
            "vm-state-size": self.vm_state_size,
            "date-sec": self.date_sec,
            "date-nsec": self.date_nsec,
            "vm-clock-sec": self.vm_clock_ns // 1_000_000_000,
            "vm-clock-nsec": self.vm_clock_ns % 1_000_000_000,
        }

    @classmethod
    def _from_info(cls, info):
        date = datetime.datetime.fromtimestamp(info.date_sec, datetime.timezone.utc)
        return cls(id=text(info.id), name=text(info.name),
                   date=date.replace(microsecond=min(info.date_nsec // 1000, 999999)),
                   date_sec=info.date_sec, date_nsec=info.date_nsec,
                   vm_clock_ns=info.vm_clock_ns, vm_state_size=info.vm_state_size,
                   disk_size=info.disk_size,
                   icount=None if info.icount == 2**64 - 1 else info.icount)


@dataclasses.dataclass(frozen=True)
class Bitmap:
    """One persistent dirty bitmap (``struct vd_bitmap_info``), an entry of
    ``qemu-img info``'s "bitmaps". ``flags`` are qemu-img's names: "in-use"
    (left in use by a crash or another writer: inconsistent, only removable)
    and "auto" (enabled: records every write)."""

    name: str
    granularity: int
    flags: tuple

    @property
    def enabled(self) -> bool:
        return "auto" in self.flags

    @property
    def inconsistent(self) -> bool:
        return "in-use" in self.flags

    def to_dict(self) -> dict:
        """The record as a "bitmaps" entry of ``qemu-img info --output=json``."""
        return {"flags": list(self.flags), "name": self.name, "granularity": self.granularity}

    @classmethod
    def _from_info(cls, info):
        flags = (("in-use",) if info.flags & _lib.BITMAP_IN_USE else ()) + \
                (("auto",) if info.flags & _lib.BITMAP_AUTO else ())
        return cls(name=text(info.name), granularity=info.granularity, flags=flags)


def _bitmap_name(name):
    if not isinstance(name, str):
        raise TypeError(f"a bitmap name is a str, not {type(name).__name__}")
    if not name or "\0" in name:
        raise ValueError("a bitmap name must not be empty or contain NUL")
    return name.encode("utf-8", "surrogateescape")


def _snapshot_ref(value):
    """The id or name to pass for a snapshot given as a str, an int id or a Snapshot."""
    if isinstance(value, Snapshot):
        value = value.id
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f"a snapshot is referred to by its id or name (a str), an int id or "
                        f"a Snapshot record, not {type(value).__name__}")
    if not value:
        raise ValueError("a snapshot id or name must not be empty")
    if "\0" in value:
        raise ValueError("a snapshot id or name must not contain NUL")
    return value.encode("utf-8", "surrogateescape")


def _formats_list(formats):
    """The ``formats`` argument as vd_open_opts.formats: "qcow2,raw", or None."""
    if formats is None:
        return None
    names = [formats] if isinstance(formats, str) else list(formats)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"formats must be format names, not {formats!r}")
    return ",".join(names).encode()


def _count(name, value):
    """``value`` as a non-negative int, for offsets and lengths."""
    value = operator.index(value)
    if value < 0:
        raise ValueError(f"{name} must not be negative (got {value})")
    return value


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer``: how any buffer object lends its memory."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_PYBUF_SIMPLE, _PYBUF_WRITABLE = 0, 1
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


@contextlib.contextmanager
def _borrowed(data, writable):
    """The address and byte length of the memory of a buffer object, lent (not
    copied) for the duration: bytes, bytearray, memoryview, mmap, array.array,
    numpy arrays, any C-contiguous exporter. While lent, the object cannot be
    resized or closed. A read-only buffer that is not contiguous is copied
    once; reading into one fails with TypeError."""
    view = _PyBuffer()
    copy = None
    try:
        _get_buffer(data, ctypes.byref(view), _PYBUF_WRITABLE if writable else _PYBUF_SIMPLE)
    except BufferError as error:
        if writable:
            raise TypeError(f"reading needs a writable, contiguous buffer: {error}") from None
        copy = memoryview(data).tobytes()
    if copy is not None:
        with _borrowed(copy, False) as lent:
            yield lent
        return
    try:
        yield view.buf, view.len
    finally:
        _release_buffer(ctypes.byref(view))


def _iovec(stack, buffers, writable):
    """A ``struct iovec`` array lending the memory of each buffer (see _borrowed)."""
    lent = [stack.enter_context(_borrowed(buffer, writable)) for buffer in buffers]
    return (_lib.IoVec * len(lent))(*(_lib.IoVec(address, length) for address, length in lent))


class _Owner:
    """What an opened image shares with the borrowed images of its backing
    chain: one count of calls in flight (so that closing the opened image
    waits for calls on any image of its chain), the count of those made on
    borrowed images (so that rebase and commit, which replace the chain, wait
    for them), whether such a replacement is under way, and the borrowed
    wrappers, which its close(), rebase() and commit() disable."""

    def __init__(self):
        self.changed = threading.Condition()
        self.users = 0
        self.borrowed_users = 0
        self.rebuilding = 0
        self.borrowed = weakref.WeakSet()

    def retire_borrowed(self):
        """Under ``changed``: disable every borrowed wrapper; the list of them."""
        borrowed = list(self.borrowed)
        for image in borrowed:
            image._handle = None
        return borrowed


class Image(io.RawIOBase):
    """An open disk image: a seekable binary file over its guest contents.

    ``mode`` is "r" (read-only) or "r+" (read-write); ``fmt`` names the format
    or is ``None`` to probe. The keyword flags map to ``VD_OPEN_*``:

    - ``no_backing``: open only this image, not its backing chain;
    - ``no_lock``: take no file locks (read-only inspection, qemu-img -U);
    - ``confined``: refuse any file reference (backing file, data file)
      outside the image's directory, resolved and opened in one step so that
      a link swapped meanwhile cannot redirect it; symbolic links are never
      followed there;
    - ``safe``: the profile for images from an untrusted source: confined,
      a probed raw image never becomes another format, a backing file must
      have its format recorded (it is never probed), and the metadata cache
      is bounded. Backup software should pass it (with ``formats``);
    - ``no_flush``: never sync to stable storage (qemu's cache=unsafe), for
      scratch images; close() still writes every cache out;
    - ``repair``: with "r+", open an image marked corrupt so that
      :meth:`check` can repair it (data writes stay refused until then).

    ``snapshot`` (an id or name, or a :class:`Snapshot`) opens that internal
    snapshot instead of the current state, read-only: ``mode`` must be "r".

    ``formats`` (a list of names, or one name) are the formats any image of
    the chain may have, whether given, recorded or probed; another raises
    :class:`PermissionDenied`. ``None`` allows every format.

    ``cache`` is one of qemu's cache modes: "writeback" (``None``, the
    default), "writethrough" (every write durable on return), "none" or "off"
    (O_DIRECT on every file of the chain), "directsync" (both), "unsafe"
    (``no_flush``). A file system that refuses O_DIRECT fails the open unless
    ``direct_fallback`` is set, which opens such a file without it.

    The buffers given to readinto, write, pwrite, preadv and pwritev may be
    any buffer object (bytes, bytearray, memoryview, mmap, array, numpy
    arrays); their memory is passed to the library as it is, never copied
    (except a read-only buffer that is not contiguous).

    Images of the backing chain are reached through :attr:`backing` and
    :meth:`chain`; they are borrowed from this one (see :attr:`backing`).

    The file-position methods (read, readinto, write, seek, tell) share one
    position. :meth:`pread`, :meth:`pwrite` and the other offset-taking methods
    do not use it and may be called from several threads at once. Writes past
    the end of the image raise :class:`RangeError`; grow it with :meth:`resize`.
    """

    def __init__(self, path: Union[str, bytes, os.PathLike], mode: str = "r",
                 fmt: Optional[str] = None, *, no_backing: bool = False, no_lock: bool = False,
                 confined: bool = False, no_flush: bool = False, repair: bool = False,
                 snapshot: Union[str, int, Snapshot, None] = None, safe: bool = False,
                 formats: Optional[Iterable[str]] = None, cache: Optional[str] = None,
                 direct_fallback: bool = False,
                 passphrase: Union[str, bytes, Callable[[str, int], Union[str, bytes, None]],
                                   None] = None) -> None:
        super().__init__()
        self._setup(None, mode, _Owner(), borrowed=False)
        if mode not in _MODES:
            raise ValueError(f"invalid mode {mode!r} (expected 'r' or 'r+')")
        if repair and mode != "r+":
            raise ValueError("repair=True opens an image for repairs: it needs mode 'r+'")
        if snapshot is not None:
            snapshot = _snapshot_ref(snapshot)
            if mode != "r":
                raise ValueError("a snapshot can only be opened read-only: it needs mode 'r'")
        flags = _MODES[mode]
        requested = {"no_backing": no_backing, "no_lock": no_lock, "confined": confined,
                     "no_flush": no_flush, "repair": repair, "safe": safe,
                     "direct_fallback": direct_fallback}
        for name, wanted in requested.items():
            if wanted:
                flags |= _OPEN_FLAGS[name]
        options = _lib.VdOpenOpts(struct_size=ctypes.sizeof(_lib.VdOpenOpts), flags=flags,
                                  format=None if fmt is None else fmt.encode(),
                                  snapshot=snapshot, formats=_formats_list(formats),
                                  cache=None if cache is None else cache.encode())
        failures: List[BaseException] = []
        if callable(passphrase):
            options.secret_fn = _secret_fn(passphrase, failures)
        else:
            options.secret = _passphrase_bytes(passphrase)
        handle = _lib.ImagePtr()
        status = lib().vd_open_ext(ctypes.byref(handle), os.fsencode(path), ctypes.byref(options))
        if failures:
            raise failures[0]
        check_status(status)
        self._setup(handle, mode, self._owner, borrowed=False)
        if snapshot is not None:
            self._snapshot = text(snapshot)

    def _setup(self, handle, mode, owner, borrowed):
        """Set the state of a new wrapper around handle (None while opening)."""
        self._handle = handle
        self._owner = owner
        self._borrowed = borrowed
        self._backing = None  # the wrapper of the next image of the chain, once asked for
        self._snapshot = None
        self._mode = mode
        self._position = 0
        self._position_lock = threading.Lock()
        if handle:
            self._address = ctypes.cast(handle, ctypes.c_void_p).value
            self._format = text(lib().vd_get_format(handle))
            self._filename = os.fsdecode(lib().vd_get_filename(handle))

    @classmethod
    def _borrow(cls, handle, owner):
        """A wrapper around a backing image owned by an opened image (under owner.changed)."""
        image = cls.__new__(cls)
        io.RawIOBase.__init__(image)
        image._setup(handle, "r", owner, borrowed=True)
        owner.borrowed.add(image)
        return image

    def __repr__(self):
        state = " closed" if self.closed else ""
        borrowed = " (backing image)" if self._borrowed else ""
        snapshot = f" snapshot={self._snapshot!r}" if self._snapshot is not None else ""
        return (f"<libvdisk.Image{state} {self._filename!r} "
                f"format={self._format!r} mode={self._mode!r}{snapshot}{borrowed}>")

    # -- handle use and closing ---------------------------------------------

    def _acquire(self):
        """The handle, counted as in use until :meth:`_release` (close() waits)."""
        owner = self._owner
        with owner.changed:
            if self._handle is None:
                raise ValueError("I/O operation on closed image")
            owner.users += 1
            owner.borrowed_users += self._borrowed
            return self._handle

    def _release(self):
        owner = self._owner
        with owner.changed:
            owner.users -= 1
            owner.borrowed_users -= self._borrowed
            if not owner.users or not owner.borrowed_users:
                owner.changed.notify_all()

    @contextlib.contextmanager
    def _using(self):
        """The handle, for several calls that close() must not interleave with."""
        handle = self._acquire()
        try:
            yield handle
        finally:
            self._release()

    def _call(self, function, *args):
        """Call ``vd_<function>(handle, *args)``, keeping close() from racing it."""
        handle = self._acquire()
        try:
            return getattr(lib(), "vd_" + function)(handle, *args)
        finally:
            self._release()

    def _run(self, function, *args):
        """:meth:`_call` a function returning a status code and check it."""
        check_status(self._call(function, *args))

    def close(self) -> None:
        """Close the image (flushing it if writable). Waits for calls in flight.

        Closing an opened image also closes the borrowed images of its chain.
        Closing a borrowed image only retires that wrapper: the image stays
        open as part of its chain.
        """
        owner = getattr(self, "_owner", None)
        if owner is None:  # never set up
            return super().close()
        borrowed = []
        with owner.changed:
            handle, self._handle = self._handle, None
            if not self._borrowed:
                borrowed = owner.retire_borrowed()
                while owner.users:
                    owner.changed.wait()
        try:
            if handle and not self._borrowed:
                check_status(lib().vd_close(handle))
        finally:
            try:
                for image in borrowed:
                    image.close()
            finally:
                super().close()

    def flush(self) -> None:
        """Make written data durable (vd_flush)."""
        super().flush()  # raises ValueError once closed
        if self._handle is not None:  # None only while close() runs; it flushes itself
            self._run("flush", 0)

    # -- io.RawIOBase -------------------------------------------------------

    @property
    def mode(self) -> str:
        """The mode the image was opened with, "r" or "r+"."""
        return self._mode

    def readable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return self._mode == "r+"

    def seekable(self) -> bool:
        self._check_open()
        return True

    def _check_open(self):
        if self.closed or self._handle is None:
            raise ValueError("I/O operation on closed image")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the file position; returns the new position. Past the end is allowed."""
        offset = operator.index(offset)
        with self._position_lock:
            if whence == io.SEEK_SET:
                self._check_open()
                position = offset
            elif whence == io.SEEK_CUR:
                self._check_open()
                position = self._position + offset
            elif whence == io.SEEK_END:
                position = self.size + offset
            else:
                raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
            if position < 0:
                raise ValueError(f"negative seek position {position}")
            self._position = position
            return position

    def _take(self, limit):
        """Under the position lock: the byte count to read from the position, at most limit."""
        available = max(self.size - self._position, 0)
        return available if limit is None or limit < 0 else min(limit, available)

    def read(self, size: Optional[int] = -1) -> bytes:
        """Read up to size bytes (all up to the end if negative); b"" at the end."""
        with self._position_lock:
            count = self._take(size)
            data = self.pread(self._position, count) if count else b""
            self._position += count
            return data

    def readall(self) -> bytes:
        """Read from the position to the end of the image."""
        return self.read()

    def readinto(self, buffer) -> int:
        """Read into a writable buffer object, straight into its memory; returns
        the byte count (0 at the end)."""
        with _borrowed(buffer, True) as (target, length), self._position_lock:
            count = self._take(length)
            if count:
                self._run("read", self._position, target, count, 0)
            self._position += count
            return count

    def write(self, data) -> int:
        """Write all of data (any buffer object, not copied) at the position;
        returns its length."""
        with _borrowed(data, False) as (source, length), self._position_lock:
            self._run("write", self._position, source, length, 0)
            self._position += length
            return length

    # -- positional I/O -----------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly length bytes at offset; a range past the end raises RangeError."""
        buffer = ctypes.create_string_buffer(_count("length", length))
        self._run("read", _count("offset", offset), buffer, len(buffer), 0)
        return buffer.raw

    def pwrite(self, offset: int, data, *, fua: bool = False, compress: bool = False) -> None:
        """Write all of data (any buffer object, not copied) at offset; with fua,
        it is durable on return.

        With ``compress`` each cluster is stored compressed (qcow2, with the
        image's compression type), as ``qemu-io -c write`` does; the range
        must cover whole clusters (the last may end at the end of the image),
        else :class:`InvalidArgument`; formats without compressed clusters
        raise :class:`Unsupported`.
        """
        flags = (_lib.WRITE_FUA if fua else 0) | (_lib.WRITE_COMPRESSED if compress else 0)
        with _borrowed(data, False) as (source, length):
            self._run("write", _count("offset", offset), source, length, flags)

    def preadv(self, offset: int, buffers: Iterable) -> int:
        """Fill the writable buffers in order with the bytes at offset, all of
        them (vd_preadv); returns the byte count."""
        with contextlib.ExitStack() as stack:
            iov = _iovec(stack, buffers, True)
            self._run("preadv", _count("offset", offset), iov, len(iov), 0)
            return sum(entry.iov_len for entry in iov)

    def pwritev(self, offset: int, buffers: Iterable, *, fua: bool = False) -> int:
        """Write the buffers in order at offset, all of them (vd_pwritev);
        returns the byte count."""
        with contextlib.ExitStack() as stack:
            iov = _iovec(stack, buffers, False)
            self._run("pwritev", _count("offset", offset), iov, len(iov),
                      _lib.WRITE_FUA if fua else 0)
            return sum(entry.iov_len for entry in iov)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """Make a range read as zeroes; may_unmap lets it be deallocated."""
        self._run("write_zeroes", _count("offset", offset), _count("length", length),
                  _lib.ZERO_MAY_UNMAP if may_unmap else 0)

    def discard(self, offset: int, length: int) -> None:
        """Hint that a range is unused; it may then read as zeroes or as before."""
        self._run("discard", _count("offset", offset), _count("length", length), 0)

    def resize(self, size: int, shrink: bool = False) -> None:
        """Change the virtual size; making it smaller needs shrink=True."""
        self._run("resize", _count("size", size), _lib.RESIZE_SHRINK if shrink else 0)

    # -- information --------------------------------------------------------

    @property
    def size(self) -> int:
        """The virtual size in bytes."""
        size = ctypes.c_uint64()
        self._run("get_size", ctypes.byref(size))
        return size.value

    @property
    def format(self) -> str:
        """The format name, such as "raw" or "qcow2"."""
        return self._format

    @property
    def filename(self) -> str:
        """The path the image was opened with."""
        return self._filename

    @property
    def snapshot(self) -> Optional[str]:
        """The snapshot id or name this image was opened at, or ``None`` for the
        current state."""
        return self._snapshot

    name = filename

    @property
    def backing(self) -> Optional[Image]:
        """The next image of the backing chain, or ``None`` at its bottom (or
        when opened with ``no_backing``).

        It is borrowed: the library opened it read-only together with this
        image, which owns it. Closing it only retires the wrapper; closing
        this image closes it too (later calls raise ValueError, as on any
        closed image), and so do :meth:`rebase` and :meth:`commit`, which
        replace the chain below (ask again for the new one). It does not keep
        this image alive. The same wrapper is returned each time while it is
        open.
        """
        owner = self._owner
        with self._using() as handle, owner.changed:
            if not self._borrowed:  # the chain below is not being replaced meanwhile
                owner.changed.wait_for(lambda: not owner.rebuilding)
            if self._handle is None:  # retired since _using(): a rebase or commit began
                raise ValueError("I/O operation on closed image")
            pointer = lib().vd_get_backing(handle)
            address = ctypes.cast(pointer, ctypes.c_void_p).value if pointer else None
            cached = self._backing
            if cached is not None and cached._handle is not None and cached._address == address:
                return cached
            if cached is not None and cached._address != address:
                cached._handle = None  # the chain changed below it: retire the stale wrapper
            self._backing = Image._borrow(pointer, owner) if address else None
            return self._backing

    def chain(self) -> list[Image]:
        """The backing chain from this image down: ``[self, self.backing, ...]``."""
        images = [self]
        while True:
            below = images[-1].backing
            if below is None:
                return images
            images.append(below)

    # -- chain changes ------------------------------------------------------

    def _replace_chain(self, function, *args):
        """Call ``vd_<function>``, which closes and reopens the chain below this
        image: first retire every borrowed wrapper and wait for the calls in
        flight on them, so that none can reach a freed handle."""
        owner = self._owner
        if self._borrowed or self._mode != "r+":  # the library refuses: nothing changes
            return self._run(function, *args)
        retired, handle, rebuilding = [], None, False
        try:
            with owner.changed:
                if self._handle is None:
                    raise ValueError("I/O operation on closed image")
                owner.rebuilding += 1  # backing waits; no new borrowed wrapper appears
                rebuilding = True
                retired = owner.retire_borrowed()
                self._backing = None
                owner.changed.wait_for(lambda: not owner.borrowed_users)
                handle = self._handle
                if handle is None:  # closed meanwhile
                    raise ValueError("I/O operation on closed image")
                owner.users += 1  # close() waits for this call
            check_status(getattr(lib(), "vd_" + function)(handle, *args))  # on this thread
        finally:
            with owner.changed:
                owner.rebuilding -= rebuilding
                owner.users -= handle is not None
                owner.changed.notify_all()
            for image in retired:
                image.close()

    def rebase(self, backing_file: Union[str, os.PathLike, None],
               backing_fmt: Optional[str] = None, unsafe: bool = False) -> None:
        """Make ``backing_file`` this image's backing file (``qemu-img rebase``).

        ``backing_file`` is recorded as given (relative names are relative to
        this image's directory); ``None`` or "" leaves the image without one.
        ``backing_fmt`` is its format; ``None`` probes it, but refuses a file
        that probes as raw (:class:`InvalidArgument`: say "raw"). The safe mode
        keeps what the guest sees: whatever reads differently through the new
        backing file is first copied into this image. ``unsafe=True`` (``-u``)
        only changes the recorded name, which then need not exist yet.

        Needs an image opened "r+". The borrowed images of the old chain are
        closed (even if the rebase fails); :attr:`backing` gives the new one.
        """
        backing = None if backing_file is None else os.fsencode(backing_file)
        self._replace_chain("rebase", backing or None,
                            None if backing_fmt is None else backing_fmt.encode(),
                            _lib.REBASE_UNSAFE if unsafe else 0)

    def commit(self, empty: bool = True) -> None:
        """Write what this image holds itself into its backing file
        (``qemu-img commit``), growing that when this image is larger.

        With ``empty=True`` this image is then emptied, as ``qemu-img commit``
        does (formats that cannot be emptied raise :class:`Unsupported`);
        ``empty=False`` keeps its data (``qemu-img commit -d``). Needs an image
        opened "r+" with a backing file (:class:`InvalidArgument` without one).
        The borrowed images of the chain are closed (even if the commit fails);
        :attr:`backing` gives the reopened one.
        """
        self._replace_chain("commit", _lib.COMMIT_EMPTY if empty else 0)

    # -- internal snapshots -------------------------------------------------

    def snapshots(self) -> list[Snapshot]:
        """The internal snapshots as :class:`Snapshot` records, in the order of
        the image's table (``qemu-img snapshot -l``); ``[]`` for formats
        without snapshots."""
        count = ctypes.c_size_t()
        info = _lib.VdSnapshotInfo()
        records = []
        with self._using() as handle:
            check_status(lib().vd_snapshot_count(handle, ctypes.byref(count)))
            for index in range(count.value):
                info.struct_size = ctypes.sizeof(_lib.VdSnapshotInfo)
                check_status(lib().vd_snapshot_get(handle, index, ctypes.byref(info)))
                records.append(Snapshot._from_info(info))  # the strings are copied here
        return records

    def bitmaps(self) -> list[Bitmap]:
        """The persistent dirty bitmaps as :class:`Bitmap` records, in the
        order of the image's bitmap directory; ``[]`` for formats without."""
        count = ctypes.c_size_t()
        info = _lib.VdBitmapInfo()
        records = []
        with self._using() as handle:
            check_status(lib().vd_bitmap_count(handle, ctypes.byref(count)))
            for index in range(count.value):
                info.struct_size = ctypes.sizeof(_lib.VdBitmapInfo)
                check_status(lib().vd_bitmap_get(handle, index, ctypes.byref(info)))
                records.append(Bitmap._from_info(info))
        return records

    def bitmap_add(self, name: str, granularity: int = 0, disabled: bool = False) -> None:
        """Add an empty bitmap (``qemu-img bitmap --add``): granularity a power
        of two from 512 to 2 GiB, 0 for qemu-img's default. Stored at close."""
        self._run("bitmap_add", _bitmap_name(name), _count("granularity", granularity),
                  _lib.BITMAP_ADD_DISABLED if disabled else 0)

    def bitmap_remove(self, name: str) -> None:
        """Remove a bitmap (``qemu-img bitmap --remove``)."""
        self._run("bitmap_remove", _bitmap_name(name), 0)

    def bitmap_clear(self, name: str) -> None:
        """Mark every bit of a bitmap clean (``qemu-img bitmap --clear``)."""
        self._run("bitmap_clear", _bitmap_name(name), 0)

    def bitmap_enable(self, name: str) -> None:
        """Let a bitmap record writes (``qemu-img bitmap --enable``)."""
        self._run("bitmap_enable", _bitmap_name(name), 0)

    def bitmap_disable(self, name: str) -> None:
        """Stop a bitmap recording writes (``qemu-img bitmap --disable``)."""
        self._run("bitmap_disable", _bitmap_name(name), 0)

    def bitmap_merge(self, name: str, source_name: str, source: Optional["Image"] = None) -> None:
        """Mark dirty in bitmap ``name`` what bitmap ``source_name`` of
        ``source`` (another open Image; default: this one) marks dirty
        (``qemu-img bitmap --merge``)."""
        other = source if source is not None and source is not self else None
        with self._using() as handle:
            if other is None:
                check_status(lib().vd_bitmap_merge(handle, _bitmap_name(name), handle,
                                                   _bitmap_name(source_name), 0))
                return
            with other._using() as source_handle:
                check_status(lib().vd_bitmap_merge(handle, _bitmap_name(name), source_handle,
                                                   _bitmap_name(source_name), 0))

    def dirty_extents(self, name: str, start: int = 0,
                      length: Optional[int] = None) -> list[tuple[int, int]]:
        """The dirty runs of bitmap ``name`` over [start, start + length)
        (default: to the end), as (offset, length) pairs in order: what an
        incremental backup copies."""
        start = _count("start", start)
        length = self.size - start if length is None else _count("length", length)
        runs = []

        def collect(_ctx, offset, run_length, dirty):
            if dirty:
                runs.append((offset, run_length))
            return 0

        callback = _lib.BitmapExtentFn(collect)
        self._run("bitmap_extents", _bitmap_name(name), start, length, callback, None, 0)
        return runs

    def snapshot_create(self, name: str) -> Snapshot:
        """Take a snapshot of the current state named ``name`` (``qemu-img
        snapshot -c``); returns its :class:`Snapshot` record. The name must be
        new (:class:`AlreadyExists` otherwise); the id is assigned as qemu-img
        does. Needs "r+"; formats without snapshots raise :class:`Unsupported`.
        """
        if not isinstance(name, str):
            raise TypeError(f"a snapshot name is a str, not {type(name).__name__}")
        encoded = _snapshot_ref(name)
        self._run("snapshot_create", encoded, 0)
        created = [record for record in self.snapshots() if record.name == name]
        return created[-1] if created else None

    def snapshot_apply(self, snapshot: Union[str, int, Snapshot]) -> None:
        """Revert the image to a snapshot (``qemu-img snapshot -a``), given by
        id or else name (a str), an int id or a :class:`Snapshot`. The virtual
        size becomes the snapshot's. Needs "r+"; an unknown snapshot raises
        :class:`NotFound`."""
        self._run("snapshot_apply", _snapshot_ref(snapshot), 0)

    def snapshot_delete(self, snapshot: Union[str, int, Snapshot]) -> None:
        """Delete a snapshot (``qemu-img snapshot -d``), given as for
        :meth:`snapshot_apply`. Needs "r+"; an unknown snapshot raises
        :class:`NotFound`."""
        self._run("snapshot_delete", _snapshot_ref(snapshot), 0)

    def _properties(self):
        """The format-specific properties as a dict of typed values."""
        properties = {}
        key, value, kind = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_int()
        index = 0
        while True:
            rc = self._call("get_property", index, ctypes.byref(key), ctypes.byref(value),
                            ctypes.byref(kind))
            if rc == NotFound.code:  # past the last property
                return properties
            check_status(rc)
            convert = _PROPERTY_TYPES.get(kind.value, str)
            _set_property(properties, text(key.value), convert(text(value.value)))
            index += 1

    def info(self) -> dict:
        """Image information with the keys of ``qemu-img info --output=json``
        (with its "snapshots" list when the image has internal snapshots)."""
        info = _lib.VdInfo(struct_size=ctypes.sizeof(_lib.VdInfo))
        self._run("get_info", ctypes.byref(info))
        result = {
            "virtual-size": info.virtual_size,
            "filename": os.fsdecode(info.filename),
            "format": text(info.format),
            "actual-size": info.actual_size,
            "dirty-flag": bool(info.dirty),
        }
        if info.cluster_size:
            result["cluster-size"] = info.cluster_size
        if info.backing_file is not None:
            backing = os.fsdecode(info.backing_file)
            result["backing-filename"] = backing
            result["full-backing-filename"] = os.path.join(
                os.path.dirname(result["filename"]), backing)
        if info.backing_format is not None:
            result["backing-filename-format"] = text(info.backing_format)
        if info.encrypted:
            result["encrypted"] = True
        snapshots = self.snapshots()
        if snapshots:
            result["snapshots"] = [snapshot.to_dict() for snapshot in snapshots]
        properties = self._properties()
        if properties:
            result["format-specific"] = {"type": result["format"], "data": properties}
        return result

    def check(self, repair: Optional[str] = None) -> CheckResult:
        """Check the image's metadata (``qemu-img check``); returns a CheckResult.

        ``repair`` is None (only check), "leaks" (free leaked clusters) or
        "all" (also fix refcount and flag errors, ``qemu-img check -r all``);
        repairs need an image opened "r+" (:class:`ReadOnly` otherwise).
        Problems found are counted in the result, not raised; formats without
        checks (raw) raise :class:`Unsupported`. A vmdk check fails as
        qemu-img's does when it finds a problem (:class:`CorruptImage`, naming
        the count), and vmdk has no repair.
        """
        try:
            flags = _REPAIR_FLAGS[repair]
        except (KeyError, TypeError):
            raise ValueError(f"invalid repair {repair!r} (expected None, 'leaks' or 'all')") \
                from None
        messages = []

        def report(_context, message):
            messages.append(text(message))

        callback = _lib.CheckReportFn(report)  # kept alive for the duration of the call
        result = _lib.VdCheckResult(struct_size=ctypes.sizeof(_lib.VdCheckResult))
        self._run("check", flags, ctypes.byref(result), callback, None)
        counts = {field.name: getattr(result, field.name)
                  for field in dataclasses.fields(CheckResult) if field.name != "messages"}
        return CheckResult(**counts, messages=messages)

    def map(self, offset: int = 0, length: Optional[int] = None) -> list[Extent]:
        """The allocation status of a range (default: to the end) as Extent records.

        One record per vd_block_status() answer; nothing is merged.
        """
        offset = _count("offset", offset)
        size = self.size
        if length is None:
            length = max(size - offset, 0)
        length = _count("length", length)
        if offset + length > size:
            raise RangeError(f"{self._filename}: range {offset}+{length} is past the end "
                             f"of the image ({size} bytes)")
        extents = []
        extent = _lib.VdExtent()
        end = offset + length
        names = [image.filename for image in self.chain()]
        while offset < end:
            self._run("block_status", offset, end - offset, ctypes.byref(extent), 0)
            if extent.length == 0:
                raise RuntimeError(f"vd_block_status returned an empty extent at {offset}")
            extents.append(Extent(
                start=extent.offset,
                length=extent.length,
                depth=extent.depth,
                present=bool(extent.flags & _lib.EXTENT_ALLOCATED),
                zero=bool(extent.flags & _lib.EXTENT_ZERO),
                data=bool(extent.flags & _lib.EXTENT_DATA),
                offset=None if extent.host_offset == _lib.NO_HOST_OFFSET else extent.host_offset,
                filename=names[extent.depth] if 0 <= extent.depth < len(names) else None,
            ))
            offset += extent.length
        return extents


def open(path: Union[str, bytes, os.PathLike], mode: str = "r",  # noqa: A001
         fmt: Optional[str] = None, *, no_backing: bool = False, no_lock: bool = False,
         confined: bool = False, no_flush: bool = False, repair: bool = False,
         snapshot: Union[str, int, Snapshot, None] = None, safe: bool = False,
         formats: Optional[Iterable[str]] = None, cache: Optional[str] = None,
         direct_fallback: bool = False,
         passphrase: Union[str, bytes, Callable[[str, int], Union[str, bytes, None]],
                           None] = None) -> Image:
    """Open a disk image; see :class:`Image`. For images from an untrusted source,
    pass ``safe=True`` (and ``formats``): the default follows qemu-img. cache is
    one of qemu's cache modes ("writeback", the default; "writethrough", "none"
    (O_DIRECT), "directsync", "unsafe"); direct_fallback opens a file whose
    file system refuses O_DIRECT without it instead of failing.

    ``passphrase`` unlocks an encrypted (luks) image; without it such an image
    opens for :meth:`Image.info` only and reads raise
    :class:`EncryptionKeyError`, as does a wrong passphrase at open. One
    passphrase serves every encrypted image of the chain; where they differ,
    pass a function ``passphrase(path, depth)`` instead, asked once for each
    encrypted image (depth 0 is path, 1 its backing file, ...), returning its
    passphrase (``None``: none); what it raises fails the open."""
    return Image(path, mode, fmt, no_backing=no_backing, no_lock=no_lock, confined=confined,
                 no_flush=no_flush, repair=repair, snapshot=snapshot, safe=safe, formats=formats,
                 cache=cache, direct_fallback=direct_fallback, passphrase=passphrase)


def _set_property(properties: dict, key: str, value) -> None:
    """Store one property; "LIST.INDEX.FIELD" keys (luks's "slots.0.active") become
    fields of the INDEX-th dict of the list LIST, as qemu-img info shows them."""
    parts = key.split(".", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        properties[key] = value
        return
    items = properties.setdefault(parts[0], [])
    while len(items) <= int(parts[1]):
        items.append({})
    items[int(parts[1])][parts[2]] = value


def _secret_fn(ask: Callable[[str, int], Union[str, bytes, None]],
               failures: List[BaseException]):
    """A vd_secret_fn asking ask(path, depth) for each encrypted image of the chain; what it
    raises is kept in failures (the open then fails, and the caller raises it)."""
    def give(_ctx, path, depth, buf, size):
        try:
            value = _passphrase_bytes(ask(os.fsdecode(path), depth))
            if value is not None and len(value) >= size:
                raise ValueError(f"a passphrase may be at most {size - 1} bytes")
        except BaseException as e:  # noqa: B902 -- it must not cross the C frames
            failures.append(e)
            return Cancelled.code
        if not value:
            return 0
        ctypes.memmove(buf, value, len(value))
        return len(value)
    return _lib.SecretFn(give)


def _passphrase_bytes(passphrase: Union[str, bytes, None]) -> Optional[bytes]:
    """The passphrase as the C string vd_open_opts.secret takes."""
    if passphrase is None:
        return None
    value = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
    if b"\0" in value:
        raise ValueError("a passphrase must not hold NUL bytes")
    return value
