"""Encrypted qcow2 (LUKS and legacy AES) both ways against qemu-img/qemu-io 7.2.

Images qemu-img creates (several LUKS cipher combinations, legacy AES,
clusters of 4 KiB and 64 KiB) with data qemu-io wrote read identically
through libvdisk and show alike in info; what libvdisk writes into them
(in place, partial sectors, copy-on-write of partial clusters, over zero
clusters) reads back in qemu; images libvdisk creates pass qemu-img check
without leaks, compare identical and read in qemu-io; wrong passphrases
fail on both sides and change no byte; no guest plaintext reaches the file;
backing chains mix encrypted and plain images; convert writes and reads
encrypted qcow2 with --object/--image-opts. PBKDF2 runs with iter-time=10.
"""
import hashlib
import json
import os
import shutil

import pytest

import libvdisk
from qcow2meta import Qcow2
from vdhelp import MiB, PASSPHRASE, QEMU_IMG, QEMU_IO, qemu_io_secret, run
from vdhelp import secret_object as secret

VDISK = os.environ.get("VDISK") or shutil.which("vdisk") or "vdisk"
SIZE = 4 * MiB
# a pattern that must never appear in an image file: guest plaintext
PLAIN = b"GUEST-PLAINTEXT-MARKER:" * 3

LUKS_COMBOS = [
    {},  # qemu's defaults: aes-256 xts plain64 sha256
    {"cipher-alg": "aes-128", "cipher-mode": "cbc", "ivgen-alg": "essiv",
     "ivgen-hash-alg": "sha256", "hash-alg": "sha1"},
    {"cipher-alg": "aes-256", "cipher-mode": "cbc", "ivgen-alg": "plain64",
     "hash-alg": "sha512"},
]


def opts(path, sid="sec0"):
    return f"driver=qcow2,encrypt.key-secret={sid},file.filename={path}"


def qemu_create(path, pw, fmt="luks", cluster=65536, backing=None, extended_l2=False, **luks):
    o = {"encrypt.format": fmt, "encrypt.key-secret": "sec0", "cluster_size": cluster,
         "extended_l2": "on" if extended_l2 else "off"}
    if fmt == "luks":
        o["encrypt.iter-time"] = 10
        o.update({f"encrypt.{k}": v for k, v in luks.items()})
    args = ["-o", ",".join(f"{k}={v}" for k, v in o.items())]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    r = run(QEMU_IMG, "create", "-q", "-f", "qcow2", "--object", secret(pw), *args, path,
            *([] if backing else [SIZE]), check=False)
    assert r.returncode == 0, r.stderr


def qemu_io(path, pw, *commands, check=True):
    return qemu_io_secret(opts(path), pw, *commands, check=check)


def qemu_bytes(path, pw, tmp_path):
    out = tmp_path / "qemu.raw"
    run(QEMU_IMG, "convert", "--object", secret(pw), "--image-opts", opts(path), "-O", "raw",
        out)
    return out.read_bytes()


