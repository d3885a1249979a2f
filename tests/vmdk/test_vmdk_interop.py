"""VMDK both ways against qemu-img 7.2: what qemu writes vdisk reads identically,
what vdisk writes qemu-img checks and compares identical (and vmdkinfo
accepts), writes into each other's images, deltas, overlays, convert."""
import json
import os

import pytest

import libvdisk
from vdhelp import (MiB, QEMU_IMG, QEMU_IO, VDISK, assert_qemu_clean, compare, qemu_io, raw_model,
                    run, vmdkinfo_accepts, write_pattern_qemu)

SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]
# (offset, length, byte) writes that cover grain and table boundaries, unaligned ones too
PATTERN = [(0, 512, 0x11), (65536 - 100, 300, 0x22), (1 * MiB, 3 * MiB, 0x5A),
           (32 * MiB - 4096, 8192, 0x33), (63 * MiB + 1000, 5000, 0x44)]

SIZE = 64 * MiB
WRITABLE = [s for s in SUBFORMATS if s != "streamOptimized"]


def qemu_image(tmp_path, subformat, opts=""):
    """A qemu-made image holding PATTERN (streamOptimized: converted from the model)."""
    path = tmp_path / f"q-{subformat}.vmdk"
    model = raw_model(tmp_path / "model.raw", SIZE, PATTERN)
    o = f"subformat={subformat}" + (f",{opts}" if opts else "")
    if subformat == "streamOptimized":
        run(QEMU_IMG, "convert", "-f", "raw", "-O", "vmdk", "-o", o, model, path)
    else:
        run(QEMU_IMG, "create", "-q", "-f", "vmdk", "-o", o, path, SIZE)
        write_pattern_qemu(path, PATTERN, "vmdk")
    return path, model


def info(tool, path, output):
    return run(tool, "info", f"--output={output}", path).stdout


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_qemu_writes_vdisk_reads(tmp_path, subformat):
    path, model = qemu_image(tmp_path, subformat)
    out = tmp_path / "out.raw"
    run(VDISK, "convert", "-f", "vmdk", "-O", "raw", path, out)
    assert out.read_bytes() == model.read_bytes()
    for output in ("human", "json"):
        assert info(VDISK, path, output) == info(QEMU_IMG, path, output)
    assert run(VDISK, "map", "--output=json", path).stdout == \
        run(QEMU_IMG, "map", "--output=json", path).stdout


@pytest.mark.parametrize("opts", ["adapter_type=lsilogic", "adapter_type=buslogic,hwversion=7",
                                  "adapter_type=legacyESX,toolsversion=1234", "compat6=on",
                                  "zeroed_grain=on"])
def test_qemu_create_options_read_alike(tmp_path, opts):
    path, model = qemu_image(tmp_path, "monolithicSparse", opts)
    if "zeroed_grain" in opts:  # zeroed grains over data
        qemu_io(path, f"write -z {MiB} {MiB}", fmt="vmdk")
        with open(model, "r+b") as f:
            f.seek(MiB)
            f.write(bytes(MiB))
    compare(model, path)
    out = tmp_path / "out.raw"
    run(VDISK, "convert", "-f", "vmdk", "-O", "raw", path, out)
    assert out.read_bytes() == model.read_bytes()
    assert info(VDISK, path, "json") == info(QEMU_IMG, path, "json")


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_vdisk_writes_qemu_reads(tmp_path, subformat):
    model = raw_model(tmp_path / "model.raw", SIZE, PATTERN)
    path = tmp_path / f"v-{subformat}.vmdk"
    run(VDISK, "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", model, path)
    assert_qemu_clean(path)
    compare(model, path)
    vmdkinfo_accepts(path)
    desc = json.loads(info(QEMU_IMG, path, "json"))["format-specific"]["data"]
    assert desc["create-type"] == subformat


@pytest.mark.parametrize("opts", ["adapter_type=lsilogic,hwversion=7,toolsversion=42",
                                  "compat6=on", "zeroed_grain=on", "adapter_type=legacyESX"])
