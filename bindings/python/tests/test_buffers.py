"""Buffer objects reach the library as they are (no copy), preadv/pwritev, and the
cache modes of open()."""

import array
import ctypes
import mmap
import os

import pytest

import libvdisk
from libvdisk import _lib
from conftest import MIB, pattern

pytestmark = pytest.mark.usefixtures("library")


@pytest.fixture
def raw_image(tmp_path):
    path = tmp_path / "image.raw"
    data = pattern(MIB, 5)
    path.write_bytes(data)
    return path, data


@pytest.fixture
def recorded_pointers(monkeypatch):
    """The buffer addresses vd_read/vd_write receive, recorded as they pass."""
    seen = []
    library = _lib.lib()
    for name in ("vd_read", "vd_write"):
        real = getattr(library, name)

        def recording(handle, offset, buffer, length, flags, real=real):
            seen.append(buffer)
            return real(handle, offset, buffer, length, flags)
        monkeypatch.setattr(library, name, recording)
    return seen


def address_of(buffer):
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def test_write_passes_read_only_views_without_copy(raw_image, recorded_pointers):
    path, data = raw_image
    backing = bytearray(b"0123456789abcdef")
    view = memoryview(backing).toreadonly()[5:]
    with libvdisk.open(path, "r+") as image:
        image.pwrite(100, view)
        image.seek(200)
        assert image.write(view) == 11
    assert recorded_pointers == [address_of(backing) + 5] * 2
    content = path.read_bytes()
    assert content[100:111] == content[200:211] == b"56789abcdef"


def test_readinto_fills_the_callers_memory(raw_image, recorded_pointers):
    path, data = raw_image
    target = bytearray(64)
    with libvdisk.open(path) as image:
        image.seek(1000)
        assert image.readinto(memoryview(target)[8:40]) == 32
    assert recorded_pointers == [address_of(target) + 8]
    assert target[8:40] == data[1000:1032] and target[:8] == bytes(8)


def test_mmap_and_array_buffers(raw_image, tmp_path):
    path, data = raw_image
    source = tmp_path / "source.bin"
    source.write_bytes(pattern(8192, 9))
    words = array.array("I", range(1000))
    with open(source, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as ro, \
            libvdisk.open(path, "r+") as image:
        image.pwrite(4096, ro)  # a read-only mmap: no bytes() of it
        image.pwrite(65536, words)
        out = tmp_path / "out.bin"
        out.write_bytes(bytes(8192))
        with open(out, "r+b") as g, mmap.mmap(g.fileno(), 0) as rw:
            image.seek(4096)
            assert image.readinto(rw) == 8192
            rw.flush()
        back = array.array("I", bytes(4000))
        image.seek(65536)
        assert image.readinto(back) == 4000
    assert out.read_bytes() == source.read_bytes()
    assert back == words


def test_readinto_refuses_read_only_buffers(raw_image):
    path, _ = raw_image
    with libvdisk.open(path) as image:
        for buffer in (b"read-only", memoryview(bytearray(4)).toreadonly()):
            with pytest.raises(TypeError):
                image.readinto(buffer)
        with pytest.raises(TypeError):
            image.readinto(memoryview(bytearray(8))[::2])  # not contiguous


def test_non_contiguous_source_is_written(raw_image):
    path, _ = raw_image
    with libvdisk.open(path, "r+") as image:
        image.pwrite(0, memoryview(b"aXbXcXdX")[::2])
        assert image.pread(0, 4) == b"abcd"


def test_preadv_pwritev(raw_image):
    path, data = raw_image
    pieces = [b"abc", bytearray(b""), memoryview(b"--defg")[2:], array.array("B", b"hij")]
    with libvdisk.open(path, "r+") as image:
        assert image.pwritev(MIB - 5000, pieces) == 10
        targets = [bytearray(4), bytearray(0), bytearray(6)]
        assert image.preadv(MIB - 5001, targets) == 10
        assert targets == [bytearray(data[MIB - 5001:MIB - 5000] + b"abc"), bytearray(),
                           bytearray(b"defghi")]
        with pytest.raises(libvdisk.RangeError):
            image.preadv(MIB - 2, [bytearray(3)])
        with pytest.raises(TypeError):
            image.preadv(0, [b"read-only"])


def test_cache_modes(tmp_path):
    path = tmp_path / "image.qcow2"
    libvdisk.create(path, "qcow2", MIB, cluster_size=512)
    payload = pattern(10000, 3)
    for mode in ("none", "directsync", "writethrough", "writeback", "unsafe"):
        with libvdisk.open(path, "r+", cache=mode) as image:
            image.pwrite(777, payload)  # unaligned offset and length
            assert image.pread(777, len(payload)) == payload
    with pytest.raises(libvdisk.InvalidArgument, match="Invalid cache option: bogus"):
        libvdisk.open(path, cache="bogus")
    with libvdisk.open(path, cache="none", direct_fallback=True) as image:
        assert image.pread(777, len(payload)) == payload
