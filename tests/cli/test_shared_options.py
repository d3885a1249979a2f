"""--object and --image-opts, parsed once for every command, against qemu-img."""
import pytest

from conftest import held_by_qemu_io, same_result


@pytest.fixture
def image(tmp_path, qemu_img):
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M", check=0)
    return path


@pytest.mark.parametrize("definition", [
    "secret,id=s0,data=letmein",
    "qom-type=secret,id=s0,data=x",
    "secret,id=s0,data=x,format=base64",
    "secret,id=s0",                    # neither data nor file
    "secret,data=x",                   # no id
    "secret,id=0bad,data=x",           # not an identifier
    "secret,id=s0,data=x,bogus=1",
    "secret,id=s0,data=x,format=hex",
    "nosuchtype,id=s0",
    "id=s0,data=x",                    # no type
])
@pytest.mark.parametrize("command", ["info", "map", "check"])
def test_object_as_qemu_img(vdisk, qemu_img, image, definition, command):
    args = [command, "--object", definition, image]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert same_result(ours, theirs), (ours, theirs)


def test_object_file(vdisk, qemu_img, image, tmp_path):
    secret = tmp_path / "key"
    secret.write_text("letmein")
    for definition in [f"secret,id=s0,file={secret}", f"secret,id=s0,file={tmp_path}/none",
                       f"secret,id=s0,file={secret},data=x"]:
        ours, theirs = vdisk("info", "--object", definition, image), \
            qemu_img("info", "--object", definition, image)
        assert ours.returncode == theirs.returncode and ours.stdout == theirs.stdout, definition
    twice = ["--object", "secret,id=s0,data=x", "--object", "secret,id=s0,data=y"]
    ours, theirs = vdisk("info", *twice, image), qemu_img("info", *twice, image)
    assert same_result(ours, theirs), (ours, theirs)


def test_object_on_create(vdisk, tmp_path):
    vdisk("create", "--object", "secret,id=s0,data=x", "-f", "raw", tmp_path / "n.raw", "1M",
          check=0)


@pytest.mark.parametrize("command", ["info", "map", "check"])
@pytest.mark.parametrize("opts", [
    "driver=qcow2,file.filename={}",
    "file.filename={}",
    "driver=qcow2,file.driver=file,file.filename={},force-share=on",
    "driver=raw,file.filename={}",
    "driver=qcow2,file.filename={}.missing",
    "driver=qcow2,file.filename={},bogus=1",
    "driver=qcow2,file.filename={},force-share=maybe",
    "driver=qcow2",
])
def test_image_opts_as_qemu_img(vdisk, qemu_img, image, command, opts):
    args = [command, "--image-opts", opts.format(image)]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert ours.returncode == theirs.returncode and ours.stdout == theirs.stdout, (ours, theirs)
    if theirs.returncode == 1:
        assert ours.stderr.startswith(f"vdisk: Could not open '{args[-1]}': "), ours.stderr


def test_image_opts_with_format_refused(vdisk, qemu_img, image):
    args = ["info", "--image-opts", "-f", "qcow2", f"driver=qcow2,file.filename={image}"]
    assert same_result(vdisk(*args), qemu_img(*args))


def test_image_opts_only_where_qemu_img_takes_it(vdisk, tmp_path):
    result = vdisk("create", "--image-opts", "-f", "raw", tmp_path / "x.raw", "1M", check=1)
    assert result.stderr.startswith("vdisk: unrecognized option '--image-opts'")


@pytest.mark.parametrize("opts", ["force-share=on", "file.locking=off", "file.locking=on",
                                  "force-share=off"])
def test_image_opts_locking(vdisk, qemu_img, qemu_io, image, opts):
    with held_by_qemu_io(qemu_io, image):
        args = ["info", "--image-opts", f"driver=qcow2,file.filename={image},{opts}"]
        ours, theirs = vdisk(*args), qemu_img(*args)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), (ours, theirs)
