"""The exception table: in step with the C header and the library, and
mapped onto Python's built-in exceptions."""

import errno
import io
import os
import re
import threading

import pytest

import libvdisk
from libvdisk import errors

HEADER = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir,
                      "include", "libvdisk", "libvdisk.h")


def test_table_matches_header():
    if not os.path.exists(HEADER):
        pytest.skip("not in a source tree")
    with open(HEADER, encoding="utf-8") as header:
        text = header.read()
    table = text[text.index("#define VD_ERROR_TABLE(X)"):]
    table = table[:table.index("\n\n")]
    rows = re.findall(r'X\(\s*(\w+)\s*,\s*(-?\d+)\s*,\s*"([^"]*)"\s*\)', table)
    from_header = [(name, int(value), text) for name, value, text in rows if name != "OK"]
    assert from_header == [row[:3] for row in errors.ERROR_TABLE]


def test_table_matches_library(library):
    for name, value, description, *_ in errors.ERROR_TABLE:
        assert library.vd_errname(value).decode() == "VD_" + name
        assert library.vd_strerror(value).decode() == description


def test_class_hierarchy():
    assert issubclass(libvdisk.NotFound, FileNotFoundError)
    assert issubclass(libvdisk.AlreadyExists, FileExistsError)
    assert issubclass(libvdisk.ReadOnly, io.UnsupportedOperation)
    assert issubclass(libvdisk.InvalidArgument, ValueError)
    assert issubclass(libvdisk.RangeError, ValueError)
    names = [row[3] for row in errors.ERROR_TABLE]
    assert len(set(names)) == len(names)
    for name in names:
        cls = getattr(libvdisk, name)
        assert issubclass(cls, libvdisk.Error) and name in libvdisk.__all__


def test_make_error():
    exc = errors.make_error(-4, "disk.img: no such file")
    assert type(exc) is libvdisk.NotFound
    assert (exc.code, exc.name, exc.errno) == (-4, "VD_ENOENT", errno.ENOENT)
    assert str(exc) == "disk.img: no such file"
    assert str(errors.make_error(-11, "full")) == "full"
    unknown = errors.make_error(-999, "odd", "VD_E?")
    assert type(unknown) is libvdisk.Error
    assert (unknown.code, unknown.name, str(unknown)) == (-999, "VD_E?", "odd")


def test_library_error_carries_code_and_message(tmp_path, library):
    missing = tmp_path / "missing.img"
    with pytest.raises(libvdisk.NotFound) as info:
        libvdisk.open(missing)
    assert (info.value.code, info.value.name) == (-4, "VD_ENOENT")
    assert info.value.errno == errno.ENOENT
    assert str(missing) in str(info.value)


def test_messages_are_per_thread(tmp_path, library):
    """Each thread sees the message of its own failure."""
    failures = {}
    barrier = threading.Barrier(4)

    def fail(index):
        path = tmp_path / f"missing-{index}.img"
        barrier.wait()
        for _ in range(50):
            try:
                libvdisk.open(path)
            except libvdisk.NotFound as exc:
                failures.setdefault(index, set()).add(str(path) in str(exc))

    threads = [threading.Thread(target=fail, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == {i: {True} for i in range(4)}
