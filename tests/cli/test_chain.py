"""Backing chains built by qemu-img: info, map, convert and create -b against qemu-img.

The chain: sub/top.qcow2 (6 MiB) -> mid.qcow2 -> ../base.raw (4 MiB), with
relative names, so that every tool has to resolve them the same way.
"""
import json
import os
import shutil

import pytest

from conftest import MiB, allocated, make_sparse, same_result

KiB = 1024


@pytest.fixture(scope="module")
def chain(qemu_img, qemu_io, tmp_path_factory):
    """The chain's directory; the tests only read it."""
    root = tmp_path_factory.mktemp("chain")
    sub = root / "sub"
    sub.mkdir()
    make_sparse(root / "base.raw", 4 * MiB, data=[(0, MiB), (3 * MiB, 64 * KiB)])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", "mid.qcow2",
             cwd=sub, check=0)
    qemu_io("-c", "write -P 3 512k 1M", "mid.qcow2", cwd=sub, check=0)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "6M",
             cwd=sub, check=0)
    qemu_io("-c", "write -P 4 1M 64k", "-c", "write -z 3M 64k", "-c", "write -P 5 5M 64k",
            "top.qcow2", cwd=sub, check=0)
    return root


# (directory below the chain's, image) pairs: the names as a user would type them
IMAGES = [(".", "sub/top.qcow2"), ("sub", "top.qcow2"), ("sub", "mid.qcow2")]


@pytest.mark.parametrize("where, image", IMAGES)
@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("backing_chain", [True, False])
def test_info_identical_to_qemu_img(vdisk, qemu_img, chain, where, image, output, backing_chain):
    args = ["info", f"--output={output}", *(["--backing-chain"] if backing_chain else []), image]
    ours = vdisk(*args, cwd=chain / where, check=0)
    assert ours.stdout == qemu_img(*args, cwd=chain / where, check=0).stdout
    assert ours.stderr == ""


def test_info_backing_chain_layout(vdisk, qemu_img, chain):
    human = vdisk("info", "--backing-chain", "sub/top.qcow2", cwd=chain, check=0).stdout
    assert [block.splitlines()[0] for block in human.split("\n\n")] == [
        "image: sub/top.qcow2", "image: sub/mid.qcow2", "image: sub/../base.raw"]
    assert "backing file: mid.qcow2 (actual path: sub/mid.qcow2)\n" \
           "backing file format: qcow2\n" in human
    images = vdisk.json("info", "--output=json", "--backing-chain", "sub/top.qcow2", cwd=chain)
    assert [(i["filename"], i.get("backing-filename"), i.get("full-backing-filename"),
             i.get("backing-filename-format")) for i in images] == [
        ("sub/top.qcow2", "mid.qcow2", "sub/mid.qcow2", "qcow2"),
        ("sub/mid.qcow2", "../base.raw", "sub/../base.raw", "raw"),
        ("sub/../base.raw", None, None, None)]
    # a single image is no list, unless asked for its chain
    assert isinstance(vdisk.json("info", "--output=json", "sub/top.qcow2", cwd=chain), dict)
    args = ("info", "--output=json", "--backing-chain", "base.raw")
    ours = vdisk(*args, cwd=chain, check=0).stdout
    assert ours == qemu_img(*args, cwd=chain, check=0).stdout
    assert len(json.loads(ours)) == 1


@pytest.mark.parametrize("where, image", IMAGES)
@pytest.mark.parametrize("output", ["human", "json"])
def test_map_identical_to_qemu_img(vdisk, qemu_img, chain, where, image, output):
    ours = vdisk("map", f"--output={output}", image, cwd=chain / where, check=0)
    assert ours.stdout == qemu_img("map", f"--output={output}", image, cwd=chain / where,
                                   check=0).stdout


def test_map_names_each_file_of_the_chain(vdisk, chain):
    lines = vdisk("map", "top.qcow2", cwd=chain / "sub", check=0).stdout.splitlines()[1:]
    assert [line.split()[3] for line in lines] == [
        "../base.raw", "mid.qcow2", "top.qcow2", "mid.qcow2", "top.qcow2"]
    extents = vdisk.json("map", "--output=json", "top.qcow2", cwd=chain / "sub")
    assert {e["depth"] for e in extents} == {0, 1, 2}


@pytest.fixture
def broken_chain(chain, tmp_path):
    """A copy of the top image whose backing file is missing."""
    shutil.copy(chain / "sub" / "top.qcow2", tmp_path)
    return tmp_path / "top.qcow2"


def test_broken_chain(vdisk, qemu_img, broken_chain):
    for args in (["info", "--backing-chain"], ["map"], ["convert"], ["check"]):
        extra = [broken_chain.with_suffix(".out")] if args == ["convert"] else []
        ours = vdisk(*args, broken_chain, *extra)
        assert ours.returncode == qemu_img(*args, broken_chain, *extra).returncode == 1, args
        assert "mid.qcow2" in ours.stderr
        assert ours.stdout == ""
    assert not broken_chain.with_suffix(".out").exists()
    # without --backing-chain, info looks at the image alone
    assert vdisk("info", broken_chain, check=0).stdout == qemu_img("info", broken_chain,
                                                                   check=0).stdout


