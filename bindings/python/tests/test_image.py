"""Image: the file-object behaviour, positional I/O, info() and map()."""

import array
import io
import os
import threading

import pytest

import libvdisk
from conftest import MIB, pattern

pytestmark = pytest.mark.usefixtures("library")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_properties(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path) as image:
        assert (image.size, image.format, image.filename) == (len(data), "raw", str(path))
        assert image.mode == "r" and image.readable() and image.seekable()
        assert not image.writable()
        assert str(path) in repr(image)


def test_pread(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path, fmt="raw") as image:
        assert image.pread(0, 4096) == data[:4096]
        assert image.pread(12345, 100000) == data[12345:112345]
        assert image.pread(len(data) - 7, 7) == data[-7:]
        assert image.pread(len(data), 0) == b""


def test_pread_past_end_raises(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path) as image:
        with pytest.raises(libvdisk.RangeError, match=str(path)) as info:
            image.pread(len(data) - 1, 2)
        assert info.value.name == "VD_ERANGE"
        with pytest.raises(ValueError):
            image.pread(-1, 1)


def test_pwrite_buffer_types(patterned_raw):
    path, data = patterned_raw
    expected = bytearray(data)
    words = array.array("I", range(1000))
    writes = [(0, b"bytes"), (100, bytearray(b"bytearray")), (200, memoryview(b"xxview")[2:]),
              (300, memoryview(bytearray(b"rw-view"))), (4096, words), (MIB, pattern(65536, 2))]
    with libvdisk.open(path, "r+") as image:
        for offset, chunk in writes:
            image.pwrite(offset, chunk)
            raw = bytes(chunk)
            expected[offset:offset + len(raw)] = raw
        image.pwrite(len(data) - 3, b"end", fua=True)
        expected[-3:] = b"end"
        assert image.pread(0, len(data)) == expected
    assert path.read_bytes() == expected


def test_read_like_a_file(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path) as image:
        assert image.read(10) == data[:10]
        assert image.tell() == 10
        assert image.seek(-5, io.SEEK_END) == len(data) - 5
        assert image.read(100) == data[-5:]  # short at the end
        assert image.read(100) == b"" and image.read() == b""
        assert image.seek(100, io.SEEK_END) == len(data) + 100  # past the end is allowed
        assert image.read(1) == b"" and image.readinto(bytearray(4)) == 0
        image.seek(1000)
        assert image.seek(24, io.SEEK_CUR) == 1024
        buffer = bytearray(100)
        assert image.readinto(buffer) == 100 and buffer == data[1024:1124]
        view = memoryview(bytearray(64))[8:40]
        assert image.readinto(view) == 32 and view == data[1124:1156]
        image.seek(MIB)
        assert image.read() == data[MIB:]
        with pytest.raises(ValueError):
            image.seek(-1)
        with pytest.raises(ValueError):
            image.seek(0, 7)
        with pytest.raises(TypeError):
            image.readinto(b"read-only")


def test_buffered_reader_lines(tmp_path):
    lines = [f"line {i}: {'x' * (i % 70)}\n".encode() for i in range(2000)]
    lines += [b"\n"] * (-len(b"".join(lines)) % 512)  # images are whole sectors
    text = b"".join(lines)
    path = tmp_path / "lines.raw"
    libvdisk.create(path, "raw", len(text))
    with libvdisk.open(path, "r+") as image:
        image.write(text)
    with libvdisk.open(path) as image:
        reader = io.BufferedReader(image, buffer_size=4096)
        assert reader.readline() == lines[0]
        assert list(reader) == lines[1:]
        reader.seek(0)
        wrapper = io.TextIOWrapper(reader, encoding="ascii")
        assert wrapper.read() == text.decode()


def test_buffered_writer(tmp_path):
    path = tmp_path / "buffered.raw"
    libvdisk.create(path, "raw", MIB)
    chunks = [pattern(777, seed) for seed in range(100)]
    with libvdisk.open(path, "r+") as image:
        with io.BufferedWriter(image, buffer_size=8192) as writer:
            for chunk in chunks:
                writer.write(chunk)
        assert image.closed  # BufferedWriter closes its raw stream
    content = b"".join(chunks)
    assert path.read_bytes()[:len(content)] == content


def test_write_advances_and_stops_at_end(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path, "r+") as image:
        image.seek(len(data) - 4)
        assert image.write(b"abcd") == 4 and image.tell() == len(data)
        with pytest.raises(libvdisk.RangeError):
            image.write(b"e")
        assert image.tell() == len(data) and image.size == len(data)
    assert path.read_bytes()[-4:] == b"abcd"


def test_context_manager_closes(patterned_raw):
    path, _ = patterned_raw
    before = open_fds()
    with libvdisk.open(path, "r+") as image:
        assert open_fds() > before
        assert not image.closed
    assert image.closed and open_fds() == before
    image.close()  # closing twice is harmless
    for call in (lambda: image.pread(0, 1), lambda: image.read(1), image.flush,
                 lambda: image.seek(0), lambda: image.size, image.info):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert "closed" in repr(image)


def test_read_only_handle_refuses_writes(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path, "r") as image:
        for call in (lambda: image.write(b"x"), lambda: image.pwrite(0, b"x"),
                     lambda: image.write_zeroes(0, 512), lambda: image.discard(0, 512),
                     lambda: image.resize(2 * len(data))):
            with pytest.raises(libvdisk.ReadOnly, match=str(path)) as info:
                call()
            assert isinstance(info.value, io.UnsupportedOperation)
        image.flush()  # nothing to flush: no error
    assert path.read_bytes() == data


