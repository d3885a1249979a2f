"""The exception hierarchy, generated from one table mirroring VD_ERROR_TABLE.

Every libvdisk failure raises a subclass of :class:`Error`. ``e.code`` is the
negative ``VD_E*`` value, ``e.name`` its symbolic name ("VD_EINVAL") and
``str(e)`` the library's detailed message (vd_errmsg()). Where a Python
built-in exception fits, the class also derives from it, so that
``except FileNotFoundError`` catches :class:`NotFound`; the OSError-based
classes carry the matching ``errno`` too.
"""

import errno as _errno
import io


class Error(Exception):
    """A libvdisk error. ``code`` and ``name`` identify the ``VD_E*`` code."""

    code = None
    name = None


# (VD_ name without "VD_", value, description, class name, extra bases, errno)
# Keep in step with VD_ERROR_TABLE in include/libvdisk/libvdisk.h (a test checks).
ERROR_TABLE = (
    ("EINVAL", -1, "invalid argument", "InvalidArgument", (ValueError,), None),
    ("ENOMEM", -2, "out of memory", "OutOfMemory", (MemoryError,), None),
    ("EIO", -3, "input/output error", "InputOutputError", (OSError,), _errno.EIO),
    ("ENOENT", -4, "no such file or object", "NotFound", (FileNotFoundError,), _errno.ENOENT),
    ("EFORMAT", -5, "unknown or invalid image format", "FormatError", (), None),
    ("ECORRUPT", -6, "image is corrupt", "CorruptImage", (), None),
    ("EUNSUPPORTED", -7, "operation or feature not supported", "Unsupported", (), None),
    ("EREADONLY", -8, "image is opened read-only", "ReadOnly", (io.UnsupportedOperation,), None),
    ("ERANGE", -9, "offset or length out of range", "RangeError", (ValueError,), None),
    ("EPOISONED", -10, "handle disabled after an earlier fatal error", "Poisoned", (), None),
    ("ENOSPC", -11, "no space left on device", "NoSpace", (OSError,), _errno.ENOSPC),
    ("ELOCKED", -12, "image is locked by another process", "Locked", (), None),
    ("EPERM", -13, "operation not permitted", "PermissionDenied", (PermissionError,), _errno.EPERM),
    ("EEXIST", -14, "file or object already exists", "AlreadyExists", (FileExistsError,),
     _errno.EEXIST),
    ("EBACKING", -15, "backing chain error", "BackingError", (), None),
    ("EBUSY", -16, "resource busy", "Busy", (), None),
    ("ETOOBIG", -17, "size exceeds a format or safety limit", "TooBig", (), None),
    ("EKEY", -18, "missing or wrong encryption key", "EncryptionKeyError", (), None),
    ("ECANCELED", -19, "operation cancelled", "Cancelled", (), None),
)

_BY_CODE = {}
_ERRNO = {}


def _define(short_name, value, description, class_name, bases, errno_value):
    """Create, register and export the class for one table row; return its name."""
    cls = type(class_name, (Error,) + bases,
               {"code": value, "name": "VD_" + short_name, "__module__": __name__,
                "__doc__": f"VD_{short_name}: {description}."})
    _BY_CODE[value] = cls
    if errno_value is not None:
        _ERRNO[cls] = errno_value
    globals()[class_name] = cls
    return class_name


__all__ = ["Error"] + [_define(*row) for row in ERROR_TABLE]


def error_class(code):
    """The exception class for a ``VD_E*`` code (:class:`Error` if unknown)."""
    return _BY_CODE.get(code, Error)


def make_error(code, message, name=None):
    """An exception instance for ``code`` with ``message`` as its text.

    ``name`` overrides the symbolic name, for codes this table does not know.
    """
    cls = error_class(code)
    exc = cls(message)
    exc.code = code
    exc.name = name or cls.name or f"VD_E?({code})"
    if cls in _ERRNO:
        exc.errno = _ERRNO[cls]
    return exc
