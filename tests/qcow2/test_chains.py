"""Backing chains: reads, overlays, rebase and commit against qemu-img on copies."""
import shutil

import pytest

from capi import CONFINED, Image, MiB, NO_BACKING, RDWR, VdError, create
from conftest import assert_clean, raw_content


def build_chain(d, qemu_img, qemu_io):
    """base.qcow2 <- sub/mid.qcow2 <- top.qcow2 (relative names), plus other.qcow2."""
    (d / "sub").mkdir()
    qemu_img("create", "-f", "raw", "base.raw", "8M", cwd=d)
    qemu_io("-f", "raw", "-c", "write -P 1 0 8M", "base.raw", cwd=d)
    qemu_img("create", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", "sub/mid.qcow2", cwd=d)
    qemu_io("-c", "write -P 2 1M 2M", "-c", "write -z 5M 64k", "-c", "discard 6M 1M", "sub/mid.qcow2", cwd=d)
    qemu_img("create", "-f", "qcow2", "-b", "sub/mid.qcow2", "-F", "qcow2", "top.qcow2", "12M", cwd=d)
    qemu_io("-c", "write -P 3 1536k 100k", "-c", "write -P 4 10M 64k", "-c", "write -z 7M 4k", "top.qcow2", cwd=d)
    qemu_img("create", "-f", "qcow2", "other.qcow2", "8M", cwd=d)
    qemu_io("-c", "write -P 9 0 4M", "other.qcow2", cwd=d)


def test_chain_reads_like_qemu(tmp_path, qemu_img, qemu_io):
    build_chain(tmp_path, qemu_img, qemu_io)
    with Image(tmp_path / "top.qcow2") as img:
        assert [p.split("/")[-1] for p in img.chain()] == ["top.qcow2", "mid.qcow2", "base.raw"]
        assert img.read() == raw_content(tmp_path / "top.qcow2")
    with Image(tmp_path / "top.qcow2", NO_BACKING) as img:
        assert img.chain() == [str(tmp_path / "top.qcow2")]


def test_chain_errors_name_the_file(tmp_path, qemu_img, qemu_io):
    build_chain(tmp_path, qemu_img, qemu_io)
    (tmp_path / "base.raw").rename(tmp_path / "gone.raw")
    with pytest.raises(VdError) as missing:
        Image(tmp_path / "top.qcow2")
    assert "base.raw" in missing.value.message and "mid.qcow2" in missing.value.message
    qemu_img("create", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "1M", cwd=tmp_path)
    qemu_img("create", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M", cwd=tmp_path)
    with pytest.raises(VdError) as loop:
        Image(tmp_path / "a.qcow2")
    assert "loops" in loop.value.message


def test_confined_refuses_a_backing_file_outside(tmp_path, qemu_img, qemu_io):
    build_chain(tmp_path, qemu_img, qemu_io)
    with pytest.raises(VdError) as refused:
        Image(tmp_path / "top.qcow2", CONFINED)  # sub/mid.qcow2 names ../base.raw
    assert "outside" in refused.value.message
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", "evil.qcow2", "1M", cwd=tmp_path)
    with pytest.raises(VdError):
        Image(tmp_path / "evil.qcow2", CONFINED)


def test_overlays_made_by_libvdisk_match_qemu(tmp_path, qemu_img, qemu_io):
    build_chain(tmp_path, qemu_img, qemu_io)
    with pytest.raises(VdError) as probed_raw:
        create(tmp_path / "o.qcow2", "qcow2", 0, "backing_file=base.raw")
    assert "probes as raw" in probed_raw.value.message
    create(tmp_path / "ours.qcow2", "qcow2", 0, "backing_file=sub/mid.qcow2")  # format probed, size taken
    qemu_img("create", "-f", "qcow2", "-b", "sub/mid.qcow2", "-F", "qcow2", "theirs.qcow2", cwd=tmp_path)
    with Image(tmp_path / "ours.qcow2", RDWR) as img:
        img.write(1000, b"Z" * 70000)   # partial clusters: copy-on-write from the backing file
        img.write_zeroes(4 * MiB, MiB)  # zero writes hide backing data
        img.discard(6 * MiB, MiB)       # and so do discards
    qemu_io("-c", "write -P 90 1000 70000", "-c", "write -z 4M 1M", "-c", "write -z 6M 1M",
            "theirs.qcow2", cwd=tmp_path)
    assert_clean(tmp_path / "ours.qcow2")
    qemu_img("compare", "ours.qcow2", "theirs.qcow2", cwd=tmp_path)
    info = qemu_img("info", "ours.qcow2", cwd=tmp_path).stdout
    assert "backing file: sub/mid.qcow2" in info and "backing file format: qcow2" in info


@pytest.mark.parametrize("ours,theirs", [
    (lambda i: i.rebase("base.raw", "raw"), ["rebase", "-b", "base.raw", "-F", "raw", "top.qcow2"]),
    (lambda i: i.rebase("other.qcow2"), ["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"]),
    (lambda i: i.rebase(None), ["rebase", "-b", "", "top.qcow2"]),
    (lambda i: i.rebase("other.qcow2", "qcow2", unsafe=True),
     ["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"]),
    (lambda i: i.commit(empty=True), ["commit", "top.qcow2"]),
    (lambda i: i.commit(empty=False), ["commit", "-d", "top.qcow2"]),
], ids=["rebase-base", "rebase-other", "flatten", "rebase-unsafe", "commit", "commit-keep"])
def test_rebase_and_commit_match_qemu_img(tmp_path, qemu_img, qemu_io, ours, theirs):
    for side in ("ours", "theirs"):
        (tmp_path / side).mkdir()
        build_chain(tmp_path / side, qemu_img, qemu_io)
    before = raw_content(tmp_path / "ours" / "top.qcow2")
    with Image(tmp_path / "ours" / "top.qcow2", RDWR) as img:
        ours(img)
    qemu_img(*theirs, cwd=tmp_path / "theirs")
    for name in ("top.qcow2", "sub/mid.qcow2"):
        assert_clean(tmp_path / "ours" / name)
        assert raw_content(tmp_path / "ours" / name) == raw_content(tmp_path / "theirs" / name), name
        backing = [l for l in qemu_img("info", name, cwd=tmp_path / "ours").stdout.splitlines() if "backing" in l]
        assert backing == [l for l in qemu_img("info", name, cwd=tmp_path / "theirs").stdout.splitlines()
                           if "backing" in l]
    if "-u" not in theirs:
        assert raw_content(tmp_path / "ours" / "top.qcow2") == before  # the guest sees no change
