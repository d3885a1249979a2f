"""qcow2 header rules: unknown features, autoclear bits, preserved extensions."""
import struct

import pytest

from capi import Image, MiB, RDWR, VdError, create
from conftest import assert_clean

UNKNOWN_EXT = 0x12345678


def header_field(path, offset, fmt):
    return struct.unpack_from(fmt, path.read_bytes(), offset)[0]


def set_field(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(data)


def extensions(path):
    """The header extensions of a v3 image: [(type, data)]."""
    data = path.read_bytes()
    pos, out = struct.unpack_from(">I", data, 100)[0], []
    while True:
        kind, length = struct.unpack_from(">II", data, pos)
        if kind == 0:
            return out
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 8 + (length + 7) // 8 * 8


def add_extension(path, kind, payload):
    """Insert an extension before the end marker (the header cluster has room)."""
    data = bytearray(path.read_bytes())
    pos = struct.unpack_from(">I", data, 100)[0]
    while struct.unpack_from(">I", data, pos)[0] != 0:
        pos += 8 + (struct.unpack_from(">I", data, pos + 4)[0] + 7) // 8 * 8
    padded = payload + bytes(-len(payload) % 8)
    data[pos:pos + 8 + len(padded) + 8] = struct.pack(">II", kind, len(payload)) + padded + bytes(8)
    path.write_bytes(data)


def test_unknown_incompatible_bit_is_refused_by_name(tmp_path):
    path = tmp_path / "f.qcow2"
    create(path, "qcow2", MiB)
    set_field(path, 72, ">Q", 1 << 9)
    with pytest.raises(VdError) as refused:
        Image(path)
    assert "unknown incompatible feature 9" in refused.value.message
    # a feature name table entry names it
    table = bytes([0, 9]) + b"teleportation".ljust(46, b"\0")
    add_extension(path, 0x6803F857, table)
    with pytest.raises(VdError) as named:
        Image(path)
    assert "teleportation" in named.value.message and str(path) in named.value.message


def test_unknown_autoclear_bits_are_cleared_on_a_writable_open(tmp_path):
    path = tmp_path / "a.qcow2"
    create(path, "qcow2", MiB)
    set_field(path, 88, ">Q", 1 << 40)
    with Image(path):
        pass
    assert header_field(path, 88, ">Q") == 1 << 40  # read-only: untouched
    with Image(path, RDWR):
        pass
    assert header_field(path, 88, ">Q") == 0
    assert_clean(path)


def test_unknown_extensions_survive_a_header_rewrite(tmp_path, qemu_img):
    qemu_img("create", "-f", "qcow2", "base.qcow2", "1M", cwd=tmp_path)
    qemu_img("create", "-f", "qcow2", "top.qcow2", "1M", cwd=tmp_path)
    top = tmp_path / "top.qcow2"
    add_extension(top, UNKNOWN_EXT, b"keep me, please")
    with Image(top, RDWR) as img:
        img.rebase("base.qcow2", "qcow2", unsafe=True)  # rewrites the header cluster
    assert (UNKNOWN_EXT, b"keep me, please") in extensions(top)
    assert_clean(top)
    assert "backing file: base.qcow2" in qemu_img("info", top).stdout


@pytest.mark.parametrize("field,offset,fmt,value,words", [
    ("cluster_bits", 20, ">I", 8, "cluster size"),
    ("cluster_bits", 20, ">I", 22, "cluster size"),
    ("l1_size", 36, ">I", (32 << 20) // 8 + 1, "L1 table"),
    ("refcount_table_clusters", 56, ">I", (8 << 20) // 65536 + 1, "refcount table"),
    ("nb_snapshots", 60, ">I", 65537, "snapshots"),
    ("header_length", 100, ">I", 107, "header length"),
    ("refcount_order", 96, ">I", 7, "refcount order"),
    ("l1_table_offset", 40, ">Q", 12345, "aligned"),
    ("backing_file_size", 16, ">I", 1024, "backing"),
    ("version", 4, ">I", 4, "version"),
])
def test_hostile_header_fields_get_clear_errors(tmp_path, field, offset, fmt, value, words):
    path = tmp_path / f"{field}.qcow2"
    create(tmp_path / "x.qcow2", "qcow2", MiB)
    create(path, "qcow2", MiB, "backing_file=x.qcow2,backing_fmt=qcow2" if "backing" in field else "")
    if "backing" in field:
        set_field(path, 8, ">Q", 65536 - 1000)  # the name's offset, so the size is what is wrong
    set_field(path, offset, fmt, value)
    before = path.read_bytes()
    with pytest.raises(VdError) as refused:
        Image(path, RDWR)
    assert words in refused.value.message and str(path) in refused.value.message
    assert path.read_bytes() == before  # nothing written
