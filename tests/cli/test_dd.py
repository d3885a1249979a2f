"""vdisk dd against qemu-img dd: the same output image, messages and exit status."""
import os

import pytest

from conftest import MiB, make_sparse, same_result


@pytest.fixture
def sources(tmp_path, qemu_img, qemu_io):
    odd = tmp_path / "odd.raw"  # not a whole number of sectors: read as rounded up
    odd.write_bytes(os.urandom(10 * 512 + 100))
    sparse = make_sparse(tmp_path / "sparse.raw", 3 * MiB, [(MiB, 70000)])
    q = tmp_path / "src.qcow2"
    qemu_img("create", "-f", "qcow2", q, "2M", check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 7 100k 300k", q, check=0)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "src.qcow2", "-F", "qcow2", top, check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 8 64k 64k", top, check=0)
    return {"odd": odd, "sparse": sparse, "qcow2": q, "chain": top}


@pytest.mark.parametrize("operands", [
    [], ["bs=512", "skip=2", "count=5"], ["bs=1k", "count=3"], ["skip=100"],
    ["bs=3000", "skip=1", "count=2"], ["bs=1.5k"], ["count=0"], ["bs=64k", "skip=3"],
    ["bs=1M", "count=1"], ["bs=1k", "bs=2k"],
], ids=" ".join)
@pytest.mark.parametrize("source", ["odd", "sparse", "qcow2", "chain"])
@pytest.mark.parametrize("out_format", ["raw", "qcow2"])
def test_same_image_as_qemu_img(vdisk, qemu_img, tmp_path, sources, source, operands, out_format):
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    args = ["dd", "-O", out_format, f"if={sources[source]}", *operands]
    a, b = vdisk(*args, f"of={ours}"), qemu_img(*args, f"of={theirs}")
    assert same_result(a, b), (a, b)
    assert a.returncode == 0
    if out_format == "raw":
        assert ours.read_bytes() == theirs.read_bytes()
    else:
        qemu_img("compare", ours, theirs, check=0)
        qemu_img("check", ours, check=0)


@pytest.mark.parametrize("args", [
    ["if=in.raw"], ["of=x.raw"], ["if=in.raw", "of=x.raw", "foo=1"], ["if=in.raw", "of=x.raw",
                                                                      "extra"],
    ["if=in.raw", "of=x.raw", "bs=0"], ["if=in.raw", "of=x.raw", "bs=-1"],
    ["if=in.raw", "of=x.raw", "bs=3G"], ["if=in.raw", "of=x.raw", "count=-1"],
    ["if=in.raw", "of=x.raw", "count=abc"], ["if=in.raw", "of=x.raw", "skip=x"],
    ["-O", "nosuch", "if=in.raw", "of=x.raw"], ["-z", "if=in.raw", "of=x.raw"],
    ["if=in.raw", "of=x.raw", "-f"],
], ids=" ".join)
def test_errors_as_qemu_img(vdisk, qemu_img, tmp_path, args):
    make_sparse(tmp_path / "in.raw", MiB, [(0, 4096)])
    ours, theirs = vdisk("dd", *args, cwd=tmp_path), qemu_img("dd", *args, cwd=tmp_path)
    assert same_result(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("case", ["missing", "wrong-format", "missing-backing", "no-directory"])
def test_open_errors(vdisk, qemu_img, tmp_path, case):
    make_sparse(tmp_path / "in.raw", MiB, [(0, 4096)])
    qemu_img("create", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2",
             tmp_path / "over.qcow2", "1M", check=0)
    args = {"missing": ["if=nosuch.raw", "of=x.raw"],
            "wrong-format": ["-f", "qcow2", "if=in.raw", "of=x.raw"],
            "missing-backing": ["if=over.qcow2", "of=x.raw"],
            "no-directory": ["if=in.raw", "of=nodir/x.raw"]}[case]
    ours, theirs = vdisk("dd", *args, cwd=tmp_path), qemu_img("dd", *args, cwd=tmp_path)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "")
    expected = "vdisk: nodir/x.raw: error while creating output image: " \
        if case == "no-directory" else f"vdisk: Could not open '{args[-2][3:]}': "
    assert ours.stderr.startswith(expected), ours.stderr
    assert not (tmp_path / "x.raw").exists()


def test_image_opts(vdisk, qemu_img, tmp_path, sources):
    args = ["dd", "--image-opts", f"if=driver=qcow2,file.filename={sources['qcow2']}", "bs=64k"]
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    assert same_result(vdisk(*args, f"of={ours}"), qemu_img(*args, f"of={theirs}"))
    assert ours.read_bytes() == theirs.read_bytes()