@pytest.mark.parametrize("options", [["-O", "raw"], ["-O", "qcow2"],
                                     ["-O", "qcow2", "-o", "cluster_size=4k,compat=0.10"]])
def test_convert_flattens_like_qemu_img(vdisk, qemu_img, chain, tmp_path, options):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    vdisk("convert", *options, chain / "sub" / "top.qcow2", ours, check=0)
    qemu_img("convert", *options, chain / "sub" / "top.qcow2", theirs, check=0)
    fmt = options[1]
    qemu_img("compare", "-f", fmt, "-F", fmt, ours, theirs, check=0)
    qemu_img("compare", "-f", fmt, ours, chain / "sub" / "top.qcow2", check=0)
    info = vdisk.json("info", "--output=json", ours)
    assert "backing-filename" not in info and info["virtual-size"] == 6 * MiB
    if fmt == "qcow2":
        qemu_img("check", ours, check=0)


@pytest.mark.parametrize("args", [
    ["-f", "qcow2", "-b", "../base.raw", "-F", "raw", "x.qcow2"],
    ["-f", "qcow2", "-b", "../base.raw", "-F", "raw", "x.qcow2", "8M"],
    ["-f", "qcow2", "-b", "../base.raw", "-F", "raw", "-o", "cluster_size=4k", "x.qcow2"],
    ["-f", "qcow2", "-o", "backing_file=../base.raw,backing_fmt=raw,lazy_refcounts=on",
     "x.qcow2"],
    ["-f", "qcow2", "-u", "-b", "../later.qcow2", "-F", "qcow2", "x.qcow2", "1G"],
    ["-f", "qcow2", "-u", "-b", "../later.qcow2", "-F", "qcow2", "x.qcow2"],
    ["-f", "qcow2", "-u", "-b", "../a,b.qcow2", "-F", "qcow2", "x.qcow2", "1M"],
    ["-f", "qcow2", "-b", "../missing.qcow2", "-F", "qcow2", "x.qcow2"],
    ["-f", "qcow2", "-b", "../base.raw", "-F", "qcow2", "x.qcow2"],
    ["-f", "raw", "-b", "../base.raw", "-F", "raw", "x.qcow2", "1M"],
])
def test_create_overlay_like_qemu_img(vdisk, qemu_img, tmp_path, args):
    make_sparse(tmp_path / "base.raw", 4 * MiB)
    ours = vdisk("create", *args, cwd=_mkdir(tmp_path / "ours"))
    theirs = qemu_img("create", *args, cwd=_mkdir(tmp_path / "theirs"))
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    if theirs.returncode == 0:
        infos = [qemu_img.json("info", "--output=json", "x.qcow2", cwd=tmp_path / d)
                 for d in ("ours", "theirs")]
        for info in infos:
            del info["actual-size"]
        assert infos[0] == infos[1]
        if "-u" not in args:  # the check opens the backing file
            qemu_img("check", tmp_path / "ours" / "x.qcow2", check=0)
    else:
        assert ours.stderr.startswith("vdisk: x.qcow2: ")
        assert not (tmp_path / "ours" / "x.qcow2").exists()


def _mkdir(path):
    path.mkdir()
    return path


def test_create_overlay_then_map(vdisk, qemu_img, chain, tmp_path):
    vdisk("create", "-q", "-f", "qcow2", "-b", chain / "sub" / "top.qcow2", "-F", "qcow2",
          tmp_path / "x.qcow2", check=0)
    assert vdisk("map", tmp_path / "x.qcow2", check=0).stdout == \
        qemu_img("map", tmp_path / "x.qcow2", check=0).stdout
    assert vdisk.json("info", "--output=json", tmp_path / "x.qcow2")["virtual-size"] == 6 * MiB


def _own_extents(vdisk, image):
    """(start, length, zero) of the runs the image defines itself, neighbours merged."""
    runs = []
    for e in vdisk.json("map", "--output=json", image):
        if e["depth"] != 0 or not e["present"]:
            continue
        if runs and runs[-1][0] + runs[-1][1] == e["start"] and runs[-1][2] == e["zero"]:
            runs[-1] = (runs[-1][0], runs[-1][1] + e["length"], e["zero"])
        else:
            runs.append((e["start"], e["length"], e["zero"]))
    return runs


# what top.qcow2 shows differently from mid.qcow2: its 64k of data at 1M, its zeroes over
# base.raw's data at 3M, and its data at 5M, past the end of mid.qcow2
TOP_OVER_MID = [(MiB, 64 * KiB, False), (3 * MiB, 64 * KiB, True), (5 * MiB, 64 * KiB, False)]