def test_open_errors(tmp_path, patterned_raw):
    path, _ = patterned_raw
    missing = tmp_path / "absent.raw"
    with pytest.raises(libvdisk.NotFound, match=str(missing)):
        libvdisk.open(missing)
    with pytest.raises(FileNotFoundError):
        libvdisk.open(missing, "r+")
    with pytest.raises(ValueError, match="mode"):
        libvdisk.open(path, "w")
    with pytest.raises(libvdisk.FormatError):
        libvdisk.open(path, fmt="no-such-format")


def test_write_zeroes_and_discard(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path, "r+") as image:
        image.write_zeroes(4096, 8192)
        image.write_zeroes(MIB, MIB, may_unmap=True)
        assert image.pread(0, 16384) == data[:4096] + bytes(8192) + data[12288:16384]
        assert image.pread(MIB, MIB) == bytes(MIB)
        image.discard(3 * MIB, 65536)
        assert image.size == len(data)
        assert image.pread(3 * MIB + 65536, 4096) == data[3 * MIB + 65536:3 * MIB + 69632]
        with pytest.raises(libvdisk.RangeError):
            image.write_zeroes(len(data), 1)


def test_resize(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path, "r+") as image:
        image.resize(len(data) + MIB)
        assert image.size == len(data) + MIB
        assert image.pread(len(data) - 4, MIB + 4) == data[-4:] + bytes(MIB)
        with pytest.raises(libvdisk.InvalidArgument, match=str(path)):
            image.resize(MIB)
        image.resize(MIB, shrink=True)
        assert image.size == MIB and image.read() == data[:MIB]
    assert os.path.getsize(path) == MIB


def test_info_raw(patterned_raw):
    path, data = patterned_raw
    with libvdisk.open(path) as image:
        info = image.info()
    assert info["virtual-size"] == len(data)
    assert info["format"] == "raw" and info["filename"] == str(path)
    assert info["dirty-flag"] is False
    assert info["actual-size"] == os.stat(path).st_blocks * 512
    assert "backing-filename" not in info


def sparse_raw(path):
    """A 4 MiB file with data at [1 MiB, 1 MiB + 128 KiB) and in its last 64 KiB."""
    with open(path, "wb") as file:
        file.truncate(4 * MIB)
        file.seek(MIB)
        file.write(pattern(128 * 1024, 3))
        file.seek(4 * MIB - 65536)
        file.write(pattern(65536, 4))


def test_map_sparse_raw(tmp_path):
    path = tmp_path / "sparse.raw"
    sparse_raw(path)
    with libvdisk.open(path) as image:
        extents = image.map()
        middle = image.map(MIB + 4096, 8192)
        tail = image.map(4 * MIB - 4096)
        with pytest.raises(libvdisk.RangeError):
            image.map(4 * MIB - 4096, 8192)
    runs = [(e.start, e.length, e.data, e.zero) for e in extents]
    assert runs == [(0, MIB, False, True), (MIB, 128 * 1024, True, False),
                    (MIB + 128 * 1024, 3 * MIB - 128 * 1024 - 65536, False, True),
                    (4 * MIB - 65536, 65536, True, False)]
    assert all(e.present and e.depth == 0 and e.offset == e.start for e in extents)
    assert [(e.start, e.length, e.data) for e in middle] == [(MIB + 4096, 8192, True)]
    assert [(e.start, e.length, e.data) for e in tail] == [(4 * MIB - 4096, 4096, True)]
    assert extents[1].to_dict() == {"start": MIB, "length": 131072, "depth": 0, "present": True,
                                    "zero": False, "data": True, "offset": MIB}


def test_concurrent_pread(patterned_raw):
    path, data = patterned_raw
    errors = []
    with libvdisk.open(path) as image:
        def reader(seed):
            offsets = [(seed * 7919 + i * 104729) % (len(data) - 65536) for i in range(300)]
            for i, offset in enumerate(offsets):
                length = 1 + (offset + i) % 65536
                if image.pread(offset, length) != data[offset:offset + length]:
                    errors.append((seed, offset, length))

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors


def test_concurrent_pwrite(tmp_path):
    path = tmp_path / "threads.raw"
    libvdisk.create(path, "raw", 4 * MIB)
    chunks = {seed: pattern(MIB, 10 + seed) for seed in range(4)}
    with libvdisk.open(path, "r+") as image:
        def writer(seed):
            for block in range(0, MIB, 16384):
                image.pwrite(seed * MIB + block, chunks[seed][block:block + 16384])

        threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert path.read_bytes() == b"".join(chunks[seed] for seed in range(4))


def test_close_while_threads_read(patterned_raw):
    """close() waits for calls in flight; later calls fail cleanly."""
    path, data = patterned_raw
    image = libvdisk.open(path)
    started, outcomes = threading.Barrier(5), []

    def reader():
        started.wait()
        try:
            while True:
                assert image.pread(MIB, 65536) == data[MIB:MIB + 65536]
        except ValueError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    image.close()
    for thread in threads:
        thread.join()
    assert outcomes == ["I/O operation on closed image"] * 4
