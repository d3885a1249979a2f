"""Images in use survive create and convert: an image another process holds
(its QEMU write lock), the source itself, a file of the source's chain. Like
qemu-img, vdisk fails with exit status 1 and leaves the file untouched;
unlike qemu-img, also when the source is opened without locks (-U)."""
import pytest

from conftest import held_by_qemu_io, md5


@pytest.fixture
def image(qemu_img, qemu_io, tmp_path):
    """A qcow2 image with data in it."""
    path = tmp_path / "busy.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M", check=0)
    qemu_io("-c", "write -P 0x5a 0 64k", path, check=0)
    return path


@pytest.fixture
def chain(qemu_img, qemu_io, image, tmp_path):
    """An overlay of image (its base), with data of its own."""
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", image.name, "-F", "qcow2", overlay, check=0)
    qemu_io("-c", "write -P 0x33 64k 64k", overlay, check=0)
    return overlay


def assert_refused(result, path, why):
    assert result.returncode == 1
    assert str(path) in result.stderr and why in result.stderr, result.stderr


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_create_over_an_image_qemu_holds(vdisk, qemu_img, qemu_io, image, fmt):
    before = md5(image)
    with held_by_qemu_io(qemu_io, image):
        ours = vdisk("create", "-f", fmt, image, "1M")
        theirs = qemu_img("create", "-f", fmt, image, "1M")
        assert md5(image) == before
    assert_refused(ours, image, '"write" lock')
    assert theirs.returncode == ours.returncode
    assert 'Failed to get "write" lock' in theirs.stderr


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_convert_onto_an_image_qemu_holds(vdisk, qemu_img, qemu_io, image, tmp_path, fmt):
    source = tmp_path / "source.raw"
    source.write_bytes(b"\x01" * 65536)
    before = md5(image)
    with held_by_qemu_io(qemu_io, image):
        ours = vdisk("convert", "-O", fmt, source, image)
        theirs = qemu_img("convert", "-O", fmt, source, image)
        assert md5(image) == before
    assert_refused(ours, image, '"write" lock')
    assert ours.stderr.startswith(f"vdisk: {image}: error while converting {fmt}: ")
    assert theirs.returncode == ours.returncode


@pytest.mark.parametrize("force_share", [[], ["-U"]])
def test_convert_onto_the_source_backing_file(vdisk, qemu_img, chain, image, force_share):
    before = md5(image)
    ours = vdisk("convert", *force_share, "-O", "qcow2", chain, image)
    assert md5(image) == before
    assert_refused(ours, image, "in use")
    assert qemu_img("check", image).returncode == 0


@pytest.mark.parametrize("force_share", [[], ["-U"]])
def test_convert_onto_the_source_itself(vdisk, chain, force_share):
    before = md5(chain)
    ours = vdisk("convert", *force_share, "-O", "qcow2", chain, chain)
    assert md5(chain) == before
    assert_refused(ours, chain, "in use")


def test_convert_onto_the_data_file_of_the_source(vdisk, qemu_img, qemu_io, tmp_path):
    source = tmp_path / "source.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "data_file=source.data", source, "1M", cwd=tmp_path,
             check=0)
    qemu_io("-c", "write -P 7 0 64k", source.name, cwd=tmp_path, check=0)
    data = tmp_path / "source.data"
    before = md5(data)
    ours = vdisk("convert", "-U", "-O", "raw", source, data)
    assert md5(data) == before
    assert_refused(ours, data, "external data file")


def test_create_over_its_own_backing_file(vdisk, qemu_img, image):
    before = md5(image)
    ours = vdisk("create", "-f", "qcow2", "-b", image, "-F", "qcow2", image)
    theirs = qemu_img("create", "-f", "qcow2", "-b", image, "-F", "qcow2", image)
    assert md5(image) == before
    assert_refused(ours, image, "in use")
    assert theirs.returncode == ours.returncode


@pytest.mark.parametrize("force_share", [[], ["-U"]])
@pytest.mark.parametrize("read_only", [False, True], ids=["held-rw", "held-ro"])
@pytest.mark.parametrize("held", ["new", "old"])
def test_rebase_while_qemu_holds_a_backing_file(vdisk, qemu_img, qemu_io, chain, image, tmp_path,
                                                force_share, read_only, held):
    """rebase -U opens the new backing file without locks: it succeeds while
    another process holds that file read-write, as qemu-img's does. The old
    backing file is opened with the image (locked, -U or not), so a writer
    holding it makes both tools fail."""
    new = tmp_path / "new.qcow2"
    qemu_img("create", "-f", "qcow2", new, "1M", check=0)
    qemu_io("-c", "write -P 0x77 0 32k", new, check=0)
    ours_image, theirs_image = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for copy in ours_image, theirs_image:
        copy.write_bytes(chain.read_bytes())
    args = ["rebase", *force_share, "-f", "qcow2", "-b", new.name, "-F", "qcow2"]
    with held_by_qemu_io(qemu_io, new if held == "new" else image, read_only=read_only):
        ours = vdisk(*args, ours_image)
        theirs = qemu_img(*args, theirs_image)
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    assert ours.returncode == (1 if not read_only and (held == "old" or not force_share) else 0)
    if ours.returncode:
        assert '"write" lock' in ours.stderr, ours.stderr
    # either rebased, or untouched: the guest sees the same data both ways
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", chain, ours_image).returncode == 0
    assert qemu_img.json("info", "--output=json", ours_image).get("backing-filename") == \
        qemu_img.json("info", "--output=json", theirs_image).get("backing-filename")
