"""vdisk bitmap against qemu-img bitmap, bitmaps in vdisk info, convert
--bitmaps, and the incremental backup workflow of the README: a full backup,
writes through libvdisk (vdisk) and qemu-io, an incremental backup of the
dirty extents into an overlay of the previous backup (convert --bitmap NAME
-B previous), and the restored chain compared with the source by qemu-img."""
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import MiB, make_sparse, same_result
from qcow2_file import Qcow2File

KiB = 1024


@pytest.fixture
def image(qemu_img, tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", path, 64 * MiB, check=0)
    qemu_img("bitmap", "--add", path, "b1", check=0)
    qemu_img("bitmap", "--add", "-g", "4k", path, "b2", check=0)
    return path


# each row: the arguments after "bitmap", with IMG for the image's path
CASES = [
    ["--add", "IMG", "b1"],
    ["--add", "IMG", "new"],
    ["--add", "-g", "512", "IMG", "new", "--disable"],
    ["--add", "-g", "1000", "IMG", "new"],
    ["--remove", "IMG", "nothere"],
    ["--remove", "IMG", "b2"],
    ["--clear", "IMG", "b1"],
    ["--disable", "IMG", "b1"],
    ["--enable", "IMG", "nothere"],
    ["--merge", "b2", "IMG", "b1"],
    ["--merge", "b2", "-b", "missing.qcow2", "IMG", "b1"],
    ["IMG", "b1"],
    ["--add", "IMG"],
    ["-g", "64k", "--clear", "IMG", "b1"],
    ["-F", "qcow2", "--clear", "IMG", "b1"],
    ["-b", "IMG", "--clear", "IMG", "b1"],
]


@pytest.mark.parametrize("args", CASES, ids=[" ".join(c) for c in CASES])
def test_bitmap_as_qemu_img(vdisk, qemu_img, image, args):
    ours, theirs = image.parent / "ours.qcow2", image.parent / "theirs.qcow2"
    shutil.copy(image, ours)
    shutil.copy(image, theirs)
    mine = vdisk("bitmap", *[str(ours) if a == "IMG" else a for a in args], cwd=image.parent)
    qemu = qemu_img("bitmap", *[str(theirs) if a == "IMG" else a for a in args], cwd=image.parent)
    assert same_result(mine, qemu), (mine, qemu)
    assert (qemu_img.json("info", "--output=json", ours)["format-specific"] ==
            qemu_img.json("info", "--output=json", theirs)["format-specific"])
    qemu_img("check", ours, check=0)


def test_info_lists_bitmaps_as_qemu_img(vdisk, qemu_img, image):
    qemu_img("bitmap", "--add", "--disable", image, "off", check=0)
    for output in ("human", "json"):
        mine = vdisk("info", f"--output={output}", image, check=0).stdout
        theirs = qemu_img("info", f"--output={output}", image, check=0).stdout
        drop = ("disk size", '"actual-size"')
        assert [l for l in mine.splitlines() if not l.strip().startswith(drop)] == \
               [l for l in theirs.splitlines() if not l.strip().startswith(drop)]


def test_convert_bitmaps(vdisk, qemu_img, qemu_io, image):
    qemu_io("-c", "write 1M 64k", image, check=0)
    copy = image.parent / "copy.qcow2"
    vdisk("convert", "--bitmaps", "-O", "qcow2", image, copy, check=0)
    assert (qemu_img.json("info", "--output=json", copy)["format-specific"]["data"]["bitmaps"] ==
            qemu_img.json("info", "--output=json", image)["format-specific"]["data"]["bitmaps"])
    qemu_img("check", copy, check=0)
    # the dirty bits came along: an incremental copy of the copy holds just that cluster
    inc = image.parent / "inc.qcow2"
    vdisk("convert", "-O", "qcow2", "--bitmap", "b1", copy, inc, check=0)
    assert [e["start"] for e in qemu_img.json("map", "--output=json", inc) if e["data"]] == [1 * MiB]


@pytest.mark.parametrize("target", [["-O", "raw"], ["-O", "qcow2", "-o", "compat=0.10"]],
                         ids=["raw", "qcow2-v2"])
def test_convert_bitmaps_refused_before_copying(vdisk, qemu_img, image, target):
    """A destination that cannot keep bitmaps is refused before any data is
    copied, as qemu-img does; nothing is left behind."""
    out = image.parent / "out.img"
    mine = vdisk("convert", "--bitmaps", *target, image, out)
    theirs = qemu_img("convert", "--bitmaps", *target, image, image.parent / "theirs.img")
    assert mine.returncode == theirs.returncode == 1, (mine, theirs)
    assert "bitmaps" in mine.stderr and not out.exists(), mine.stderr


# each row: convert's options, before -O qcow2 (or the -O given) source destination
BROKEN_CASES = [
    ["--bitmaps"],
    ["--bitmaps", "--skip-broken-bitmaps"],
    ["--skip-broken-bitmaps", "--bitmaps"],
    ["--skip-broken-bitmaps"],
    ["--bitmaps", "--skip-broken-bitmaps", "-O", "raw"],
    ["--bitmaps", "-O", "raw"],
]


@pytest.mark.parametrize("args", BROKEN_CASES, ids=[" ".join(c) for c in BROKEN_CASES])
def test_convert_skip_broken_bitmaps_as_qemu_img(vdisk, qemu_img, qemu_io, image, args):
    """Inconsistent bitmaps (in use, as a crash leaves them): --bitmaps refuses
    the convert before creating anything, naming one; --skip-broken-bitmaps
    copies the others with a warning for each left out; the messages, exit
    codes and resulting bitmaps are qemu-img's."""
    qemu_img("bitmap", "--add", "--disable", image, "b3", check=0)
    qemu_img("bitmap", "--add", image, "b4", check=0)
    qemu_io("-c", "write 1M 64k", image, check=0)
    Qcow2File(image).mark_bitmaps_in_use("b1", "b3")
    target = [] if "-O" in args else ["-O", "qcow2"]
    ours, theirs = image.parent / "ours.img", image.parent / "theirs.img"
    mine = vdisk("convert", *args, *target, image.name, ours.name, cwd=image.parent)
    qemu = qemu_img("convert", *args, *target, image.name, theirs.name, cwd=image.parent)
    assert same_result(mine, qemu), (mine, qemu)
    if mine.returncode:
        # refused before anything was created (qemu-img leaves a raw target it refuses behind)
        assert not ours.exists()
        return
    assert "Skipping inconsistent bitmap 'b1'" in mine.stderr
    bitmaps = [b for b in qemu_img.json("info", "--output=json", ours)
               ["format-specific"]["data"]["bitmaps"]]
    assert bitmaps == qemu_img.json("info", "--output=json", theirs)["format-specific"]["data"]["bitmaps"]
    assert [b["name"] for b in bitmaps] == ["b2", "b4"]
    qemu_img("check", ours, check=0)
    assert qemu_img("compare", ours, image).returncode == 0
    # the bitmaps that came along kept their bits
    inc = image.parent / "inc.qcow2"
    vdisk("convert", "-O", "qcow2", "--bitmap", "b2", ours, inc, check=0)
    assert [e["start"] for e in qemu_img.json("map", "--output=json", inc) if e["data"]] == [1 * MiB]


def test_amend_downgrade_with_bitmaps_is_refused(vdisk, qemu_img, image):
    """qemu-img downgrades and leaves the bitmaps leaked and untrusted in a v2
    image; vdisk refuses and the image stays as it was, bitmaps included."""
    before = qemu_img.json("info", "--output=json", image)["format-specific"]
    r = vdisk("amend", "-o", "compat=0.10", image)
    assert r.returncode == 1 and "persistent bitmaps" in r.stderr, r
    assert qemu_img.json("info", "--output=json", image)["format-specific"] == before
    assert before["data"]["compat"] == "1.1" and len(before["data"]["bitmaps"]) == 2
    qemu_img("check", image, check=0)


def test_incremental_backup_workflow(vdisk, qemu_img, qemu_io, tmp_path):
    source = tmp_path / "vm.qcow2"
    qemu_img("create", "-f", "qcow2", source, 64 * MiB, check=0)
    qemu_io("-c", "write -P 1 0 8M", "-c", "write -P 2 32M 4M", source, check=0)
    # full backup, and from now on a bitmap records what changes
    vdisk("bitmap", "--add", source, "since-full", check=0)
    full = tmp_path / "full.qcow2"
    vdisk("convert", "-O", "qcow2", source, full, check=0)
    # writes through libvdisk: convert -n of a sparse patch writes its data alone
    patch = make_sparse(tmp_path / "patch.raw", 64 * MiB, data=[(6400 * KiB, 64 * KiB)])
    vdisk("convert", "-n", "--target-is-zero", "-f", "raw", "-O", "qcow2", patch, source,
          check=0)
    qemu_io("-c", "write -P 3 5M 100k", "-c", "write -z 33M 64k", "-c", "discard 40M 1M",
            source, check=0)
    # the incremental backup: only the dirty extents, over the full one
    inc = tmp_path / "inc1.qcow2"
    vdisk("convert", "-O", "qcow2", "--bitmap", "since-full", "-B", full.name, "-F", "qcow2",
          source, inc, check=0)
    vdisk("bitmap", "--clear", source, "since-full", check=0)
    qemu_img("check", inc, check=0)
    assert qemu_img("compare", inc, source).returncode == 0
    written = sum(e["length"] for e in qemu_img.json("map", "--output=json", inc)
                  if e["depth"] == 0 and e["data"])
    assert written <= 512 * KiB, written
    # a second increment on top
    qemu_io("-c", "write -P 9 60M 4k", source, check=0)
    inc2 = tmp_path / "inc2.qcow2"
    vdisk("convert", "-O", "qcow2", "--bitmap", "since-full", "-B", inc.name, "-F", "qcow2",
          source, inc2, check=0)
    restored = tmp_path / "restored.raw"
    qemu_img("convert", "-O", "raw", inc2, restored, check=0)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", restored, source).returncode == 0


@pytest.mark.parametrize("options", [[], ["-o", "cluster_size=4k"], ["-o", "compat=0.10"]])
def test_measure_counts_bitmaps_as_qemu_img(vdisk, qemu_img, image, options):
    qemu_img("bitmap", "--add", "-g", "512", image, "a-rather-long-bitmap-name", check=0)
    for output in ("human", "json"):
        mine = vdisk("measure", f"--output={output}", "-O", "qcow2", *options, image, check=0)
        theirs = qemu_img("measure", f"--output={output}", "-O", "qcow2", *options, image, check=0)
        assert mine.stdout == theirs.stdout


@pytest.mark.parametrize("maker", ["qemu-img", "vdisk"])
def test_measure_three_granularities_as_qemu_img(vdisk, qemu_img, qemu_io, tmp_path, maker):
    """Three bitmaps of 512 B, 64 KiB and 2 MiB granularity (one disabled, one
    with a long name) over 3 GiB, some bits dirty: bitmap tables of several
    clusters, a directory of entries of different sizes; 'bitmaps size' as
    qemu-img measure counts it for each destination cluster size."""
    tool = qemu_img if maker == "qemu-img" else vdisk
    image = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", image, 3 * 1024 * MiB, check=0)
    tool("bitmap", "--add", "-g", "512", image, "fine", check=0)
    tool("bitmap", "--add", "-g", "64k", image, "mid", check=0)
    tool("bitmap", "--add", "-g", "2M", "--disable", image, "coarse-" + "n" * 200, check=0)
    qemu_io("-c", "write 1G 1M", "-c", "write 2049M 64k", image, check=0)
    for options in ([], ["-o", "cluster_size=512"], ["-o", "cluster_size=4k"],
                    ["-o", "cluster_size=2M"], ["-o", "compat=0.10"]):
        for output in ("human", "json"):
            args = ("measure", f"--output={output}", "-O", "qcow2", *options, image)
            mine, theirs = vdisk(*args, check=0), qemu_img(*args, check=0)
            assert mine.stdout == theirs.stdout, (options, mine.stdout, theirs.stdout)
            assert options == ["-o", "compat=0.10"] or "bitmaps" in mine.stdout


def dirty_runs(path, name):
    """The dirty runs qemu-nbd serves for a bitmap (nbdinfo --map), or skip."""
    nbdinfo, qemu_nbd = shutil.which("nbdinfo"), shutil.which("qemu-nbd")
    if not nbdinfo or not qemu_nbd:
        pytest.skip("nbdinfo (libnbd-bin) or qemu-nbd is not installed")
    result = subprocess.run([nbdinfo, "--json", f"--map=qemu:dirty-bitmap:{name}", "--", "[",
                             qemu_nbd, "-r", "-f", "qcow2", "-B", name, str(path), "]"],
                            capture_output=True, text=True, timeout=60, check=True)
    return [(e["offset"], e["length"]) for e in json.loads(result.stdout) if e["type"] & 1]


@pytest.mark.parametrize("tool", ["vdisk", "qemu-img"])
def test_rebase_and_commit_keep_bitmaps_as_qemu_img(vdisk, qemu_img, qemu_io, tmp_path, tool):
    run = vdisk if tool == "vdisk" else qemu_img
    base, top, new = (tmp_path / n for n in ("base.qcow2", "top.qcow2", "new.qcow2"))
    qemu_img("create", "-f", "qcow2", base, 4 * MiB, check=0)
    qemu_io("-c", "write -P 1 0 1M", base, check=0)
    qemu_img("create", "-f", "qcow2", new, 4 * MiB, check=0)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top, check=0)
    qemu_img("bitmap", "--add", top, "t", check=0)
    qemu_img("bitmap", "--add", base, "b", check=0)
    # rebase copies what differs into top: a write its bitmaps record
    qemu_io("-c", "write -P 2 2M 64k", top, check=0)
    run("rebase", "-b", base.name, "-F", "qcow2", top, check=0)  # same backing: nothing copied
    assert dirty_runs(top, "t") == [(2 * MiB, 64 * KiB)]
    # commit writes into base (its bitmaps record it); emptying top is no write
    run("commit", top, check=0)
    assert dirty_runs(base, "b") == [(2 * MiB, 64 * KiB)]
    assert dirty_runs(top, "t") == [(2 * MiB, 64 * KiB)]
    run("rebase", "-b", new.name, "-F", "qcow2", top, check=0)
    assert dirty_runs(top, "t") == [(0, 1 * MiB), (2 * MiB, 64 * KiB)]
    for path in (base, top):
        qemu_img("check", path, check=0)


