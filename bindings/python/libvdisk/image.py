"""The :class:`Image` file object and its allocation-map records."""

import ctypes
import dataclasses
import io
import operator
import os
import threading

from . import _lib
from ._lib import check, lib, text
from .errors import NotFound, RangeError

_MODES = {"r": 0, "r+": _lib.OPEN_RDWR}
_PROPERTY_TYPES = {
    _lib.PROP_STRING: str,
    _lib.PROP_INT: int,
    _lib.PROP_BOOL: lambda value: value == "true",
}


@dataclasses.dataclass(frozen=True)
class Extent:
    """One run of uniform allocation status, as ``qemu-img map --output=json``.

    ``offset`` is the host file offset of the data, or ``None`` if there is none.
    """

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int = None

    def to_dict(self):
        """The record as qemu-img prints it (no ``offset`` key when there is none)."""
        record = dataclasses.asdict(self)
        if self.offset is None:
            del record["offset"]
        return record


def _count(name, value):
    """``value`` as a non-negative int, for offsets and lengths."""
    value = operator.index(value)
    if value < 0:
        raise ValueError(f"{name} must not be negative (got {value})")
    return value


def _source_buffer(data):
    """A pointer-compatible object and byte count for data to write.

    bytes and writable buffers are passed without copying; other read-only
    buffers are copied once.
    """
    if isinstance(data, bytes):
        return data, len(data)
    view = memoryview(data)
    if view.readonly or not view.c_contiguous:
        copy = view.tobytes()
        return copy, len(copy)
    view = view.cast("B")
    return (ctypes.c_char * len(view)).from_buffer(view), len(view)


def _target_buffer(buffer):
    """A ctypes array sharing the memory of a writable buffer, and its size."""
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError("readinto() needs a writable buffer")
    view = view.cast("B")
    return (ctypes.c_char * len(view)).from_buffer(view), len(view)