def qemu_check_clean(path, pw):
    r = run(QEMU_IMG, "check", "--object", secret(pw), "--image-opts", opts(path), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No errors were found" in r.stdout and "leaked" not in r.stdout, r.stdout


def vd_bytes(path, passphrase=PASSPHRASE):
    with libvdisk.Image(path, passphrase=passphrase) as img:
        return img.pread(0, img.size)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# Writes that exercise every engine path, at 4 KiB and 64 KiB clusters: whole
# clusters, partial clusters (copy-on-write), partial sectors, runs across
# clusters, and a partial write over a zero cluster.
WRITES = [(0, 65536 * 2, 0x11), (70000, 3000, 0x22), (131072 + 513, 100, 0x33),
          (1 * MiB - 700, 9000, 0x44), (3 * MiB + 4096, 4096, 0x55), (SIZE - 512, 512, 0x66)]


def qemu_write_all(path, pw):
    cmds = [f"write -P {p} {o} {n}" for o, n, p in WRITES]
    qemu_io(path, pw, *cmds, "write -z 2097152 131072", "write -P 0x77 2162688 1000")


def model_after_writes():
    data = bytearray(SIZE)
    for o, n, p in WRITES:
        data[o:o + n] = bytes([p]) * n
    data[2097152:2097152 + 131072] = bytes(131072)
    data[2162688:2162688 + 1000] = b"\x77" * 1000
    return bytes(data)


@pytest.mark.parametrize("cluster", [4096, 65536])
@pytest.mark.parametrize("combo", range(len(LUKS_COMBOS)))
def test_qemu_luks_reads_identically(tmp_path, pw, cluster, combo):
    img = tmp_path / "q.qcow2"
    qemu_create(img, pw, cluster=cluster, **LUKS_COMBOS[combo])
    qemu_write_all(img, pw)
    expected = model_after_writes()
    assert qemu_bytes(img, pw, tmp_path) == expected
    assert vd_bytes(img) == expected
    r = run(VDISK, "check", img, check=False)  # the LUKS header clusters are no leak
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout + r.stderr
    for output in ("human", "json"):
        ours = run(VDISK, "info", f"--output={output}", img).stdout
        theirs = run(QEMU_IMG, "info", f"--output={output}", img).stdout
        if output == "json":
            ours, theirs = json.loads(ours), json.loads(theirs)
            ours.pop("actual-size"), theirs.pop("actual-size")
        else:
            ours = [l for l in ours.splitlines() if not l.startswith("disk size")]
            theirs = [l for l in theirs.splitlines() if not l.startswith("disk size")]
        assert ours == theirs


@pytest.mark.parametrize("cluster", [4096, 65536])
def test_qemu_aes_reads_and_takes_writes(tmp_path, pw, cluster):
    img = tmp_path / "a.qcow2"
    qemu_create(img, pw, fmt="aes", cluster=cluster)
    qemu_write_all(img, pw)
    expected = bytearray(model_after_writes())
    assert vd_bytes(img) == bytes(expected)
    info = json.loads(run(VDISK, "info", "--output=json", img).stdout)
    assert info["encrypted"] is True
    assert info["format-specific"]["data"]["encrypt"] == {"format": "aes"}
    with libvdisk.Image(img, "r+", passphrase=PASSPHRASE) as h:
        h.pwrite(70001, b"\x99" * 777)
        expected[70001:70001 + 777] = b"\x99" * 777
    assert qemu_bytes(img, pw, tmp_path) == bytes(expected)
    qemu_check_clean(img, pw)


@pytest.mark.parametrize("cluster,extended_l2", [(4096, False), (65536, True)])
def test_libvdisk_writes_into_qemu_luks_image(tmp_path, pw, cluster, extended_l2):
    img = tmp_path / "q.qcow2"
    qemu_create(img, pw, cluster=cluster, extended_l2=extended_l2)
    qemu_write_all(img, pw)
    expected = bytearray(model_after_writes())
    snapshot = bytes(expected)
    # an internal snapshot shares every cluster: the writes below copy them
    run(QEMU_IMG, "snapshot", "--object", secret(pw), "--image-opts", opts(img), "-c", "s1")
    writes = [(100, 50), (4096 * 3 + 10, 4096 * 2), (2097152 + 300, 700),  # over zero clusters
              (2 * MiB + 200000, 5000),  # unallocated
              (65536 * 2 - 1, 2), (SIZE - 4096, 4096)]
    with libvdisk.Image(img, "r+", passphrase=PASSPHRASE) as h:
        for i, (o, n) in enumerate(writes):
            chunk = (PLAIN * (n // len(PLAIN) + 1))[:n]
            buf = bytearray(chunk)
            h.pwrite(o, buf)
            assert buf == chunk  # the caller's buffer is never encrypted in place
            expected[o:o + n] = chunk
        h.write_zeroes(3 * MiB, 65536)
        expected[3 * MiB:3 * MiB + 65536] = bytes(65536)
        h.flush()
    assert qemu_bytes(img, pw, tmp_path) == bytes(expected)
    assert vd_bytes(img) == bytes(expected)
    qemu_check_clean(img, pw)
    assert PLAIN[:16] not in img.read_bytes()
    out = tmp_path / "snap.raw"
    run(QEMU_IMG, "convert", "--object", secret(pw), "--image-opts", opts(img), "-l",
        "snapshot.name=s1", "-O", "raw", out)
    assert out.read_bytes() == snapshot


@pytest.mark.parametrize("fmt,cluster", [("luks", 4096), ("luks", 65536), ("aes", 65536)])
def test_libvdisk_creates_encrypted_image(tmp_path, pw, fmt, cluster):
    img = tmp_path / "v.qcow2"
    extra = {"encrypt.iter-time": 10} if fmt == "luks" else {}
    libvdisk.create(img, "qcow2", SIZE, passphrase=PASSPHRASE, cluster_size=cluster,
                    **{"encrypt.format": fmt}, **extra)
    expected = bytearray(SIZE)
    with libvdisk.Image(img, "r+", passphrase=PASSPHRASE) as h:
        for o, n, p in WRITES:
            chunk = (PLAIN * (n // len(PLAIN) + 1))[:n]
            h.pwrite(o, chunk)
            expected[o:o + n] = chunk
    assert vd_bytes(img) == bytes(expected)
    assert PLAIN[:16] not in img.read_bytes()
    qemu_check_clean(img, pw)
    ours = run(VDISK, "check", img, check=False)
    assert ours.returncode == 0 and "No errors were found" in ours.stdout, ours.stdout
    raw = tmp_path / "expected.raw"
    raw.write_bytes(bytes(expected))
    r = run(QEMU_IMG, "compare", "--object", secret(pw), "--image-opts",
            f"driver=raw,file.filename={raw}", opts(img), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    qemu_io(img, pw, f"read -P 0 {3 * MiB} 4096", f"read -v {SIZE - 512} 16")
    assert qemu_bytes(img, pw, tmp_path) == bytes(expected)


def test_wrong_passphrase_fails_both_ways_and_changes_nothing(tmp_path, pw):
    ours = tmp_path / "v.qcow2"
    libvdisk.create(ours, "qcow2", SIZE, passphrase=PASSPHRASE,
                    **{"encrypt.format": "luks", "encrypt.iter-time": 10})
    with libvdisk.Image(ours, "r+", passphrase=PASSPHRASE) as h:
        h.pwrite(0, b"x" * 4096)
    theirs = tmp_path / "q.qcow2"
    qemu_create(theirs, pw)
    qemu_io(theirs, pw, "write -P 0x5a 0 65536")
    bad = tmp_path / "bad"
    bad.write_text("not the passphrase")
    for img in (ours, theirs):
        before = sha(img)
        with pytest.raises(libvdisk.EncryptionKeyError, match="Invalid password"):
            libvdisk.Image(img, "r+", passphrase="not the passphrase")
        r = run(QEMU_IO, "--object", secret(bad), "--image-opts", opts(img),
                "-c", "write -P 1 0 512", check=False)
        assert r.returncode != 0 and "Invalid password" in r.stderr, r.stdout + r.stderr
        assert sha(img) == before


def test_without_passphrase_info_only(tmp_path, pw):
    img = tmp_path / "q.qcow2"
    qemu_create(img, pw)
    qemu_io(img, pw, "write -P 0x5a 65536 65536")
    before = sha(img)
    with libvdisk.Image(img) as h:
        with pytest.raises(libvdisk.EncryptionKeyError, match="without a passphrase"):
            h.pread(0, 512)
    r = run(VDISK, "info", img)
    assert "encrypted: yes" in r.stdout and "format: luks" in r.stdout
    for cmd in (["convert", "-O", "raw", img, tmp_path / "x.raw"], ["map", img],
                ["dd", f"if={img}", f"of={tmp_path / 'y.raw'}", "-O", "raw"]):
        r = run(VDISK, *cmd, check=False)
        assert r.returncode != 0 and f"{img}: the image is encrypted" in r.stderr, r.stderr
    assert sha(img) == before


@pytest.mark.parametrize("top_encrypted", [True, False])
def test_backing_chains_mix_encrypted_and_plain(tmp_path, pw, top_encrypted):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    if top_encrypted:
        run(QEMU_IMG, "create", "-q", "-f", "qcow2", base, SIZE)
        run(QEMU_IO, "-c", "write -P 0x31 0 1M", base)
        qemu_create(top, pw, cluster=4096, backing=base)
        top_opts = opts(top)
    else:
        qemu_create(base, pw)
        qemu_io(base, pw, "write -P 0x31 0 1M")
        run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
        top_opts = f"driver=qcow2,file.filename={top},backing.encrypt.key-secret=sec0"
    expected = bytearray(b"\x31" * MiB + bytes(SIZE - MiB))
    with libvdisk.Image(top, "r+", passphrase=PASSPHRASE) as h:
        h.pwrite(5000, PLAIN)  # copy-on-write of a partial cluster from the backing file
        h.pwrite(2 * MiB + 7, PLAIN)
    for o in (5000, 2 * MiB + 7):
        expected[o:o + len(PLAIN)] = PLAIN
    assert vd_bytes(top) == bytes(expected)
    out = tmp_path / "chain.raw"
    run(QEMU_IMG, "convert", "--object", secret(pw), "--image-opts", top_opts, "-O", "raw", out)
    assert out.read_bytes() == bytes(expected)
    assert (PLAIN[:16] in top.read_bytes()) == (not top_encrypted)


def test_each_image_of_a_chain_has_its_own_secret(tmp_path, pw):
    """backing.encrypt.key-secret names the backing file's own secret, as in qemu-img;
    libvdisk writes into the chain and qemu reads the result, and the other way."""
    other = tmp_path / "pw-base"
    other.write_text("another passphrase for the base")
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_create(base, other, cluster=4096)
    qemu_io(base, other, "write -P 0x31 0 1M")
    qemu_create(top, pw, cluster=4096, backing=base)
    objects = ["--object", secret(pw), "--object", secret(other, "sec1")]
    chain = f"{opts(top)},backing.encrypt.key-secret=sec1"
    r = run(QEMU_IO, *objects, "--image-opts", chain, "-c", "write -P 0x42 65536 4096",
            check=False)
    assert r.returncode == 0, r.stderr
    expected = bytearray(b"\x31" * MiB + bytes(SIZE - MiB))
    expected[65536:65536 + 4096] = b"\x42" * 4096
    ours = tmp_path / "ours.raw"
    run(VDISK, "convert", *objects, "--image-opts", chain, "-O", "raw", ours)
    assert ours.read_bytes() == bytes(expected)
    # the top image's secret alone does not unlock the base, naming it
    r = run(VDISK, "convert", "--object", secret(pw), "--image-opts", opts(top), "-O", "raw",
            tmp_path / "no.raw", check=False)
    assert r.returncode == 1 and "base.qcow2" in r.stderr and "Invalid password" in r.stderr, \
        r.stderr
    # libvdisk writes through the chain (a copy-on-write from the encrypted base); qemu reads it
    with open(pw) as f1, open(other) as f2:
        top_pass, base_pass = f1.read(), f2.read()
    passes = {0: top_pass, 1: base_pass}
    with libvdisk.open(top, "r+", passphrase=lambda path, depth: passes[depth]) as h:
        h.pwrite(5000, PLAIN)
    expected[5000:5000 + len(PLAIN)] = PLAIN
    theirs = tmp_path / "theirs.raw"
    run(QEMU_IMG, "convert", *objects, "--image-opts", chain, "-O", "raw", theirs)
    assert theirs.read_bytes() == bytes(expected)
    assert PLAIN[:16] not in top.read_bytes() + base.read_bytes()


def test_convert_writes_and_reads_encrypted_qcow2(tmp_path, pw):
    src = tmp_path / "src.raw"
    data = bytearray(SIZE)
    data[12345:12345 + 100000] = (PLAIN * 5000)[:100000]
    src.write_bytes(bytes(data))
    enc = tmp_path / "enc.qcow2"
    run(VDISK, "convert", "-f", "raw", "-O", "qcow2", "--object", secret(pw),
        "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", src, enc)
    assert PLAIN[:16] not in enc.read_bytes()
    qemu_check_clean(enc, pw)
    r = run(QEMU_IMG, "compare", "--object", secret(pw), "--image-opts",
            f"driver=raw,file.filename={src}", opts(enc), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    back = tmp_path / "back.raw"
    run(VDISK, "convert", "--object", secret(pw), "--image-opts", opts(enc), "-O", "raw", back)
    assert back.read_bytes() == bytes(data)
    r = run(VDISK, "convert", "-c", "-f", "raw", "-O", "qcow2", "--object", secret(pw),
            "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", src,
            tmp_path / "c.qcow2", check=False)
    assert r.returncode != 0
    assert "Compression and encryption not supported at the same time" in r.stderr


def test_create_option_errors_match_qemu(tmp_path, pw):
    for o, msg in [("encrypt.format=luks", "Parameter 'encrypt.key-secret' is required for cipher"),
                   ("encrypt.format=aes,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-256",
                    "Parameter 'encrypt.cipher-alg' is unexpected")]:
        for tool in (VDISK, QEMU_IMG):
            r = run(tool, "create", "-q", "-f", "qcow2", "--object", secret(pw), "-o", o,
                    tmp_path / "x.qcow2", "1M", check=False)
            assert r.returncode != 0 and msg in r.stderr, (tool, r.stderr)


def test_create_line_and_measure_match_qemu(tmp_path, pw):
    options = ("encrypt.iter-time=10,encrypt.hash-alg=sha1,encrypt.ivgen-hash-alg=sha256,"
               "encrypt.ivgen-alg=essiv,encrypt.cipher-mode=cbc,encrypt.cipher-alg=aes-128,"
               "encrypt.key-secret=sec0,encrypt.format=luks,cluster_size=4096")
    lines = []
    for tool, name in ((QEMU_IMG, "q.qcow2"), (VDISK, "v.qcow2")):
        args = ("create", "-f", "qcow2", "--object", secret(pw), "-o", options, tmp_path / name,
                "1M")
        r = run(tool, *args)
        assert r.returncode == 0, r.stderr
        lines.append(r.stdout.replace(name, "X"))
    assert lines[0] == lines[1]
    src = tmp_path / "src.raw"
    src.write_bytes(b"\1" * 300000 + bytes(SIZE - 300000))
    for o in ("encrypt.format=luks,encrypt.key-secret=sec0",
              "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128,"
              "encrypt.cipher-mode=cbc,cluster_size=4096",
              "encrypt.format=aes,encrypt.key-secret=sec0"):
        for what in (["--size", "1G"], ["-f", "raw", src]):
            theirs = run(QEMU_IMG, "measure", "--object", secret(pw), "-O", "qcow2", "-o", o,
                         *what).stdout
            ours = run(VDISK, "measure", "--object", secret(pw), "-O", "qcow2", "-o", o,
                       *what).stdout
            assert ours == theirs, (o, what)


def luks_header_extent(path):
    """(offset, length) of the LUKS header, from the 0x0537be77 header extension."""
    data = open(path, "rb").read(65536)
    pos = int.from_bytes(data[100:104], "big")
    while True:
        kind, length = int.from_bytes(data[pos:pos + 4], "big"), \
            int.from_bytes(data[pos + 4:pos + 8], "big")
        assert kind, "no full disk encryption header extension"
        if kind == 0x0537BE77:
            return (int.from_bytes(data[pos + 8:pos + 16], "big"),
                    int.from_bytes(data[pos + 16:pos + 24], "big"))
        pos += 8 + (length + 7) // 8 * 8


def test_luks_header_clusters_are_metadata(tmp_path, pw):
    """Refcounted (check: no leak), after L1 as QEMU puts them, and never written as data."""
    img = tmp_path / "v.qcow2"
    libvdisk.create(img, "qcow2", SIZE, passphrase=PASSPHRASE,
                    **{"encrypt.format": "luks", "encrypt.iter-time": 10})
    with libvdisk.Image(img, "r+", passphrase=PASSPHRASE) as h:
        h.pwrite(0, b"a" * 65536)
    offset, length = luks_header_extent(img)
    theirs = tmp_path / "q.qcow2"
    qemu_create(theirs, pw)
    assert (offset, length) == luks_header_extent(theirs)
    with Qcow2(img) as q:
        assert all(q.refcount(c) == 1 for c in range(offset, offset + length, 65536))
        # an L2 entry naming the header's first cluster (flags kept: in place)
        q.set_l2_entry(0, (q.l2_entry(0) & ~0x00FFFFFFFFFFFE00) | offset)
    before = open(img, "rb").read()[offset:offset + length]
    with libvdisk.Image(img, "r+", passphrase=PASSPHRASE) as h:
        with pytest.raises(libvdisk.CorruptImage, match="encryption header"):
            h.pwrite(0, b"b" * 4096)
    assert open(img, "rb").read()[offset:offset + length] == before


def test_parallel_writers_on_one_handle(tmp_path, pw):
    """Requests run beside each other (the engine's in-flight ranges): each
    thread's partial and whole-cluster writes come out right in qemu."""
    from concurrent.futures import ThreadPoolExecutor
    img = tmp_path / "v.qcow2"
    libvdisk.create(img, "qcow2", SIZE, passphrase=PASSPHRASE, cluster_size=4096,
                    **{"encrypt.format": "luks", "encrypt.iter-time": 10})
    expected = bytearray(SIZE)
    jobs = []
    for t in range(8):
        base = t * (SIZE // 8)
        for i in range(40):
            off = base + (i * 7919) % (SIZE // 8 - 9000)
            n = 1 + (i * 104729) % 9000
            jobs.append((t, off, bytes([t * 40 + i & 0xFF or 1]) * n))
    for t, off, data in jobs:  # the model: each thread's writes in its own order
        expected[off:off + len(data)] = data
    with libvdisk.Image(img, "r+", passphrase=PASSPHRASE) as h:
        def worker(t):
            for tt, off, data in jobs:
                if tt == t:
                    h.pwrite(off, data)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
    assert vd_bytes(img) == bytes(expected)
    assert qemu_bytes(img, pw, tmp_path) == bytes(expected)
    qemu_check_clean(img, pw)


def test_amend_key_slots_both_ways(tmp_path, pw):
    """encrypt.state=active/inactive as qemu-img amend takes them: a slot one
    tool adds opens in the other, the data stays readable, both checks clean."""
    new_pw = tmp_path / "pw1"
    new_pw.write_text("second passphrase")
    objects = ["--object", secret(pw), "--object", secret(new_pw, "sec1")]
    ours, theirs = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    libvdisk.create(ours, "qcow2", SIZE, passphrase=PASSPHRASE,
                    **{"encrypt.format": "luks", "encrypt.iter-time": 10})
    with libvdisk.Image(ours, "r+", passphrase=PASSPHRASE) as h:
        h.pwrite(5000, PLAIN)
    qemu_create(theirs, pw)
    qemu_io(theirs, pw, "write -P 0x5a 5000 1000")
    add = "encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10,encrypt.keyslot=3"
    for tool, img in ((VDISK, theirs), (QEMU_IMG, ours)):
        before = qemu_bytes(img, pw, tmp_path)
        run(tool, "amend", *objects, "--image-opts", opts(img), "-o", add)
        run(VDISK if tool == QEMU_IMG else QEMU_IMG, "amend", *objects, "--image-opts",
            opts(img, "sec1"), "-o", "encrypt.state=inactive,encrypt.old-secret=sec0")
        info = json.loads(run(VDISK, "info", "--output=json", img).stdout)
        slots = info["format-specific"]["data"]["encrypt"]["slots"]
        assert [s["active"] for s in slots] == [False, False, False, True] + [False] * 4
        assert info == json.loads(run(QEMU_IMG, "info", "--output=json", img).stdout) | \
            {"actual-size": info["actual-size"]}
        assert vd_bytes(img, "second passphrase") == before
        with pytest.raises(libvdisk.EncryptionKeyError):
            libvdisk.Image(img, passphrase=PASSPHRASE)
        r = run(QEMU_IMG, "check", *objects, "--image-opts", opts(img, "sec1"))
        assert "No errors were found" in r.stdout
    r = run(VDISK, "amend", *objects, "-o", "encrypt.state=active,encrypt.new-secret=sec1",
            qemu_plain(tmp_path), check=False)
    assert r.returncode != 0
    assert "Can't amend encryption options - encryption not present" in r.stderr


def qemu_plain(tmp_path):
    path = tmp_path / "plain.qcow2"
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", path, "1M")
    return path
