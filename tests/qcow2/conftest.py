import os
import subprocess

import pytest

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")
VDISK = os.environ.get("VDISK", "vdisk")


def run(*args, cwd=None, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    if check and r.returncode:
        raise AssertionError(f"{args}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


@pytest.fixture
def qemu_img():
    return lambda *a, **kw: run(QEMU_IMG, *a, **kw)


@pytest.fixture
def qemu_io():
    return lambda *a, **kw: run(QEMU_IO, *a, **kw)


@pytest.fixture
def vdisk():
    return lambda *a, **kw: run(VDISK, *a, **kw)


def assert_clean(path):
    # from the image's directory: QEMU resolves a relative data file name against the cwd
    r = run(QEMU_IMG, "check", path, check=False, cwd=os.path.dirname(os.path.abspath(path)))
    assert r.returncode == 0, f"qemu-img check {path}: {r.stdout}{r.stderr}"


def raw_content(path, cwd=None):
    out = os.path.abspath(str(path) + ".content.raw")
    run(QEMU_IMG, "convert", "-O", "raw", os.path.abspath(path), out,
        cwd=cwd or os.path.dirname(os.path.abspath(path)))
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data
