"""vdisk amend against qemu-img amend: the same refusals in the same words,
and after each successful amend an image that qemu-img checks clean and
that reads as before (its snapshots too)."""
import shutil

import pytest

from conftest import MiB, same_result

SIZE = 16 * MiB


def write(qemu_io, path, *commands, fmt="qcow2"):
    args = []
    for command in commands:
        args += ["-c", command]
    qemu_io("-f", fmt, *args, path, check=0)


def plain(qemu_img, qemu_io, d, opts="compat=1.1"):
    """Data, allocated zero clusters, unallocated zero clusters and a discard."""
    path = d / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, path, SIZE, check=0)
    write(qemu_io, path, "write -P 1 0 256k", "write -P 2 1M 64k", "write -z 64k 64k",
          "write -z 4M 128k", "discard 1M 64k", "write -P 3 8M 32k")
    return path


def with_backing(qemu_img, qemu_io, d, opts="compat=1.1"):
    """An overlay whose zero clusters hide data of its backing file."""
    base = d / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, SIZE, check=0)
    write(qemu_io, base, "write -P 7 0 4M", fmt="raw")
    path = d / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.raw", "-F", "raw", path,
             check=0)
    write(qemu_io, path, "write -z 0 128k", "write -P 8 1M 64k", "write -z 1M 64k",
          "write -P 9 2M 64k")
    return path


def with_snapshots(qemu_img, qemu_io, d, opts="compat=1.1"):
    """Zero clusters in L2 tables that a snapshot shares, and after it."""
    path = plain(qemu_img, qemu_io, d, opts)
    qemu_img("snapshot", "-c", "first", path, check=0)
    write(qemu_io, path, "write -z 0 64k", "write -P 4 6M 64k", "write -z 12M 64k")
    qemu_img("snapshot", "-c", "second", path, check=0)
    write(qemu_io, path, "write -P 5 0 64k")
    return path


def lazy(qemu_img, qemu_io, d):
    return plain(qemu_img, qemu_io, d, "lazy_refcounts=on")


def narrow(qemu_img, qemu_io, d):
    return plain(qemu_img, qemu_io, d, "refcount_bits=8")


def v2(qemu_img, qemu_io, d):
    return with_snapshots(qemu_img, qemu_io, d, "compat=0.10")


def v2_overlay(qemu_img, qemu_io, d):
    return with_backing(qemu_img, qemu_io, d, "compat=0.10")


IMAGES = {f.__name__: f for f in (plain, with_backing, with_snapshots, lazy, narrow, v2,
                                  v2_overlay)}


def prepare(qemu_img, qemu_io, tmp_path, kind):
    """The image twice (ours, theirs) and the original, in three folders."""
    paths = []
    for name in ("original", "ours", "theirs"):
        d = tmp_path / name
        d.mkdir()
        if not paths:
            paths.append(IMAGES[kind](qemu_img, qemu_io, d))
            continue
        for f in (tmp_path / "original").iterdir():
            shutil.copy(f, d / f.name)
        paths.append(d / paths[0].name)
    return paths


def format_specific(qemu_img, path):
    info = qemu_img.json("info", "--output=json", path)
    return info["format-specific"]["data"], info["virtual-size"]


def snapshots(qemu_img, path):
    return [s["name"] for s in qemu_img.json("info", "--output=json", path).get("snapshots", [])]


def assert_reads_as(qemu_img, tmp_path, amended, original):
    check = qemu_img("check", amended)
    assert check.returncode == 0, check.stdout + check.stderr
    compare = qemu_img("compare", amended, original)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    for name in snapshots(qemu_img, original):
        assert name in snapshots(qemu_img, amended)
        for image, out in ((amended, "a.raw"), (original, "o.raw")):
            qemu_img("convert", "-l", f"snapshot.name={name}", "-O", "raw", image, tmp_path / out,
                     check=0)
        assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "o.raw").read_bytes(), name


@pytest.mark.parametrize("kind,options", [
    ("plain", "lazy_refcounts=on"),
    ("lazy", "lazy_refcounts=off"),
    ("plain", "compat=0.10"),
    ("lazy", "compat=0.10"),
    ("with_backing", "compat=0.10"),
    ("with_snapshots", "compat=0.10"),
    ("v2", "compat=1.1"),
    ("v2", "compat=1.1,lazy_refcounts=on"),
    ("v2_overlay", "compat=v3"),
    ("plain", "compat=1.1"),
    ("with_backing", "backing_file=base.raw,backing_fmt=raw"),
    ("plain", "size=32M"),
    ("plain", "lazy_refcounts=on,size=24M"),
    ("plain", "refcount_bits=1"),
    ("with_snapshots", "refcount_bits=2"),
    ("with_backing", "refcount_bits=64"),
    ("lazy", "refcount_bits=8"),
    ("narrow", "compat=0.10,refcount_bits=16"),
    ("v2", "compat=1.1,refcount_bits=4"),
])
def test_amend_as_qemu_img(vdisk, qemu_img, qemu_io, tmp_path, kind, options):
    original, ours_path, theirs_path = prepare(qemu_img, qemu_io, tmp_path, kind)
    ours = vdisk("amend", "-o", options, ours_path)
    theirs = qemu_img("amend", "-o", options, theirs_path)
    assert same_result(ours, theirs), (ours, theirs)
    assert ours.returncode == 0
    assert format_specific(qemu_img, ours_path) == format_specific(qemu_img, theirs_path)
    if "size" not in options:
        assert_reads_as(qemu_img, tmp_path, ours_path, original)


