"""The C API through ctypes, as these tests need it (no dependency on the Python package)."""
import ctypes
import os

lib = ctypes.CDLL(os.environ["LIBVDISK_LIBRARY"])
lib.vd_errmsg.restype = ctypes.c_char_p
lib.vd_get_backing.restype = ctypes.c_void_p
lib.vd_get_filename.restype = ctypes.c_char_p

RDWR, NO_BACKING, NO_LOCK, CONFINED = 1, 2, 4, 8
MiB = 1 << 20


class VdError(Exception):
    def __init__(self, what, code):
        super().__init__(f"{what}: {code} {lib.vd_errmsg().decode()}")
        self.code = code
        self.message = lib.vd_errmsg().decode()


def ok(rc, what):
    if rc:
        raise VdError(what, rc)


class OpenOpts(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("format", ctypes.c_char_p), ("cache_bytes", ctypes.c_uint64),
                ("snapshot", ctypes.c_char_p), ("secret", ctypes.c_char_p)]


class SnapshotInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("date_nsec", ctypes.c_uint32),
                ("id", ctypes.c_char_p), ("name", ctypes.c_char_p), ("date_sec", ctypes.c_uint64),
                ("vm_clock_ns", ctypes.c_uint64), ("vm_state_size", ctypes.c_uint64),
                ("disk_size", ctypes.c_uint64)]


class Image:
    """A thin owner of a vd_image handle."""

    def __init__(self, path, flags=0, fmt=None, snapshot=None):
        self.handle = ctypes.c_void_p()
        opts = OpenOpts(ctypes.sizeof(OpenOpts), flags, fmt and fmt.encode(), 0,
                        snapshot and snapshot.encode(), None)
        ok(lib.vd_open_ext(ctypes.byref(self.handle), str(path).encode(), ctypes.byref(opts)),
           f"open {path}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.handle:
            ok(lib.vd_close(self.handle), "close")
            self.handle = None

    @property
    def size(self):
        size = ctypes.c_uint64()
        ok(lib.vd_get_size(self.handle, ctypes.byref(size)), "size")
        return size.value

    def read(self, off=0, n=None):
        n = self.size - off if n is None else n
        buf = ctypes.create_string_buffer(n)
        ok(lib.vd_read(self.handle, ctypes.c_uint64(off), buf, ctypes.c_size_t(n), 0), "read")
        return buf.raw

    def write(self, off, data):
        ok(lib.vd_write(self.handle, ctypes.c_uint64(off), data, ctypes.c_size_t(len(data)), 0), "write")

    def write_zeroes(self, off, n, unmap=False):
        ok(lib.vd_write_zeroes(self.handle, ctypes.c_uint64(off), ctypes.c_uint64(n), int(unmap)), "zero")

    def discard(self, off, n):
        ok(lib.vd_discard(self.handle, ctypes.c_uint64(off), ctypes.c_uint64(n), 0), "discard")

    def resize(self, size, shrink=False):
        ok(lib.vd_resize(self.handle, ctypes.c_uint64(size), int(shrink)), "resize")

    def snapshot_create(self, name):
        ok(lib.vd_snapshot_create(self.handle, name.encode(), 0), "snapshot create")

    def snapshot_apply(self, name):
        ok(lib.vd_snapshot_apply(self.handle, name.encode(), 0), "snapshot apply")

    def snapshot_delete(self, name):
        ok(lib.vd_snapshot_delete(self.handle, name.encode(), 0), "snapshot delete")

    def snapshots(self):
        count = ctypes.c_size_t()
        ok(lib.vd_snapshot_count(self.handle, ctypes.byref(count)), "snapshot count")
        out = []
        for i in range(count.value):
            info = SnapshotInfo()
            info.struct_size = ctypes.sizeof(SnapshotInfo)
            ok(lib.vd_snapshot_get(self.handle, i, ctypes.byref(info)), "snapshot get")
            out.append((info.id.decode(), info.name.decode(), info.disk_size))
        return out

    def rebase(self, backing, fmt=None, unsafe=False):
        ok(lib.vd_rebase(self.handle, backing and backing.encode(), fmt and fmt.encode(), int(unsafe)),
           "rebase")

    def commit(self, empty=True):
        ok(lib.vd_commit(self.handle, int(empty)), "commit")

    def chain(self):
        names, h = [], self.handle.value
        while h:
            names.append(lib.vd_get_filename(ctypes.c_void_p(h)).decode())
            h = lib.vd_get_backing(ctypes.c_void_p(h))
        return names


def create(path, fmt, size, options=""):
    ok(lib.vd_create(str(path).encode(), fmt.encode(), ctypes.c_uint64(size), options.encode(), 0),
       f"create {path}")
