"""seSparse VMDK images (ESXi), which qemu-img reads but cannot create:
built here byte by byte (make_hostile.sesparse_image), they must read as
qemu-img reads them and as the model they were built from, show the same
create type in info, and refuse writes by name, leaving the files as they were."""
import hashlib
import json

import pytest

import libvdisk
from make_hostile import SE_CAPACITY, sesparse_descriptor, sesparse_image, sesparse_model
from vdhelp import QEMU_IMG, QEMU_IO, VDISK, run


@pytest.fixture
def image(tmp_path):
    (tmp_path / "se-sesparse.vmdk").write_bytes(sesparse_image(far=True))
    path = tmp_path / "se.vmdk"
    path.write_bytes(sesparse_descriptor())
    return path, sesparse_model(far=True)


def digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_reads_as_qemu_and_the_model(image, tmp_path):
    path, model = image
    assert len(model) == SE_CAPACITY
    theirs, ours = tmp_path / "qemu.raw", tmp_path / "vdisk.raw"
    run(QEMU_IMG, "convert", "-f", "vmdk", "-O", "raw", path, theirs)
    run(VDISK, "convert", "-f", "vmdk", "-O", "raw", path, ours)
    assert theirs.read_bytes() == model
    assert ours.read_bytes() == model
    with libvdisk.open(str(path), "r", "vmdk") as img:
        assert img.size == SE_CAPACITY
        assert img.pread(0, img.size) == model
        # reads that start inside grains and cross grain and table boundaries
        for off, n in ((4096 + 100, 9000), (16 * 1024 * 1024 - 5000, 10000), (7 * 4096, 4096)):
            assert img.pread(off, n) == model[off:off + n]
        img.check()


def test_info_shows_the_create_type(image):
    path, _ = image
    theirs = json.loads(run(QEMU_IMG, "info", "--output=json", path).stdout)
    ours = json.loads(run(VDISK, "info", "--output=json", path).stdout)
    assert theirs["format-specific"]["data"]["create-type"] == "seSparse"
    assert ours["virtual-size"] == theirs["virtual-size"] == SE_CAPACITY
    assert "seSparse" in json.dumps(ours), ours
    human = run(VDISK, "info", path).stdout
    assert "create type: seSparse" in human, human


def test_writes_are_refused_by_name(image):
    path, _ = image
    before = digest(path.parent)
    with pytest.raises(libvdisk.Error) as e:
        libvdisk.open(str(path), "r+", "vmdk")
    assert "se-sesparse.vmdk" in str(e.value) and "read-only" in str(e.value), str(e.value)
    assert digest(path.parent) == before
    # as qemu-io, which refuses to open it for writing
    q = run(QEMU_IO, "-f", "vmdk", "-c", "write 0 4096", path, check=False)
    assert "No write support for seSparse" in q.stdout + q.stderr
    assert digest(path.parent) == before