@pytest.mark.parametrize("kind,options", [
    ("plain", "cluster_size=4096"),
    ("plain", "preallocation=metadata"),
    ("plain", "extended_l2=on"),
    ("plain", "compression_type=zstd"),
    ("plain", "foo=bar"),
    ("plain", "compat=0.9"),
    ("plain", "refcount_bits=3"),
    ("plain", "refcount_bits=128"),
    ("plain", "data_file=x.raw"),
    ("plain", "data_file_raw=on"),
    ("plain", "compat=0.10,lazy_refcounts=on"),
    ("plain", "compat=0.10,refcount_bits=8"),
    ("v2", "lazy_refcounts=on"),
    ("v2", "refcount_bits=8"),
    ("with_snapshots", "refcount_bits=1"),
    ("narrow", "compat=0.10"),
    ("with_snapshots", "compat=0.10,size=32M"),
    ("plain", "backing_file=base.raw"),
    ("with_backing", "backing_fmt=raw"),
    ("with_backing", "backing_file=other.raw,backing_fmt=raw"),
    ("with_backing", "backing_file="),
])
def test_refusals_as_qemu_img(vdisk, qemu_img, qemu_io, tmp_path, kind, options):
    original, ours_path, theirs_path = prepare(qemu_img, qemu_io, tmp_path, kind)
    ours = vdisk("amend", "-o", options, ours_path)
    theirs = qemu_img("amend", "-o", options, theirs_path)
    assert same_result(ours, theirs), (ours, theirs)
    assert ours.returncode == 1
    assert ours_path.read_bytes() == original.read_bytes()


@pytest.mark.parametrize("create_opts,message", [
    ("extended_l2=on", "Cannot downgrade an image with incompatible features 0x10 set"),
    ("refcount_bits=8", "compat=0.10 requires refcount_bits=16"),
    ("data_file=data.raw", "Cannot downgrade an image with a data file"),
])
def test_downgrade_refusals(vdisk, qemu_img, tmp_path, create_opts, message):
    for name in ("ours", "theirs"):
        opts = create_opts.replace("data.raw", str(tmp_path / f"{name}.raw"))
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, tmp_path / f"{name}.qcow2", SIZE,
                 check=0)
    ours = vdisk("amend", "-o", "compat=0.10", tmp_path / "ours.qcow2")
    theirs = qemu_img("amend", "-o", "compat=0.10", tmp_path / "theirs.qcow2")
    assert same_result(ours, theirs), (ours, theirs)
    assert ours.stderr == f"vdisk: {message}\n"


@pytest.mark.parametrize("option", ["encryption=on", "encrypt.format=luks"])
def test_encryption_refusal(vdisk, qemu_img, qemu_io, tmp_path, option):
    """qemu-img's first line (the hint names its own create options)."""
    original, ours_path, theirs_path = prepare(qemu_img, qemu_io, tmp_path, "plain")
    ours = vdisk("amend", "-o", option, ours_path)
    theirs = qemu_img("amend", "-o", option, theirs_path)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.splitlines()[0] == theirs.stderr.splitlines()[0].replace("qemu-img", "vdisk")
    assert ours_path.read_bytes() == original.read_bytes()


def test_bool_refusal(vdisk, qemu_img, qemu_io, tmp_path):
    """qemu-img's words, then the value (the library's message for every bool option)."""
    _, ours_path, _ = prepare(qemu_img, qemu_io, tmp_path, "plain")
    ours = vdisk("amend", "-o", "lazy_refcounts=maybe", ours_path)
    assert ours.returncode == 1
    assert ours.stderr.startswith("vdisk: Parameter 'lazy_refcounts' expects 'on' or 'off'")


@pytest.mark.parametrize("args", [
    [], ["-o", "help"], ["-f", "qcow2", "-o", "help"], ["-U", "-o", "compat=1.1"],
    ["-o", "compat=1.1", "-o"], ["-q", "-o", "compat=1.1", "one", "two"],
])
def test_usage_as_qemu_img(vdisk, qemu_img, args):
    ours, theirs = vdisk("amend", *args), qemu_img("amend", *args)
    assert ours.returncode == theirs.returncode, (ours, theirs)
    if not ours.stdout:  # the help lists our options in our words
        assert same_result(ours, theirs), (ours, theirs)


def test_repeated_options_and_help(vdisk, qemu_img, qemu_io, tmp_path):
    _, ours_path, _ = prepare(qemu_img, qemu_io, tmp_path, "v2")
    assert vdisk("amend", "-q", "-o", "compat=1.1", "-o", "lazy_refcounts=on", ours_path,
                 check=0).stdout == ""
    data, _ = format_specific(qemu_img, ours_path)
    assert (data["compat"], data["lazy-refcounts"]) == ("1.1", True)
    listing = vdisk("amend", "-o", "help", ours_path, check=0).stdout
    assert listing.startswith("Amend options for 'qcow2':\n")
    assert "  refcount_bits " in listing and "cluster_size" not in listing
    assert "-o options" in vdisk("amend", "--help", check=0).stdout


def test_raw_is_not_amendable(vdisk, qemu_img, tmp_path):
    for name in ("ours", "theirs"):
        qemu_img("create", "-q", "-f", "raw", tmp_path / name, MiB, check=0)
    ours = vdisk("amend", "-f", "raw", "-o", "size=2M", tmp_path / "ours")
    theirs = qemu_img("amend", "-f", "raw", "-o", "size=2M", tmp_path / "theirs")
    assert same_result(ours, theirs), (ours, theirs)
