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


@pytest.fixture
def data_image(image, qemu_io):
    qemu_io("-c", "write -P 0x5a 64k 128k", image, check=0)
    return image


@pytest.mark.parametrize("opts", [
    "driver=qcow2,file.filename={}",
    "file.filename={}",
    "driver=qcow2,file.filename={},force-share=on",
    "driver=raw,file.filename={}",
    "driver=qcow2,file.filename={}.missing",
    "driver=qcow2,file.filename={},bogus=1",
    "driver=qcow2",
])
def test_convert_image_opts_as_qemu_img(vdisk, qemu_img, data_image, tmp_path, opts):
    """convert --image-opts: the source is an option string."""
    source = opts.format(data_image)
    ours, theirs = (tool("convert", "--image-opts", "-O", "qcow2", source, tmp_path / out)
                    for tool, out in ((vdisk, "ours.qcow2"), (qemu_img, "theirs.qcow2")))
    assert ours.returncode == theirs.returncode, (ours, theirs)
    if theirs.returncode == 1:
        assert ours.stderr.startswith(f"vdisk: Could not open '{source}': "), ours.stderr
    else:
        qemu_img("compare", "-f", "qcow2", "-F", "qcow2", tmp_path / "ours.qcow2",
                 tmp_path / "theirs.qcow2", check=0)


@pytest.mark.parametrize("args", [
    ["-n", "--target-image-opts", "{src}", "driver=qcow2,file.filename={dst}"],
    ["-n", "--target-image-opts", "{src}", "file.filename={dst}"],   # the format is probed
    ["-n", "--target-image-opts", "{src}", "driver=qcow2,file.filename={dst},force-share=on"],
    ["-n", "--target-image-opts", "{src}", "driver=raw,file.filename={dst}"],  # smaller
    ["-n", "--target-image-opts", "{src}", "driver=qcow2"],
    ["--target-image-opts", "{src}", "driver=qcow2,file.filename={dst}"],  # needs -n
    ["-n", "--target-image-opts", "-O", "qcow2", "{src}", "driver=qcow2,file.filename={dst}"],
    ["--image-opts", "-n", "--target-image-opts", "driver=qcow2,file.filename={src}",
     "driver=qcow2,file.filename={dst}"],
])
def test_convert_target_image_opts_as_qemu_img(vdisk, qemu_img, data_image, tmp_path, args):
    """convert --target-image-opts: with -n, the destination is an option string."""
    results = []
    for tool, name in ((vdisk, "ours.qcow2"), (qemu_img, "theirs.qcow2")):
        dst = tmp_path / name
        qemu_img("create", "-f", "qcow2", dst, "1M", check=0)
        results.append(tool("convert", *(a.format(src=data_image, dst=dst) for a in args)))
    ours, theirs = results
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert ours.stdout == theirs.stdout
    if theirs.returncode == 0:
        for name in "ours.qcow2", "theirs.qcow2":
            qemu_img("compare", "-f", "qcow2", "-F", "qcow2", data_image, tmp_path / name,
                     check=0)
    elif "--target-image-opts requires" in theirs.stderr or "mutually" in theirs.stderr:
        assert ours.stderr == theirs.stderr.replace("qemu-img", "vdisk")