@pytest.mark.parametrize("how, flat", [
    (["-B", "BACKING", "-F", "qcow2"], True),
    (["-B", "BACKING", "-F", "qcow2"], False),
    (["-B", "BACKING"], True),
    (["-o", "backing_file=BACKING,backing_fmt=qcow2"], False),
])
def test_convert_onto_backing_file(vdisk, qemu_img, chain, tmp_path, how, flat):
    """Only what differs from the backing file is written; the rest reads through."""
    src = chain / "sub" / "top.qcow2"
    if flat:
        src = tmp_path / "flat.qcow2"
        qemu_img("convert", "-O", "qcow2", chain / "sub" / "top.qcow2", src, check=0)
    mid = str(chain / "sub" / "mid.qcow2")
    args = [arg.replace("BACKING", mid) for arg in how]
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    result = vdisk("convert", "-O", "qcow2", *args, src, ours, check=0)
    assert result.stdout == result.stderr == ""
    qemu_img("convert", "-O", "qcow2", "-B", mid, "-F", "qcow2", src, theirs, check=0)
    qemu_img("compare", src, ours, check=0)
    qemu_img("check", ours, check=0)
    info = qemu_img.json("info", "--output=json", ours)
    assert (info["backing-filename"], info["backing-filename-format"]) == (mid, "qcow2")
    assert info["virtual-size"] == 6 * MiB
    assert _own_extents(vdisk, ours) == TOP_OVER_MID
    # qemu-img copies all the data of a flat source, and only the top layer of an overlay
    assert os.path.getsize(ours) <= os.path.getsize(theirs)
    if flat:
        assert allocated(ours) < allocated(theirs) / 4


def test_convert_onto_relative_backing_file(vdisk, qemu_img, chain, tmp_path):
    shutil.copy(chain / "base.raw", tmp_path)
    (tmp_path / "sub").mkdir()
    vdisk("convert", "-O", "qcow2", "-B", "../base.raw", "-F", "raw", chain / "sub" / "top.qcow2",
          "sub/new.qcow2", cwd=tmp_path, check=0)
    qemu_img("compare", chain / "sub" / "top.qcow2", tmp_path / "sub" / "new.qcow2", check=0)
    qemu_img("check", tmp_path / "sub" / "new.qcow2", check=0)
    assert vdisk.json("info", "--output=json", "sub/new.qcow2", cwd=tmp_path)[
        "backing-filename"] == "../base.raw"
    # base.raw shows zeroes past its 4 MiB: the data at 5M is written, the zeroes past it not
    assert [e[:2] for e in _own_extents(vdisk, tmp_path / "sub" / "new.qcow2")] == [
        (512 * KiB, MiB), (3 * MiB, 64 * KiB), (5 * MiB, 64 * KiB)]


def test_convert_backing_file_needs_a_format_with_one(vdisk, qemu_img, chain, tmp_path):
    args = ["convert", "-B", chain / "base.raw", "-F", "raw", chain / "sub" / "top.qcow2"]
    assert same_result(vdisk(*args, tmp_path / "out.raw"), qemu_img(*args, tmp_path / "out.raw"))
    assert not (tmp_path / "out.raw").exists()


def test_convert_onto_backing_file_from_raw(vdisk, qemu_img, chain, tmp_path):
    """A fully allocated source: equal clusters are left out, written zeroes over the
    backing file's data become zero clusters."""
    src = tmp_path / "src.raw"
    data = bytearray((chain / "base.raw").read_bytes())
    data[4096:8192] = os.urandom(4096)
    data[3 * MiB:3 * MiB + 64 * KiB] = bytes(64 * KiB)
    src.write_bytes(data)
    out = tmp_path / "out.qcow2"
    vdisk("convert", "-f", "raw", "-O", "qcow2", "-B", chain / "base.raw", "-F", "raw", src, out,
          check=0)
    qemu_img("compare", "-f", "raw", src, out, check=0)
    qemu_img("check", out, check=0)
    assert _own_extents(vdisk, out) == [(0, 64 * KiB, False), (3 * MiB, 64 * KiB, True)]


@pytest.mark.parametrize("layout", ["unaligned-extent", "zeroes-then-hole"])
def test_convert_onto_backing_file_zero_clusters_never_split(vdisk, qemu_img, tmp_path, layout):
    """Clusters that read as zeroes over the backing file's data become zero
    clusters even where the source's extents or the copy's 2 MiB chunks do not
    fall on cluster boundaries (a cluster zeroed in two pieces would become a
    data cluster full of zeroes)."""
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x05" * (8 * MiB))
    src = make_sparse(tmp_path / "src.raw", 8 * MiB,
                      data=[(4096, 4096)] if layout == "unaligned-extent" else [],
                      zero_data=[(8192, 4 * MiB)] if layout == "unaligned-extent"
                      else [(0, 8192), (2 * MiB - 4096, 8192)])
    out = tmp_path / "out.qcow2"
    vdisk("convert", "-f", "raw", "-O", "qcow2", "-B", base, "-F", "raw", src, out, check=0)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", src, out, check=0)
    qemu_img("check", out, check=0)
    data_clusters = [e for e in _own_extents(vdisk, out) if e[2] is False]
    assert data_clusters == ([(0, 64 * KiB, False)] if layout == "unaligned-extent" else [])
