"""Internal snapshots: Image.snapshots(), snapshot_create/apply/delete and
open(snapshot=), cross-checked with qemu-img both ways."""

import datetime
import json
import re
import shutil
import time

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, needs_qemu_io, pattern, qemu_img, qemu_io

pytestmark = pytest.mark.usefixtures("library")

SIZE = 4 * MIB


@pytest.fixture(autouse=True)
def need_qcow2(library):
    if "qcow2" not in libvdisk.formats():
        pytest.skip("libvdisk has no qcow2")


def qemu_ok(*args):
    result = qemu_img(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_clean(path):
    """qemu-img check finds nothing wrong (it exits 0 only then)."""
    result = qemu_img("check", "--output=json", path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert not report.get("corruptions") and not report.get("leaks"), report


def assert_same(path, reference, fmt="qcow2", ref_fmt="raw"):
    result = qemu_img("compare", "-f", fmt, "-F", ref_fmt, path, reference)
    assert result.returncode == 0, result.stdout + result.stderr


def qemu_snapshot_rows(path):
    """qemu-img snapshot -l as (id, name) rows."""
    rows = []
    for line in qemu_ok("snapshot", "-l", path).stdout.splitlines()[2:]:
        fields = line.split()
        rows.append((fields[0], fields[1]))
    return rows


class States:
    """A qcow2 image written through Python in three states, "first" and
    "second" saved as snapshots, with the raw reference of each state."""

    def __init__(self, tmp_path):
        self.path = tmp_path / "disk.qcow2"
        self.refs = {}
        contents = bytearray(SIZE)
        libvdisk.create(self.path, "qcow2", SIZE)
        with libvdisk.open(self.path, "r+") as image:
            for state, seed in (("first", 70), ("second", 71), ("current", 72)):
                # each state rewrites part of the last one and adds data of its own
                offset = {"first": 0, "second": MIB // 2 + 4096, "current": MIB}[state]
                data = pattern(MIB + 12345, seed)
                image.pwrite(offset, data)
                contents[offset:offset + len(data)] = data
                if state == "second":
                    image.write_zeroes(0, 65536)
                    contents[0:65536] = bytes(65536)
                self.refs[state] = tmp_path / f"{state}.raw"
                self.refs[state].write_bytes(contents)
                if state != "current":
                    image.snapshot_create(state)


@needs_qemu_img
def test_python_snapshots_are_listed_by_qemu(tmp_path):
    before = time.time()
    states = States(tmp_path)
    after = time.time()
    assert qemu_snapshot_rows(states.path) == [("1", "first"), ("2", "second")]
    with libvdisk.open(states.path) as image:
        snapshots = image.snapshots()
        info = image.info()
    assert [(s.id, s.name) for s in snapshots] == [("1", "first"), ("2", "second")]
    for snapshot in snapshots:
        assert snapshot.disk_size == SIZE and snapshot.vm_state_size == 0
        assert snapshot.vm_clock_ns == 0
        assert int(before) <= snapshot.date_sec <= after and 0 <= snapshot.date_nsec < 10**9
        assert snapshot.date.tzinfo is datetime.timezone.utc
        # the stored time cut to whole microseconds (a float sum of the two would round)
        assert snapshot.date == datetime.datetime.fromtimestamp(
            snapshot.date_sec, datetime.timezone.utc).replace(microsecond=snapshot.date_nsec // 1000)
    # qemu-img info's JSON "snapshots" entries are the records' to_dict()
    qemu_info = json.loads(qemu_ok("info", "--output=json", states.path).stdout)
    assert qemu_info["snapshots"] == [s.to_dict() for s in snapshots]
    assert info["snapshots"] == [s.to_dict() for s in snapshots]
    assert {k: v for k, v in info.items() if k != "actual-size"} == \
        {k: v for k, v in qemu_info.items() if k != "actual-size"}
    assert_clean(states.path)
    assert_same(states.path, states.refs["current"])


@needs_qemu_img
@pytest.mark.parametrize("state", ["first", "second"])
def test_qemu_reverts_to_python_snapshots(tmp_path, state):
    states = States(tmp_path)
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(states.path, copy)
    qemu_ok("snapshot", "-a", state, copy)
    assert_same(copy, states.refs[state])
    assert_clean(copy)
    # by id as well
    shutil.copyfile(states.path, copy)
    qemu_ok("snapshot", "-a", {"first": "1", "second": "2"}[state], copy)
    assert_same(copy, states.refs[state])
    # and qemu-img convert -l reads the snapshot as we wrote it
    out = tmp_path / "out.raw"
    qemu_ok("convert", "-O", "raw", "-l", f"snapshot.name={state}", states.path, out)
    assert out.read_bytes() == states.refs[state].read_bytes()


@needs_qemu_img
def test_python_apply_and_delete(tmp_path):
    states = States(tmp_path)
    with libvdisk.open(states.path, "r+") as image:
        image.snapshot_apply("first")
        assert image.pread(0, SIZE) == states.refs["first"].read_bytes()
        image.pwrite(3 * MIB, b"after first")  # the active state moves on from the snapshot
        image.snapshot_apply("2")  # by id
        assert image.pread(0, SIZE) == states.refs["second"].read_bytes()
        image.snapshot_delete("first")
        assert [(s.id, s.name) for s in image.snapshots()] == [("2", "second")]
        assert image.check().clean
    assert_same(states.path, states.refs["second"])
    assert qemu_snapshot_rows(states.path) == [("2", "second")]
    assert_clean(states.path)
    # the next id follows the highest, as qemu-img assigns it
    with libvdisk.open(states.path, "r+") as image:
        record = image.snapshot_create("third")
        assert (record.id, record.name) == ("3", "third")
        image.snapshot_delete(image.snapshots()[0])  # a Snapshot record refers to its id
        image.snapshot_delete(3)                     # and an int id
        assert image.snapshots() == []
    assert qemu_snapshot_rows(states.path) == []
    assert_clean(states.path)
    assert_same(states.path, states.refs["second"])


@needs_qemu_img
@needs_qemu_io
def test_qemu_snapshots_through_python(tmp_path):
    path = tmp_path / "qemu.qcow2"
    qemu_ok("create", "-q", "-f", "qcow2", path, str(SIZE))
    qemu_io("-f", "qcow2", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 2M 64k", path)
    qemu_ok("snapshot", "-c", "base state", path)
    qemu_io("-f", "qcow2", "-c", "write -P 0x43 512k 1M", "-c", "write -z 2M 64k", path)
    qemu_ok("snapshot", "-c", "later", path)
    qemu_io("-f", "qcow2", "-c", "write -P 0x44 3M 4k", path)
    refs = {}
    for name in ("base state", "later"):
        refs[name] = tmp_path / f"{name}.raw"
        qemu_ok("convert", "-O", "raw", "-l", f"snapshot.name={name}", path, refs[name])
    current = tmp_path / "current.raw"
    qemu_ok("convert", "-O", "raw", path, current)

    qemu_info = json.loads(qemu_ok("info", "--output=json", path).stdout)
    with libvdisk.open(path) as image:
        snapshots = image.snapshots()
        assert [(s.id, s.name) for s in snapshots] == [("1", "base state"), ("2", "later")]
        assert [s.to_dict() for s in snapshots] == qemu_info["snapshots"]
        assert all(s.disk_size == SIZE for s in snapshots)
        assert image.pread(0, SIZE) == current.read_bytes()
    for name, ref in refs.items():
        with libvdisk.open(path, snapshot=name) as image:
            assert image.snapshot == name and f"snapshot={name!r}" in repr(image)
            assert image.pread(0, SIZE) == ref.read_bytes()

    with libvdisk.open(path, "r+") as image:
        image.snapshot_apply("base state")
        assert image.pread(0, SIZE) == refs["base state"].read_bytes()
    assert_same(path, refs["base state"])
    assert_clean(path)
    with libvdisk.open(path, "r+") as image:
        image.snapshot_delete("base state")
    assert qemu_snapshot_rows(path) == [("2", "later")]
    assert_clean(path)
    qemu_ok("snapshot", "-a", "later", path)
    assert_same(path, refs["later"])


def test_open_snapshot_while_the_active_state_differs(tmp_path):
    path = tmp_path / "disk.qcow2"
    old = pattern(MIB, 73)
    libvdisk.create(path, "qcow2", SIZE)
    with libvdisk.open(path, "r+") as image:
        image.pwrite(0, old)
        created = image.snapshot_create("old")
        image.pwrite(0, pattern(MIB, 74))
        image.resize(2 * SIZE)
        image.pwrite(SIZE, b"grown")
        assert image.pread(0, MIB) != old
        # open the snapshot while the read-write handle holds the image: a lock conflict,
        # unless locks are skipped
        with pytest.raises(libvdisk.Locked):
            libvdisk.open(path, snapshot="old")
        image.flush()
        with libvdisk.open(path, snapshot="old", no_lock=True) as snap:
            assert snap.size == SIZE and snap.pread(0, MIB) == old
    for ref in ("old", "1", 1, created):
        with libvdisk.open(path, snapshot=ref) as snap:
            assert snap.mode == "r" and not snap.writable()
            assert snap.size == SIZE
            assert snap.pread(0, MIB) == old and snap.pread(MIB, MIB) == bytes(MIB)
            with pytest.raises(libvdisk.ReadOnly):
                snap.pwrite(0, b"x")
            with pytest.raises(libvdisk.ReadOnly):
                snap.snapshot_create("from a snapshot")
    with libvdisk.open(path) as image:  # the active state is untouched
        assert image.size == 2 * SIZE and image.pread(SIZE, 5) == b"grown"
        assert image.snapshot is None
        assert image.check().clean
    with pytest.raises(ValueError, match="read-only"):
        libvdisk.open(path, "r+", snapshot="old")


def test_apply_restores_the_size(tmp_path):
    path = tmp_path / "disk.qcow2"
    libvdisk.create(path, "qcow2", SIZE)
    with libvdisk.open(path, "r+") as image:
        image.pwrite(SIZE - 4096, b"end" * 100)
        image.snapshot_create("small")
        image.resize(3 * SIZE)
        image.pwrite(3 * SIZE - 4096, b"far")
        image.snapshot_create("big")
        assert [s.disk_size for s in image.snapshots()] == [SIZE, 3 * SIZE]
        image.snapshot_apply("small")
        assert image.size == SIZE and image.pread(SIZE - 4096, 300) == b"end" * 100
        image.snapshot_apply("big")
        assert image.size == 3 * SIZE and image.pread(3 * SIZE - 4096, 3) == b"far"
        assert image.check().clean


def test_id_comes_before_name(tmp_path):
    path = tmp_path / "disk.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    with libvdisk.open(path, "r+") as image:
        image.pwrite(0, b"A")
        image.snapshot_create("first")       # id 1
        image.pwrite(0, b"B")
        image.snapshot_create("1")           # id 2, named like id 1
        image.pwrite(0, b"C")
        image.snapshot_apply("1")            # the id wins, as in qemu-img
        assert image.pread(0, 1) == b"A"
        image.snapshot_apply("2")
        assert image.pread(0, 1) == b"B"
    with libvdisk.open(path, snapshot="1") as snap:
        assert snap.pread(0, 1) == b"A"


def test_snapshot_errors(tmp_path):
    path = tmp_path / "disk.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    with libvdisk.open(path, "r+") as image:
        image.snapshot_create("taken")
        with pytest.raises(libvdisk.AlreadyExists, match="taken") as info:
            image.snapshot_create("taken")
        assert isinstance(info.value, FileExistsError)
        for call in (image.snapshot_apply, image.snapshot_delete):
            with pytest.raises(libvdisk.NotFound, match="no-such-snapshot") as info:
                call("no-such-snapshot")
            assert isinstance(info.value, FileNotFoundError)
            assert str(path) in str(info.value)
            with pytest.raises(ValueError, match="empty"):
                call("")
            with pytest.raises(TypeError):
                call(None)
            with pytest.raises(TypeError):
                call(1.5)
        with pytest.raises(TypeError):
            image.snapshot_create(7)
        with pytest.raises(ValueError):
            image.snapshot_create("nul\0inside")
        assert [s.name for s in image.snapshots()] == ["taken"]
        assert image.check().clean
    with pytest.raises(libvdisk.NotFound, match="missing-one"):
        libvdisk.open(path, snapshot="missing-one")
    with libvdisk.open(path) as image:
        with pytest.raises(libvdisk.ReadOnly):
            image.snapshot_create("x")
        with pytest.raises(libvdisk.ReadOnly):
            image.snapshot_apply("taken")
        with pytest.raises(libvdisk.ReadOnly):
            image.snapshot_delete("taken")
        assert [s.name for s in image.snapshots()] == ["taken"]
    image.close()
    with pytest.raises(ValueError, match="closed"):
        image.snapshots()


def test_unicode_names(tmp_path):
    path = tmp_path / "disk.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    with libvdisk.open(path, "r+") as image:
        image.snapshot_create("vor dem Update – ü")
        assert image.snapshots()[0].name == "vor dem Update – ü"
    with libvdisk.open(path, snapshot="vor dem Update – ü") as snap:
        assert snap.size == MIB


def test_formats_without_snapshots(tmp_path):
    path = tmp_path / "disk.raw"
    libvdisk.create(path, "raw", MIB)
    with libvdisk.open(path, "r+") as image:
        assert image.snapshots() == []
        assert "snapshots" not in image.info()
        with pytest.raises(libvdisk.Unsupported, match="snapshot"):
            image.snapshot_create("s")
        with pytest.raises(libvdisk.Unsupported):
            image.snapshot_apply("s")
    with pytest.raises(libvdisk.Unsupported, match="has no snapshots"):
        libvdisk.open(path, snapshot="s")
    with libvdisk.open(path, "r+"):  # and closed what it opened (no lock is left behind)
        pass


def test_snapshots_of_a_borrowed_backing_image(tmp_path):
    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    libvdisk.create(base, "qcow2", MIB)
    with libvdisk.open(base, "r+") as image:
        image.snapshot_create("in base")
    libvdisk.create(overlay, "qcow2", backing_file=base.name)
    with libvdisk.open(overlay, "r+") as image:
        assert image.snapshots() == []
        assert [s.name for s in image.backing.snapshots()] == ["in base"]
        with pytest.raises(libvdisk.ReadOnly):
            image.backing.snapshot_delete("in base")


def test_snapshot_record_repr_and_equality(tmp_path):
    path = tmp_path / "disk.qcow2"
    libvdisk.create(path, "qcow2", MIB)
    with libvdisk.open(path, "r+") as image:
        record = image.snapshot_create("s")
        assert image.snapshots() == [record]
    assert re.search(r"Snapshot\(id='1', name='s', date=datetime", repr(record))
    with pytest.raises(AttributeError):
        record.name = "t"  # frozen