@pytest.mark.parametrize("subformat", ["monolithicSparse", "twoGbMaxExtentSparse"])
def test_vdisk_create_options(tmp_path, subformat, opts):
    path = tmp_path / "new.vmdk"
    run(VDISK, "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat},{opts}", path, SIZE)
    with libvdisk.open(path, "r+") as img:
        for off, n, b in PATTERN:
            img.pwrite(off, bytes([b]) * n)
        if "zeroed_grain" in opts:
            img.write_zeroes(MiB, MiB)
    model = raw_model(tmp_path / "model.raw", SIZE, PATTERN)
    if "zeroed_grain" in opts:
        with open(model, "r+b") as f:
            f.seek(MiB)
            f.write(bytes(MiB))
    assert_qemu_clean(path)
    compare(model, path)
    vmdkinfo_accepts(path)
    text = open(path if subformat == "monolithicSparse" else path, "rb").read(64 * 1024)
    for kv in opts.split(","):
        key, value = kv.split("=")
        want = {"adapter_type": f'ddb.adapterType = "{value}"',
                "hwversion": f'ddb.virtualHWVersion = "{value}"',
                "toolsversion": f'ddb.toolsVersion = "{value}"',
                "compat6": 'ddb.virtualHWVersion = "6"'}.get(key)
        if want:
            assert want.encode() in text
    assert info(VDISK, path, "json") == info(QEMU_IMG, path, "json")


@pytest.mark.parametrize("subformat", WRITABLE)
def test_libvdisk_writes_into_qemu_image(tmp_path, subformat):
    path, model = qemu_image(tmp_path, subformat)
    more = [(3 * MiB - 7, 70000, 0x66), (40 * MiB, 128 * 1024, 0x77), (SIZE - 512, 512, 0x78)]
    with libvdisk.open(path, "r+") as img:
        for off, n, b in more:
            img.pwrite(off, bytes([b]) * n)
    with open(model, "r+b") as f:
        for off, n, b in more:
            f.seek(off)
            f.write(bytes([b]) * n)
    assert_qemu_clean(path)
    compare(model, path)


@pytest.mark.parametrize("compress", [[], ["-c"]])
def test_stream_optimized_convert_like_qemu(tmp_path, compress):
    """Its grains are compressed on convert's threads (-c or not, as qemu-img takes both)."""
    model = raw_model(tmp_path / "model.raw", SIZE, PATTERN)
    ours, theirs = tmp_path / "ours.vmdk", tmp_path / "theirs.vmdk"
    o = "subformat=streamOptimized"
    run(VDISK, "convert", *compress, "-f", "raw", "-O", "vmdk", "-o", o, model, ours)
    run(QEMU_IMG, "convert", "-f", "raw", "-O", "vmdk", "-o", o, model, theirs)
    compare(model, ours)
    r = run(QEMU_IMG, "compare", "-f", "vmdk", "-F", "vmdk", ours, theirs)
    assert "identical" in r.stdout
    # the same grains compressed the same way: sizes within a few sectors
    assert abs(ours.stat().st_size - theirs.stat().st_size) <= 64 * 1024
    vmdkinfo_accepts(ours)


def test_stream_optimized_is_write_once(tmp_path):
    path = tmp_path / "s.vmdk"
    libvdisk.create(path, "vmdk", 4 * MiB, subformat="streamOptimized")
    with libvdisk.open(path, "r+") as img:
        img.pwrite(0, b"\x01" * 65536)
        with pytest.raises(libvdisk.Error, match="written once"):
            img.pwrite(0, b"\x02" * 65536)
        img.pwrite(65536 + 512, b"\x02" * 512)  # a grain filled piecewise, in order
        img.pwrite(65536 + 4096, b"\x03" * 100)
        # the grain still in memory reads as written, the grains stored before it too
        assert img.pread(65536, 4196) == bytes(512) + b"\x02" * 512 + bytes(3072) + b"\x03" * 100
        assert img.pread(65536 - 8, 16) == b"\x01" * 8 + bytes(8)
        img.pwrite(3 * 65536, b"\x04" * 10)  # moves past it: stored
        with pytest.raises(libvdisk.Error, match="written once"):
            img.pwrite(65536, b"\x05" * 512)
    run(QEMU_IMG, "convert", "-O", "raw", path, tmp_path / "s.raw")
    data = (tmp_path / "s.raw").read_bytes()
    assert data[:65536] == b"\x01" * 65536
    assert data[65536:65536 + 4196] == bytes(512) + b"\x02" * 512 + bytes(3072) + b"\x03" * 100
    assert data[3 * 65536:3 * 65536 + 11] == b"\x04" * 10 + b"\0"
    vmdkinfo_accepts(path)


