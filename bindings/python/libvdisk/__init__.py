"""Python bindings (ctypes) for libvdisk, the virtual disk image library.

>>> import libvdisk
>>> libvdisk.create("disk.raw", "raw", 1 << 20)
>>> with libvdisk.open("disk.raw", "r+") as image:
...     image.pwrite(0, b"hello")
...     image.pread(0, 5)
b'hello'
"""

from __future__ import annotations

from . import _lib
from .errors import *  # noqa: F401,F403 (the generated exception classes)
from .errors import __all__ as _error_names
from .convert import convert
from .formats import (FormatOption, add_secret, create, format_options, formats, options_string,
                      probe, remove_secret)
from .image import Bitmap, CheckResult, Extent, Image, Snapshot, open  # noqa: A004

__all__ = ["open", "create", "convert", "probe", "formats", "format_options", "options_string",
           "add_secret", "remove_secret", "version", "Image", "Extent", "CheckResult", "Snapshot",
           "Bitmap", "FormatOption"] + _error_names


def version() -> str:
    """The runtime library's version string, "MAJOR.MINOR.PATCH"."""
    return _lib.text(_lib.lib().vd_version())


def __getattr__(name):
    """``__version__``: the library version, read when first asked for."""
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
