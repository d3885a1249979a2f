"""vdisk info against qemu-img info."""
import json
import os
import subprocess

import pytest

from conftest import MiB, make_sparse

LAYOUTS = {
    "empty": (0, []),
    "hole": (8 * MiB, []),
    "full": (2 * MiB, [(0, 2 * MiB)]),
    "mixed": (10 * MiB, [(2 * MiB, MiB), (5 * MiB, 2 * MiB)]),
}


@pytest.fixture(params=sorted(LAYOUTS))
def image(request, tmp_path):
    size, data = LAYOUTS[request.param]
    return make_sparse(tmp_path / f"{request.param}.img", size, data)


@pytest.mark.parametrize("output", ["json", "human"])
def test_output_identical_to_qemu_img(vdisk, qemu_img, image, output):
    ours = vdisk("info", f"--output={output}", image, check=0)
    theirs = qemu_img("info", f"--output={output}", image, check=0)
    assert ours.stdout == theirs.stdout


def test_json_fields(vdisk, qemu_img, image):
    ours = vdisk.json("info", "--output=json", image)
    theirs = qemu_img.json("info", "--output=json", image)
    for key in ("virtual-size", "format", "filename", "actual-size", "dirty-flag"):
        assert ours[key] == theirs[key], key
    assert list(ours) == list(theirs)  # same keys, same order


def test_relative_filename_and_default_output(vdisk, qemu_img, tmp_path):
    make_sparse(tmp_path / "r.img", 3 * MiB, [(MiB, 4096)])
    ours = vdisk("info", "r.img", cwd=tmp_path, check=0).stdout
    assert ours == qemu_img("info", "r.img", cwd=tmp_path, check=0).stdout
    assert ours.startswith("image: r.img\nfile format: raw\nvirtual size: 3 MiB (3145728 bytes)\n")


@pytest.mark.parametrize("name", ['quote"d.img', "back\\slash.img", "tab\there.img",
                                  "unicodé ☃.img", "emoji \U0001F600.img"])
def test_json_escapes_filenames_like_qemu(vdisk, qemu_img, tmp_path, name):
    make_sparse(tmp_path / name, MiB)
    ours = vdisk("info", "--output=json", name, cwd=tmp_path, check=0).stdout
    assert ours == qemu_img("info", "--output=json", name, cwd=tmp_path, check=0).stdout
    assert json.loads(ours)["filename"] == name


@pytest.mark.parametrize("name", [b"bad\xff.img", b"stray\x80.img", b"cut\xc3.img",
                                  b"overlong\xc0\xaf.img", b"surrogate\xed\xa0\x80.img",
                                  b"controls\x01\x1f\x7f.img", b"too-big\xf4\x90\x80\x80.img"])
def test_json_replaces_invalid_utf8_like_qemu(vdisk, qemu_img, tmp_path, name):
    with open(os.path.join(bytes(tmp_path), name), "wb") as f:
        f.truncate(4096)
    outputs = [subprocess.run([tool.path, "info", "--output=json", name], cwd=tmp_path,
                              capture_output=True, check=True).stdout
               for tool in (vdisk, qemu_img)]
    assert outputs[0] == outputs[1]
    json.loads(outputs[0])  # still valid JSON


def test_format_option_and_force_share(vdisk, tmp_path):
    path = make_sparse(tmp_path / "a.img", MiB)
    info = vdisk.json("info", "-f", "raw", "-U", "--output=json", path)
    assert info["format"] == "raw" and info["virtual-size"] == MiB
    assert vdisk("info", "--force-share", path, check=0).stdout.startswith("image: ")


def test_missing_file(vdisk, tmp_path):
    result = vdisk("info", "missing.img", cwd=tmp_path, check=1)
    assert result.stderr == ("vdisk: Could not open 'missing.img': Could not open "
                             "'missing.img': No such file or directory\n")
    assert result.stdout == ""


def test_unknown_format(vdisk, tmp_path):
    path = make_sparse(tmp_path / "a.img", MiB)
    result = vdisk("info", "-f", "nosuchformat", path, check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{path}': ")
    assert "nosuchformat" in result.stderr


def test_bad_output_format(vdisk, tmp_path):
    path = make_sparse(tmp_path / "a.img", MiB)
    result = vdisk("info", "--output=xml", path, check=1)
    assert result.stderr == "vdisk: --output must be used with human or json as argument.\n"


def test_directory(vdisk, tmp_path):
    result = vdisk("info", tmp_path, check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{tmp_path}': ")
