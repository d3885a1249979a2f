"""create(), probe(), formats() and the option string."""

import os

import pytest

import libvdisk
from conftest import MIB


def test_options_string():
    options = {"a": "x,y", "on": True, "off": False, "n": 65536, "skip": None,
               "path": os.path.join("dir", "b.img")}
    assert libvdisk.options_string(options) == \
        f"a=x,,y,on=on,off=off,n=65536,path={os.path.join('dir', 'b.img')}"
    assert libvdisk.options_string({}) == ""


@pytest.mark.parametrize("options, error", [
    ({"a=b": 1}, ValueError), ({"a,b": 1}, ValueError), ({"": 1}, ValueError),
    ({"x": 1.5}, TypeError), ({"x": b"raw"}, TypeError)])
def test_options_string_rejects(options, error):
    with pytest.raises(error):
        libvdisk.options_string(options)


def test_formats_and_options(library):
    assert "raw" in libvdisk.formats()
    options = {option.name: option for option in libvdisk.format_options("raw")}
    assert options["preallocation"].default == "off"
    assert options["preallocation"].help
    with pytest.raises(libvdisk.FormatError):
        libvdisk.format_options("no-such-format")


def test_create_and_probe(tmp_path, library):
    path = tmp_path / "new.raw"
    assert libvdisk.create(path, "raw", 3 * MIB) is None
    assert os.path.getsize(path) == 3 * MIB
    assert libvdisk.probe(path) == "raw"
    with libvdisk.open(path) as image:
        assert image.size == 3 * MIB and image.format == "raw"


@pytest.mark.parametrize("mode", ["full", "falloc"])
def test_preallocation_allocates(tmp_path, library, mode):
    size = 4 * MIB
    sparse, full = tmp_path / "sparse.raw", tmp_path / f"{mode}.raw"
    libvdisk.create(sparse, "raw", size)
    libvdisk.create(full, "raw", size, preallocation=mode)
    assert os.stat(sparse).st_blocks * 512 < size
    assert os.stat(full).st_blocks * 512 >= size
    with libvdisk.open(full) as image:
        assert image.pread(0, size) == bytes(size)


def test_create_rejects_bad_options(tmp_path, library):
    path = tmp_path / "bad.raw"
    with pytest.raises(libvdisk.InvalidArgument, match="bogus"):
        libvdisk.create(path, "raw", MIB, bogus=1)
    with pytest.raises(libvdisk.InvalidArgument, match="sideways"):
        libvdisk.create(path, "raw", MIB, preallocation="sideways")
    with pytest.raises(libvdisk.FormatError):
        libvdisk.create(path, "no-such-format", MIB)
    with pytest.raises(ValueError):
        libvdisk.create(path, "raw", -1)


def test_create_exclusive(tmp_path, library):
    path = tmp_path / "once.raw"
    libvdisk.create(path, "raw", MIB, exclusive=True)
    with pytest.raises(libvdisk.AlreadyExists) as info:
        libvdisk.create(path, "raw", 2 * MIB, exclusive=True)
    assert isinstance(info.value, FileExistsError)
    assert os.path.getsize(path) == MIB
    libvdisk.create(path, "raw", 2 * MIB)
    assert os.path.getsize(path) == 2 * MIB


def test_probe_missing(tmp_path, library):
    with pytest.raises(libvdisk.NotFound, match="nothing.img"):
        libvdisk.probe(tmp_path / "nothing.img")


def test_version(library):
    version = libvdisk.version()
    assert len(version.split(".")) == 3 and all(part.isdigit() for part in version.split("."))
    assert libvdisk.__version__ == version
    major, minor, patch = map(int, version.split("."))
    assert library.vd_version_number() == major * 10000 + minor * 100 + patch
