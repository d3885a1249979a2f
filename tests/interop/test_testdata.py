"""The shared test corpus (../shared/testdata): images made by other tools
read with the md5 in MANIFEST.tsv, or are refused as the manifest says."""
import bz2
import hashlib
import os

import pytest

import libvdisk
from vdhelp import corpus_dir

MD5_LIMIT = 1 << 30  # beyond this virtual size only the size is checked


def manifest():
    """The rows of MANIFEST.tsv; skips the calling test where the corpus is absent."""
    rows = {}
    with open(os.path.join(corpus_dir(), "MANIFEST.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, fmt, size, md5 = line.rstrip("\n").split("\t")[:4]
            rows[name] = (fmt, size, md5)
    return rows


def unpack(name, tmp_path):
    out = tmp_path / name[:-len(".bz2")]
    with bz2.open(os.path.join(corpus_dir(), name)) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return out


def guest_md5(path, fmt=None):
    digest = hashlib.md5()
    with libvdisk.open(path, "r", fmt) as img:
        size, off = img.size, 0
        while off < size:
            n = min(4 << 20, size - off)
            digest.update(img.pread(off, n))
            off += n
        return digest.hexdigest(), size, img.format


@pytest.mark.parametrize("name", ["ext2.qcow2.bz2", "grub_mbr.raw.bz2"])
def test_corpus_image_reads_with_manifest_md5(tmp_path, name):
    rows = manifest()
    assert name in rows, f"{name} is not in MANIFEST.tsv"
    fmt, size, md5 = rows[name]
    path = unpack(name, tmp_path)
    assert libvdisk.probe(path) == fmt
    got_md5, got_size, got_fmt = guest_md5(path)  # probed, not told
    assert got_fmt == fmt
    assert got_size == int(size)
    assert got_md5 == md5


def test_ext2_qcow2_is_untouched_by_reading(tmp_path):
    manifest()  # skips without the corpus
    path = unpack("ext2.qcow2.bz2", tmp_path)
    before = hashlib.md5(path.read_bytes()).hexdigest()
    guest_md5(path, "qcow2")
    assert hashlib.md5(path.read_bytes()).hexdigest() == before


def every_row():
    try:
        rows = manifest()
    except pytest.skip.Exception as absent:
        return [pytest.param(None, marks=pytest.mark.skip(str(absent)))]
    return [pytest.param(name, id=name) for name in sorted(rows)]


@pytest.mark.parametrize("name", every_row())
def test_every_corpus_image_reads_or_is_refused(tmp_path, name):
    """A supported format reads with its md5 (or is refused when the manifest
    says "reject"); an unsupported one is refused, never mistaken for raw."""
    fmt, size, md5 = manifest()[name]
    path = unpack(name, tmp_path)
    if fmt not in libvdisk.formats():
        # probing names the format it recognised and refuses it, never says raw
        for attempt in (libvdisk.probe, libvdisk.open):
            with pytest.raises(libvdisk.Unsupported) as err:
                attempt(path)
            assert path.name in str(err.value)
            assert f"looks like a {fmt} image" in str(err.value)
        return
    if md5 == "reject":
        with pytest.raises(libvdisk.Error) as err:
            guest_md5(path)
        assert path.name in str(err.value)
        return
    with libvdisk.open(path) as img:
        assert (img.format, img.size) == (fmt, int(size))
    if int(size) <= MD5_LIMIT:
        assert guest_md5(path)[0] == md5
