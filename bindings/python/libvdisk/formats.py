"""Format-level functions: create, probe, and the registry of formats."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import uuid
from typing import Optional, Union

from . import _lib
from ._lib import check, lib, text
from .errors import NotFound


@dataclasses.dataclass(frozen=True)
class FormatOption:
    """A create option of a format; ``default`` is ``None`` when it has none."""

    name: str
    help: str
    default: Optional[str] = None


def _option_value(key, value):
    """The text of one option value: bools become on/off, ints decimal."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, os.PathLike)):
        return os.fsdecode(value)
    raise TypeError(f"option {key!r}: expected str, int, bool or path, "
                    f"not {type(value).__name__}")


def options_string(options: dict) -> str:
    """The qemu-img style "k=v,k=v" text for a dict of options.

    Commas in values are doubled; options whose value is ``None`` are left out.
    """
    parts = []
    for key, value in options.items():
        if not key or "," in key or "=" in key:
            raise ValueError(f"invalid option name {key!r}")
        if value is not None:
            parts.append(f"{key}={_option_value(key, value).replace(',', ',,')}")
    return ",".join(parts)


def create(path: Union[str, bytes, os.PathLike], fmt: str, size: int = 0, *,
           backing_file: Optional[Union[str, os.PathLike]] = None,
           backing_fmt: Optional[str] = None, unsafe_backing: bool = False,
           exclusive: bool = False, confined: bool = False,
           passphrase: Union[str, bytes, None] = None,
           **options: Union[str, int, bool, os.PathLike, None]) -> None:
    """Create an image of format fmt and virtual size bytes.

    Keyword options are the format's create options (see
    :func:`format_options`), e.g. ``preallocation="full"`` for raw or
    ``cluster_size=65536`` for qcow2. An existing file is overwritten unless
    exclusive is true (then :class:`~libvdisk.AlreadyExists` is raised).

    Overlays (qcow2): ``backing_file`` names the backing file (a relative name
    is relative to the new image's directory, and is recorded as given);
    ``backing_fmt`` its format. The backing file is opened to check it:
    without ``backing_fmt`` its format is probed and recorded, but one that
    probes as raw is refused (say ``backing_fmt="raw"``); a size of 0 takes
    the backing file's size. ``unsafe_backing=True`` (``qemu-img create -u``)
    skips opening it; ``backing_fmt`` and the size must then be given.
    ``confined=True`` refuses a backing file (or one of its chain) outside the
    new image's directory, as ``open(confined=True)`` does
    (:class:`PermissionDenied`).

    Encrypted formats (luks): ``passphrase`` protects the first key slot
    (it is handed to the library as a secret for this call only, never
    through the option string); the other luks options are
    ``iter_time`` (milliseconds, spelt ``**{"iter-time": 100}``),
    ``cipher-alg``, ``cipher-mode``, ``ivgen-alg``, ``ivgen-hash-alg`` and
    ``hash-alg``. A ``key-secret`` option may instead name a secret defined
    with :func:`add_secret`. Encrypted qcow2 images: ``passphrase`` with
    ``**{"encrypt.format": "luks"}`` (or ``"aes"``), and the luks options
    spelt with an ``encrypt.`` prefix (``encrypt.key-secret`` for a secret).
    """
    if size < 0:
        raise ValueError(f"size must not be negative (got {size})")
    with _call_secret(passphrase) as secret_id:
        if secret_id:
            key = "encrypt.key-secret" if "encrypt.format" in options else "key-secret"
            options = {**options, key: secret_id}
        text_options = options_string({"backing_file": backing_file, "backing_fmt": backing_fmt,
                                       **options})
        flags = (_lib.CREATE_EXCL if exclusive else 0) | \
            (_lib.CREATE_UNSAFE_BACKING if unsafe_backing else 0) | \
            (_lib.CREATE_CONFINED if confined else 0)
        check(lib().vd_create(os.fsencode(path), fmt.encode(), size,
                              os.fsencode(text_options) if text_options else None, flags))


def _secret_bytes(data: Union[str, bytes]) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def add_secret(secret_id: str, data: Union[str, bytes]) -> None:
    """Define the secret secret_id (a passphrase) for options that name one,
    such as luks's ``key-secret`` (``vd_secret_add()``); replaces an earlier one."""
    value = _secret_bytes(data)
    check(lib().vd_secret_add(secret_id.encode(), value, len(value)))


def remove_secret(secret_id: str) -> None:
    """Forget the secret secret_id (the library wipes its copy)."""
    check(lib().vd_secret_remove(secret_id.encode()))


@contextlib.contextmanager
def _call_secret(passphrase: Union[str, bytes, None]):
    """A secret holding passphrase for one call, by a fresh id; None without one."""
    if passphrase is None:
        yield None
        return
    secret_id = f"py-{uuid.uuid4().hex}"
    add_secret(secret_id, passphrase)
    try:
        yield secret_id
    finally:
        remove_secret(secret_id)


def probe(path: Union[str, bytes, os.PathLike]) -> str:
    """The name of the format of the image at path ("raw" if nothing else matches)."""
    name = ctypes.c_char_p()
    check(lib().vd_probe(os.fsencode(path), ctypes.byref(name)))
    return text(name.value)


def formats() -> list[str]:
    """The names of the formats the library supports."""
    names = []
    while True:
        name = lib().vd_format_name(len(names))
        if name is None:
            return names
        names.append(text(name))


def format_options(fmt: str) -> list[FormatOption]:
    """The create options of a format as FormatOption records."""
    options = []
    name, help_text, default = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_char_p()
    while True:
        rc = lib().vd_format_option(fmt.encode(), len(options), ctypes.byref(name),
                                    ctypes.byref(help_text), ctypes.byref(default))
        if rc == NotFound.code:
            return options
        check(rc)
        options.append(FormatOption(text(name.value), text(help_text.value),
                                    text(default.value)))