@pytest.mark.parametrize("target", ["qcow2", "raw"])
@pytest.mark.parametrize("subformat", ["monolithicSparse", "twoGbMaxExtentFlat", "streamOptimized"])
def test_convert_from_vmdk_like_qemu(tmp_path, subformat, target):
    path, model = qemu_image(tmp_path, subformat)
    ours, theirs = tmp_path / f"ours.{target}", tmp_path / f"theirs.{target}"
    run(VDISK, "convert", "-f", "vmdk", "-O", target, path, ours)
    run(QEMU_IMG, "convert", "-f", "vmdk", "-O", target, path, theirs)
    r = run(QEMU_IMG, "compare", "-f", target, "-F", target, ours, theirs)
    assert "identical" in r.stdout
    if target == "qcow2":
        r = run(QEMU_IMG, "check", ours)
        assert "No errors" in r.stdout
        # the same clusters allocated (where they lie in the file may differ)
        def guest_map(p):
            merged = []
            for e in json.loads(run(QEMU_IMG, "map", "--output=json", p).stdout):
                e.pop("offset", None)
                last = merged[-1] if merged else None
                if last and all(last[k] == e[k] for k in e if k not in ("start", "length")):
                    last["length"] += e["length"]
                else:
                    merged.append(e)
            return merged
        assert guest_map(ours) == guest_map(theirs)


def test_delta_disk_made_by_vdisk(tmp_path):
    base, model = qemu_image(tmp_path, "monolithicSparse")
    child = tmp_path / "child.vmdk"
    run(VDISK, "create", "-q", "-f", "vmdk", "-b", base.name, "-F", "vmdk", child, cwd=tmp_path)
    parent_cid = json.loads(info(QEMU_IMG, base, "json"))["format-specific"]["data"]["cid"]
    child_info = json.loads(info(QEMU_IMG, child, "json"))
    assert child_info["backing-filename"] == base.name
    assert child_info["format-specific"]["data"]["parent-cid"] == parent_cid
    qemu_io(child, f"write -P 0x99 {2 * MiB + 5} 100000", fmt="vmdk")
    with libvdisk.open(child, "r+") as img:
        img.pwrite(50 * MiB + 3, b"\xab" * 4000)
    with open(model, "r+b") as f:
        f.seek(2 * MiB + 5)
        f.write(b"\x99" * 100000)
        f.seek(50 * MiB + 3)
        f.write(b"\xab" * 4000)
    compare(model, child)
    out = tmp_path / "out.raw"
    run(VDISK, "convert", "-O", "raw", child, out)
    assert out.read_bytes() == model.read_bytes()
    base_bytes = base.read_bytes()
    assert_qemu_clean(child)
    assert base.read_bytes() == base_bytes


def test_delta_disk_made_by_qemu(tmp_path):
    base, model = qemu_image(tmp_path, "monolithicSparse")
    child = tmp_path / "child.vmdk"
    run(QEMU_IMG, "create", "-q", "-f", "vmdk", "-b", base.name, "-F", "vmdk", child, cwd=tmp_path)
    qemu_io(child, f"write -P 0x98 {MiB + 100} 3000", fmt="vmdk")
    with open(model, "r+b") as f:
        f.seek(MiB + 100)
        f.write(b"\x98" * 3000)
    out = tmp_path / "out.raw"
    run(VDISK, "convert", "-O", "raw", child, out)
    assert out.read_bytes() == model.read_bytes()
    assert info(VDISK, child, "json") == info(QEMU_IMG, child, "json")