def test_resize_keeps_bitmaps_valid(vdisk, qemu_img, qemu_io, image):
    qemu_io("-c", "write 1M 4k", image, check=0)
    vdisk("resize", image, "100M", check=0)
    qemu_io("-c", "write 90M 4k", image, check=0)
    qemu_img("check", image, check=0)
    assert dirty_runs(image, "b1") == [(1 * MiB, 64 * KiB), (90 * MiB, 64 * KiB)]


def test_check_leaves_inconsistent_bitmaps_as_qemu_img(vdisk, qemu_img, image, tmp_path):
    """A bitmap left in use by a crash is reported inconsistent; check (and -r all)
    keeps it, as qemu-img 7.2 does: only --remove drops it."""
    # mark the bitmaps in use as a crashed writer leaves them: qemu-io killed mid-session
    proc = subprocess.Popen([os.environ["QEMU_IO"], str(image)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    proc.kill()
    proc.wait()
    flags = [b["flags"] for b in qemu_img.json("info", "--output=json", "-U", image)
             ["format-specific"]["data"]["bitmaps"]]
    if flags != [["in-use", "auto"]] * 2:
        pytest.skip(f"qemu-io left no bitmap in use: {flags}")
    twin = tmp_path / "twin.qcow2"
    shutil.copy(image, twin)
    for args in (["check"], ["check", "-r", "all"]):
        assert same_result(vdisk(*args, image), qemu_img(*args, twin))
    assert vdisk("info", image, check=0).stdout.count("in-use") == 2
    vdisk("bitmap", "--remove", image, "b1", check=0)
    assert [b["name"] for b in qemu_img.json("info", "--output=json", image)
            ["format-specific"]["data"]["bitmaps"]] == ["b2"]
