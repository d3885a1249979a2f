"""Image.rebase() and Image.commit(): the same results as qemu-img rebase and
commit on a copy of the chain, clean images, and the borrowed wrappers of the
replaced chain retired safely."""

import json
import shutil
import threading

import pytest

import libvdisk
from conftest import MIB, needs_qemu_img, pattern, qemu_img

pytestmark = pytest.mark.usefixtures("library")

SIZE = 4 * MIB
CLUSTER = 65536


@pytest.fixture(autouse=True)
def need_qcow2(library):
    if "qcow2" not in libvdisk.formats():
        pytest.skip("libvdisk has no qcow2")


def qemu_ok(*args, cwd=None):
    result = qemu_img(*args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_clean(path):
    result = qemu_img("check", "--output=json", path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert not report.get("corruptions") and not report.get("leaks"), report


def same(left, right, *args):
    """Whether qemu-img compare finds the two images' guest contents equal."""
    result = qemu_img("compare", *args, left, right)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode == 0


def qemu_info(path):
    return json.loads(qemu_ok("info", "--output=json", path).stdout)


def backing_of(path):
    info = qemu_info(path)
    return info.get("backing-filename"), info.get("backing-filename-format")


class Chain:
    """base.qcow2 <- mid.qcow2 <- top.qcow2 in directory/, written with libvdisk
    so that every layer defines something the others read differently:

    base: pattern over [0, 2M); mid: its own data over [1M, 1M+192K) and
    [2M+4K, 2M+8K) (copy-on-write of base's zeroes), a zero cluster at 64K;
    top: data at [3M, 3M+64K) and over [1M+64K+512, +4K), a zero cluster at 1M.
    The raw file base.raw holds base's contents too, for raw backing tests.
    """

    def __init__(self, directory):
        directory.mkdir()
        self.dir = directory
        self.base, self.mid, self.top = (directory / name
                                         for name in ("base.qcow2", "mid.qcow2", "top.qcow2"))
        self.raw = directory / "base.raw"
        base_data = pattern(2 * MIB, 80)
        libvdisk.create(self.base, "qcow2", SIZE)
        with libvdisk.open(self.base, "r+") as image:
            image.pwrite(0, base_data)
        with open(self.raw, "wb") as file:
            file.write(base_data)
            file.truncate(SIZE)
        libvdisk.create(self.mid, "qcow2", backing_file="base.qcow2")
        with libvdisk.open(self.mid, "r+") as image:
            image.pwrite(MIB, pattern(192 * 1024, 81))
            image.pwrite(2 * MIB + 4096, pattern(4096, 82))
            image.write_zeroes(CLUSTER, CLUSTER)
        libvdisk.create(self.top, "qcow2", backing_file="mid.qcow2")
        with libvdisk.open(self.top, "r+") as image:
            image.pwrite(3 * MIB, pattern(CLUSTER, 83))
            image.pwrite(MIB + CLUSTER + 512, pattern(4096, 84))
            image.write_zeroes(MIB, CLUSTER)

    def copy(self, directory):
        """A copy of the chain in another directory (the names are relative)."""
        shutil.copytree(self.dir, directory)
        clone = Chain.__new__(Chain)
        clone.dir = directory
        clone.base, clone.mid, clone.top, clone.raw = (
            directory / path.name for path in (self.base, self.mid, self.top, self.raw))
        return clone

    def snapshot_contents(self, name):
        """The guest contents of each image now, as raw files under name-*.raw."""
        refs = {}
        for path in (self.base, self.mid, self.top):
            refs[path.stem] = self.dir.parent / f"{name}-{path.stem}.raw"
            qemu_ok("convert", "-O", "raw", path, refs[path.stem])
        return refs


@pytest.fixture
def chains(tmp_path):
    """The chain, a copy for qemu-img, and the raw contents before any change."""
    ours = Chain(tmp_path / "ours")
    theirs = ours.copy(tmp_path / "theirs")
    before = ours.snapshot_contents("before")
    return ours, theirs, before


# -- rebase -------------------------------------------------------------------

@needs_qemu_img
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_rebase_skipping_a_layer(chains, unsafe):
    ours, theirs, before = chains
    with libvdisk.open(ours.top, "r+") as image:
        assert [i.filename for i in image.chain()] == [str(ours.top), str(ours.mid),
                                                       str(ours.base)]
        # the safe mode probes and records the format; -u needs it (as qemu-img does)
        image.rebase("base.qcow2", "qcow2" if unsafe else None, unsafe=unsafe)
        assert [i.filename for i in image.chain()] == [str(ours.top), str(ours.base)]
        assert image.info()["backing-filename"] == "base.qcow2"
        assert image.check().clean
    qemu_ok("rebase", *(["-u"] if unsafe else []), "-b", "base.qcow2", "-F", "qcow2",
            theirs.top, cwd=theirs.dir)
    assert backing_of(ours.top) == backing_of(theirs.top) == ("base.qcow2", "qcow2")
    assert same(ours.top, theirs.top)
    # the safe mode keeps the guest's view; the unsafe one loses mid's data
    assert same(ours.top, before["top"], "-F", "raw") is not unsafe
    assert_clean(ours.top)
    assert same(ours.mid, before["mid"], "-F", "raw")  # untouched


@needs_qemu_img
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
@pytest.mark.parametrize("none", [None, ""], ids=["None", "empty"])
def test_rebase_onto_nothing(chains, unsafe, none):
    ours, theirs, before = chains
    with libvdisk.open(ours.top, "r+") as image:
        old = image.backing
        image.rebase(none, unsafe=unsafe)
        assert image.backing is None and image.chain() == [image]
        assert old.closed
        info = image.info()
        assert "backing-filename" not in info and "backing-filename-format" not in info
    qemu_ok("rebase", *(["-u"] if unsafe else []), "-b", "", theirs.top)
    assert backing_of(ours.top) == backing_of(theirs.top) == (None, None)
    assert same(ours.top, theirs.top)
    assert same(ours.top, before["top"], "-F", "raw") is not unsafe
    assert_clean(ours.top)


@needs_qemu_img
def test_rebase_onto_raw(chains):
    ours, theirs, before = chains
    with libvdisk.open(ours.top, "r+") as image:
        with pytest.raises(libvdisk.InvalidArgument, match="raw"):
            image.rebase("base.raw")  # a probed raw file is refused
        assert image.info()["backing-filename"] == "mid.qcow2"
        assert image.pread(0, SIZE) == before["top"].read_bytes()
        image.rebase("base.raw", "raw")
        assert image.backing.format == "raw"
        assert image.backing.filename == str(ours.raw)
    qemu_ok("rebase", "-b", "base.raw", "-F", "raw", theirs.top, cwd=theirs.dir)
    assert backing_of(ours.top) == backing_of(theirs.top) == ("base.raw", "raw")
    assert same(ours.top, theirs.top)
    assert same(ours.top, before["top"], "-F", "raw")
    assert_clean(ours.top)


@needs_qemu_img
def test_rebase_mid_onto_nothing_seen_from_a_new_top(chains):
    """Rebasing an image with its own overlay's view in mind: the top over it
    still reads the same."""
    ours, theirs, before = chains
    with libvdisk.open(ours.mid, "r+") as image:
        image.rebase(None)
    qemu_ok("rebase", "-b", "", theirs.mid)
    assert same(ours.mid, theirs.mid)
    assert same(ours.top, before["top"], "-F", "raw")
    assert_clean(ours.mid)


def test_rebase_onto_a_missing_file(tmp_path):
    chain = Chain(tmp_path / "c")
    with libvdisk.open(chain.top, "r+") as image:
        before = image.pread(0, SIZE)
        with pytest.raises((libvdisk.NotFound, libvdisk.BackingError), match="later.qcow2"):
            image.rebase("later.qcow2")
        # nothing changed: the chain is there again
        assert image.info()["backing-filename"] == "mid.qcow2"
        assert [i.filename for i in image.chain()] == [str(chain.top), str(chain.mid),
                                                       str(chain.base)]
        assert image.pread(0, SIZE) == before
        image.rebase("later.qcow2", "qcow2", unsafe=True)  # -u records the name as given
        assert image.info()["backing-filename"] == "later.qcow2"
        assert image.backing is None
    with pytest.raises((libvdisk.NotFound, libvdisk.BackingError), match="later.qcow2"):
        libvdisk.open(chain.top)
    shutil.copyfile(chain.mid, tmp_path / "c" / "later.qcow2")
    with libvdisk.open(chain.top) as image:
        assert image.pread(0, SIZE) == before


def test_rebase_and_commit_need_read_write(tmp_path):
    chain = Chain(tmp_path / "c")
    with libvdisk.open(chain.top) as image:
        backing = image.backing
        with pytest.raises(libvdisk.ReadOnly):
            image.rebase(None)
        with pytest.raises(libvdisk.ReadOnly):
            image.commit()
        with pytest.raises(libvdisk.ReadOnly):
            backing.rebase(None)  # a borrowed image is read-only
        assert image.backing is backing and not backing.closed  # nothing was replaced
        assert backing.pread(0, 16) == image.pread(0, 16)
    with libvdisk.open(chain.base, "r+") as image:
        with pytest.raises(libvdisk.InvalidArgument, match="no backing"):
            image.commit()


def test_rebase_raw_image(tmp_path):
    path = tmp_path / "disk.raw"
    libvdisk.create(path, "raw", MIB)
    with libvdisk.open(path, "r+") as image:
        with pytest.raises(libvdisk.Unsupported):
            image.rebase(None, unsafe=True)


# -- commit -------------------------------------------------------------------

@needs_qemu_img
@pytest.mark.parametrize("empty", [True, False], ids=["empty", "keep"])
def test_commit(chains, empty):
    ours, theirs, before = chains
    with libvdisk.open(ours.top, "r+") as image:
        old_mid = image.backing
        image.commit(empty=empty)
        assert old_mid.closed
        assert [i.filename for i in image.chain()] == [str(ours.top), str(ours.mid),
                                                       str(ours.base)]
        assert image.pread(0, SIZE) == before["top"].read_bytes()
        assert image.backing.pread(0, SIZE) == before["top"].read_bytes()
        own = [e for e in image.map() if e.depth == 0 and e.present]
        assert bool(own) is not empty
        assert image.check().clean
    qemu_ok("commit", *([] if empty else ["-d"]), theirs.top)
    for ours_path, theirs_path in ((ours.top, theirs.top), (ours.mid, theirs.mid),
                                   (ours.base, theirs.base)):
        assert same(ours_path, theirs_path), ours_path.name
        assert_clean(ours_path)
    assert same(ours.mid, before["top"], "-F", "raw")
    assert same(ours.base, before["base"], "-F", "raw")
    assert backing_of(ours.top) == ("mid.qcow2", "qcow2")
    if empty:  # as empty as qemu leaves it: the guest reads through to mid everywhere
        with libvdisk.open(ours.top, no_backing=True) as image:
            assert all(not e.present for e in image.map())


@needs_qemu_img
def test_commit_grows_the_backing_file(chains):
    ours, theirs, _ = chains
    for chain in (ours, theirs):
        with libvdisk.open(chain.top, "r+") as image:
            image.resize(2 * SIZE)
            image.pwrite(2 * SIZE - 4096, b"tail" * 1024)
    with libvdisk.open(ours.top, "r+") as image:
        image.commit()
        assert image.backing.size == 2 * SIZE
    qemu_ok("commit", theirs.top)
    assert qemu_info(ours.mid)["virtual-size"] == qemu_info(theirs.mid)["virtual-size"] \
        == 2 * SIZE
    assert same(ours.mid, theirs.mid) and same(ours.top, theirs.top)
    assert_clean(ours.mid)
    assert_clean(ours.top)


@needs_qemu_img
def test_commit_into_raw(tmp_path):
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    base.write_bytes(pattern(MIB, 85))
    libvdisk.create(top, "qcow2", backing_file="base.raw", backing_fmt="raw")
    with libvdisk.open(top, "r+") as image:
        image.pwrite(4096, b"committed")
        image.commit()
        assert image.backing.pread(4096, 9) == b"committed"
    expected = bytearray(pattern(MIB, 85))
    expected[4096:4096 + 9] = b"committed"
    assert base.read_bytes() == expected
    assert_clean(top)


# -- borrowed wrappers of a replaced chain ------------------------------------

@pytest.mark.parametrize("operation", ["rebase", "unsafe rebase", "commit", "failed rebase"])
def test_borrowed_wrappers_are_retired(tmp_path, operation):
    chain = Chain(tmp_path / "c")
    with libvdisk.open(chain.top, "r+") as image:
        mid = image.backing
        base = mid.backing
        contents = mid.pread(0, 4096)
        assert image.chain() == [image, mid, base]
        if operation == "rebase":
            image.rebase("base.qcow2")
        elif operation == "unsafe rebase":
            image.rebase("mid.qcow2", "qcow2", unsafe=True)  # the same file again: a new handle still
        elif operation == "commit":
            image.commit()
        else:
            with pytest.raises(libvdisk.Error):
                image.rebase("absent.qcow2")
        for stale in (mid, base):
            assert stale.closed
            for call in (lambda: stale.pread(0, 1), lambda: stale.read(1),
                         lambda: stale.size, stale.info, stale.map, stale.snapshots,
                         lambda: stale.backing, stale.chain, lambda: stale.seek(0)):
                with pytest.raises(ValueError, match="closed"):
                    call()
            stale.close()  # harmless
        new = image.chain()
        assert [member.filename for member in new] == (
            [str(chain.top), str(chain.base)] if operation == "rebase" else
            [str(chain.top), str(chain.mid), str(chain.base)])
        assert all(member is not mid and member is not base for member in new[1:])
        assert not any(member.closed for member in new)
        assert new[1].pread(0, 4096) == contents  # mid does not define this range
        assert image.backing is new[1]  # cached again
    assert all(member.closed for member in new)


def test_rebase_while_threads_use_the_borrowed_images(tmp_path):
    """Threads reading through borrowed wrappers see ValueError once a rebase
    begins, never a freed handle; the rebase waits for their calls in flight."""
    chain = Chain(tmp_path / "c")
    with libvdisk.open(chain.top, "r+") as image:
        expected = image.pread(0, SIZE)
        mid = image.backing
        base = mid.backing
        contents = {id(mid): mid.pread(0, SIZE), id(base): base.pread(0, SIZE)}
        started, outcomes, lock = threading.Barrier(7), [], threading.Lock()

        def reader(wrapper):
            started.wait()
            try:
                while True:
                    assert wrapper.pread(0, SIZE) == contents[id(wrapper)]
                    wrapper.backing  # noqa: B018 (the property calls the library)
                    wrapper.snapshots()
            except ValueError as exc:
                with lock:
                    outcomes.append(str(exc))

        threads = [threading.Thread(target=reader, args=(w,)) for w in (mid, mid, base, base)]
        threads += [threading.Thread(target=walk_chain, args=(image, chain, started))
                    for _ in range(2)]
        for thread in threads:
            thread.start()
        started.wait()
        image.rebase("base.qcow2")
        for thread in threads:
            thread.join()
        assert outcomes == ["I/O operation on closed image"] * 4
        assert image.pread(0, SIZE) == expected
        assert [m.filename for m in image.chain()] == [str(chain.top), str(chain.base)]


def walk_chain(image, chain, started):
    """Walk the chain repeatedly while it is replaced: a retired wrapper on the
    way raises ValueError; a completed walk is the old or the new chain."""
    started.wait()
    for _ in range(300):
        try:
            names = [member.filename for member in image.chain()]
        except ValueError:
            continue
        assert names in ([str(chain.top), str(chain.mid), str(chain.base)],
                         [str(chain.top), str(chain.base)])