@pytest.mark.parametrize("maker", ["vdisk", "qemu"])
def test_qcow2_overlay_on_vmdk_base(tmp_path, maker):
    base, model = qemu_image(tmp_path, "twoGbMaxExtentSparse")
    top = tmp_path / "top.qcow2"
    tool = VDISK if maker == "vdisk" else QEMU_IMG
    run(tool, "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "vmdk", top, cwd=tmp_path)
    qemu_io(top, f"write -P 0x31 {7 * MiB} 65536", fmt="qcow2")
    with libvdisk.open(top, "r+") as img:
        img.pwrite(9 * MiB + 1, b"\x32" * 777)
    with open(model, "r+b") as f:
        f.seek(7 * MiB)
        f.write(b"\x31" * 65536)
        f.seek(9 * MiB + 1)
        f.write(b"\x32" * 777)
    compare(model, top, fb="qcow2")
    out = tmp_path / "out.raw"
    run(VDISK, "convert", "-O", "raw", top, out)
    assert out.read_bytes() == model.read_bytes()


def test_vmdk_on_qcow2_is_refused_as_qemu_does(tmp_path):
    base = tmp_path / "base.qcow2"
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", base, 4 * MiB)
    r = run(VDISK, "create", "-q", "-f", "vmdk", "-b", base.name, "-F", "qcow2",
            tmp_path / "c.vmdk", cwd=tmp_path, check=False)
    assert r.returncode != 0 and "vmdk" in r.stderr


@pytest.mark.parametrize("writer", ["vdisk", "qemu"])
def test_changed_parent_is_refused_as_qemu_refuses(tmp_path, writer):
    """A write gives an image a new CID; a delta made before no longer reads through it."""
    base = tmp_path / "base.vmdk"
    run(QEMU_IMG, "create", "-q", "-f", "vmdk", base, 4 * MiB)
    child = tmp_path / "child.vmdk"
    run(VDISK, "create", "-q", "-f", "vmdk", "-b", base.name, "-F", "vmdk", child, cwd=tmp_path)
    run(VDISK, "convert", "-O", "raw", child, tmp_path / "ok.raw")
    if writer == "vdisk":
        with libvdisk.open(base, "r+") as img:
            img.pwrite(0, b"\x01" * 512)
    else:
        qemu_io(base, "write -P 1 0 512", fmt="vmdk")
    r = run(VDISK, "convert", "-O", "raw", child, tmp_path / "bad.raw", check=False)
    assert r.returncode == 1 and "parent changed" in r.stderr
    r = run(QEMU_IMG, "convert", "-O", "raw", child, tmp_path / "bad2.raw", check=False)
    assert r.returncode != 0


def test_zero_extent_takes_zeroes_only(tmp_path):
    """A RW ZERO extent has no file: qemu 7.2 drops the line (its disk ends
    before it, a write there fails); vdisk keeps it, takes zeroes there and
    refuses data with an error naming the image."""
    (tmp_path / "d.img").write_bytes(b"\x41" * MiB)
    path = tmp_path / "z.vmdk"
    path.write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\nRW 2048 FLAT "d.img" 0\nRW 2048 ZERO\n')
    r = run(QEMU_IO, "-f", "vmdk", "-c", f"write {MiB} 512",
            path, check=False)
    assert "write failed" in r.stdout + r.stderr
    with libvdisk.open(path, "r+", "vmdk") as img:
        assert img.size == 2 * MiB
        with pytest.raises(libvdisk.Error, match="z.vmdk: guest offset 1048576 lies in a ZERO "
                                                 "extent") as e:
            img.pwrite(MiB - 512, b"\x42" * 1024)
        assert "only zeroes can be written there" in str(e.value)
        img.pwrite(MiB - 512, b"\x43" * 512 + bytes(512))  # zeroes there: taken, nothing stored
        img.write_zeroes(MiB - 4096, 8192)
        img.discard(MiB, MiB)
        assert img.pread(MiB - 8192, 8192) == b"\x41" * 4096 + bytes(4096)
        assert img.pread(MiB, MiB) == bytes(MiB)
    assert (tmp_path / "d.img").read_bytes() == b"\x41" * (MiB - 4096) + bytes(4096)


@pytest.mark.parametrize("subformat", [None] + SUBFORMATS)
def test_convert_compressed_like_qemu(tmp_path, subformat):
    """convert -c -O vmdk as qemu-img 7.2: sparse subformats take it (plain
    grains, compressed ones for streamOptimized), flat ones fail with
    'invalid cluster size'."""
    model = raw_model(tmp_path / "model.raw", 8 * MiB, [(0, 70000, 1), (5 * MiB, 4096, 2)])
    opts = ["-o", f"subformat={subformat}"] if subformat else []
    results = {}
    for tool in (QEMU_IMG, VDISK):
        out = tmp_path / f"{os.path.basename(tool)}.vmdk"
        results[tool] = run(tool, "convert", "-c", "-f", "raw", "-O", "vmdk", *opts, model, out,
                            check=False), out
    (q, qout), (v, vout) = results[QEMU_IMG], results[VDISK]
    assert q.returncode == v.returncode, (q.stderr, v.stderr)
    if q.returncode:
        assert subformat in ("monolithicFlat", "twoGbMaxExtentFlat")
        assert "invalid cluster size" in q.stderr and "invalid cluster size" in v.stderr
        # nothing of the failed destination is left (qemu-img leaves the files behind)
        assert not [p.name for p in tmp_path.glob(f"{os.path.basename(VDISK)}*")]
        return
    compare(model, vout)
    assert_qemu_clean(vout)
    if subformat in (None, "monolithicSparse"):  # plain grains, laid out alike
        assert os.path.getsize(vout) == os.path.getsize(qout)