class Image(io.RawIOBase):
    """An open disk image: a seekable binary file over its guest contents.

    ``mode`` is "r" (read-only) or "r+" (read-write); ``fmt`` names the format
    or is ``None`` to probe. ``no_backing`` opens only this image, not its
    backing chain; ``no_lock`` takes no file locks (for read-only inspection).

    The file-position methods (read, readinto, write, seek, tell) share one
    position. :meth:`pread`, :meth:`pwrite` and the other offset-taking methods
    do not use it and may be called from several threads at once. Writes past
    the end of the image raise :class:`RangeError`; grow it with :meth:`resize`.
    """

    def __init__(self, path, mode="r", fmt=None, *, no_backing=False, no_lock=False):
        super().__init__()
        self._handle = None
        self._users = 0
        self._users_changed = threading.Condition()
        self._position = 0
        self._position_lock = threading.Lock()
        if mode not in _MODES:
            raise ValueError(f"invalid mode {mode!r} (expected 'r' or 'r+')")
        flags = _MODES[mode]
        if no_backing:
            flags |= _lib.OPEN_NO_BACKING
        if no_lock:
            flags |= _lib.OPEN_NO_LOCK
        handle = _lib.ImagePtr()
        check(lib().vd_open(ctypes.byref(handle), os.fsencode(path),
                            None if fmt is None else fmt.encode(), flags))
        self._handle = handle
        self._mode = mode
        self._format = text(lib().vd_get_format(handle))
        self._filename = os.fsdecode(lib().vd_get_filename(handle))

    def __repr__(self):
        state = " closed" if self.closed else ""
        return (f"<libvdisk.Image{state} {self._filename!r} "
                f"format={self._format!r} mode={self._mode!r}>")

    # -- handle use and closing ---------------------------------------------

    def _call(self, function, *args):
        """Call ``vd_<function>(handle, *args)``, keeping close() from racing it."""
        with self._users_changed:
            if self._handle is None:
                raise ValueError("I/O operation on closed image")
            self._users += 1
            handle = self._handle
        try:
            return getattr(lib(), "vd_" + function)(handle, *args)
        finally:
            with self._users_changed:
                self._users -= 1
                if not self._users:
                    self._users_changed.notify_all()

    def _run(self, function, *args):
        """:meth:`_call` a function returning a status code and check it."""
        check(self._call(function, *args))

    def close(self):
        """Close the image (flushing it if writable). Waits for calls in flight."""
        with self._users_changed:
            handle, self._handle = self._handle, None
            while self._users:
                self._users_changed.wait()
        try:
            if handle:
                check(lib().vd_close(handle))
        finally:
            super().close()

    def flush(self):
        """Make written data durable (vd_flush)."""
        super().flush()  # raises ValueError once closed
        if self._handle is not None:  # None only while close() runs; it flushes itself
            self._run("flush", 0)

    # -- io.RawIOBase -------------------------------------------------------

    @property
    def mode(self):
        """The mode the image was opened with, "r" or "r+"."""
        return self._mode

    def readable(self):
        self._check_open()
        return True

    def writable(self):
        self._check_open()
        return self._mode == "r+"

    def seekable(self):
        self._check_open()
        return True

    def _check_open(self):
        if self.closed or self._handle is None:
            raise ValueError("I/O operation on closed image")

    def seek(self, offset, whence=io.SEEK_SET):
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

    def read(self, size=-1):
        """Read up to size bytes (all up to the end if negative); b"" at the end."""
        with self._position_lock:
            count = self._take(size)
            data = self.pread(self._position, count) if count else b""
            self._position += count
            return data

    def readall(self):
        """Read from the position to the end of the image."""
        return self.read()

    def readinto(self, buffer):
        """Read into a writable buffer; returns the byte count (0 at the end)."""
        target, length = _target_buffer(buffer)
        with self._position_lock:
            count = self._take(length)
            if count:
                self._run("read", self._position, target, count, 0)
            self._position += count
            return count

    def write(self, data):
        """Write all of data at the position; returns its length."""
        source, length = _source_buffer(data)
        with self._position_lock:
            self._run("write", self._position, source, length, 0)
            self._position += length
            return length

    # -- positional I/O -----------------------------------------------------

    def pread(self, offset, length):
        """Read exactly length bytes at offset; a range past the end raises RangeError."""
        buffer = ctypes.create_string_buffer(_count("length", length))
        self._run("read", _count("offset", offset), buffer, len(buffer), 0)
        return buffer.raw

    def pwrite(self, offset, data, *, fua=False):
        """Write all of data at offset; with fua, it is durable on return."""
        source, length = _source_buffer(data)
        self._run("write", _count("offset", offset), source, length,
                  _lib.WRITE_FUA if fua else 0)

    def write_zeroes(self, offset, length, may_unmap=False):
        """Make a range read as zeroes; may_unmap lets it be deallocated."""
        self._run("write_zeroes", _count("offset", offset), _count("length", length),
                  _lib.ZERO_MAY_UNMAP if may_unmap else 0)

    def discard(self, offset, length):
        """Hint that a range is unused; it may then read as zeroes or as before."""
        self._run("discard", _count("offset", offset), _count("length", length), 0)

    def resize(self, size, shrink=False):
        """Change the virtual size; making it smaller needs shrink=True."""
        self._run("resize", _count("size", size), _lib.RESIZE_SHRINK if shrink else 0)

    # -- information --------------------------------------------------------

    @property
    def size(self):
        """The virtual size in bytes."""
        size = ctypes.c_uint64()
        self._run("get_size", ctypes.byref(size))
        return size.value

    @property
    def format(self):
        """The format name, such as "raw" or "qcow2"."""
        return self._format

    @property
    def filename(self):
        """The path the image was opened with."""
        return self._filename

    name = filename

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
            check(rc)
            convert = _PROPERTY_TYPES.get(kind.value, str)
            properties[text(key.value)] = convert(text(value.value))
            index += 1

    def info(self):
        """Image information with the keys of ``qemu-img info --output=json``."""
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
        properties = self._properties()
        if properties:
            result["format-specific"] = {"type": result["format"], "data": properties}
        return result

    def map(self, offset=0, length=None):
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
            ))
            offset += extent.length
        return extents


def open(path, mode="r", fmt=None, *, no_backing=False, no_lock=False):  # noqa: A001
    """Open a disk image; see :class:`Image`."""
    return Image(path, mode, fmt, no_backing=no_backing, no_lock=no_lock)
