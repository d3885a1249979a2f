"""Deliberately corrupted images: libvdisk's check counts what qemu-img check
counts, and libvdisk's repair leaves an image qemu-img check finds clean."""
import os
import shutil
import struct

import pytest

import libvdisk
from qcow2meta import COPIED, OFFSET_MASK, Qcow2
from vdhelp import (CHECK_REPAIR_ALL, CHECK_REPAIR_LEAKS, RDWR, REPAIR, MiB, NO_LOCK,
                    assert_qemu_clean, open_handle, qemu_check, qemu_img, qemu_io, qemu_raw,
                    read_all, run, vd_check_handle, vdisk_check, QEMU_IMG)

DATA_AT = 3 * MiB + 4096  # a guest offset holding data in every base image


def make_base(path, options):
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, path, "16M")
    qemu_io(path, "write -P 0x5a 0 1M", f"write -P 0x6b {DATA_AT} 300k", "write -P 7 9M 64k",
            "write -P 8 15M 1M")


def leak(q):
    """A cluster appended to the file with refcount 1 and no reference."""
    end = q.f.seek(0, 2)
    end = (end + q.cluster_size - 1) // q.cluster_size * q.cluster_size
    q.pwrite(end, b"\0" * q.cluster_size)
    q.set_refcount(end, 1)


def refcount_zero(q):
    q.set_refcount(q.host_cluster(DATA_AT), 0)


def refcount_too_high(q):
    q.set_refcount(q.host_cluster(DATA_AT), 2)


def copied_cleared(q):
    q.set_l2_entry(DATA_AT, q.l2_entry(DATA_AT) & ~COPIED)


def copied_set_on_shared(q):
    """refcount 2 on a cluster named once, with COPIED still set: both an error and a leak."""
    q.set_refcount(q.host_cluster(9 * MiB), 2)


def l1_copied_cleared(q):
    l1_index, _ = q.l2_location(DATA_AT)
    q.set_l1_entry(l1_index, q.l1_entry(l1_index) & ~COPIED)


def l2_table_refcount_zero(q):
    l1_index, _ = q.l2_location(DATA_AT)
    q.set_refcount(q.l1_entry(l1_index) & OFFSET_MASK, 0)


def two_leaks_and_an_error(q):
    leak(q)
    leak(q)
    copied_cleared(q)


def double_reference(q):
    """Two guest clusters naming one host cluster whose refcount is 1."""
    q.set_l2_entry(9 * MiB, q.l2_entry(DATA_AT))


def refcount_block_refcount_zero(q):
    block = int.from_bytes(q.pread(q.h["refcount_table_offset"], 8), "big")
    q.set_refcount(block, 0)


def l2_entry_misaligned(q):
    q.set_l2_entry(9 * MiB, q.l2_entry(9 * MiB) + 512)


def l2_entry_past_eof(q):
    q.set_l2_entry(9 * MiB, COPIED | (1 << 40))


def subcluster_bitmap_invalid(q):
    """Extended L2 only: a subcluster both allocated and zero."""
    if not q.extended_l2:
        pytest.skip("needs extended L2 entries")
    _, where = q.l2_location(DATA_AT)
    bitmap = int.from_bytes(q.pread(where + 8, 8), "big")
    q.pwrite(where + 8, (bitmap | (bitmap << 32)).to_bytes(8, "big"))


CORRUPTIONS = [leak, refcount_zero, refcount_too_high, copied_cleared, copied_set_on_shared,
               l1_copied_cleared, l2_table_refcount_zero, two_leaks_and_an_error,
               double_reference, refcount_block_refcount_zero,
               l2_entry_misaligned, l2_entry_past_eof, subcluster_bitmap_invalid]
# qemu-img's own repair cannot make these clean either (nor read the last one)
UNREPAIRABLE = {l2_entry_misaligned, l2_entry_past_eof, subcluster_bitmap_invalid}


def name_of(value):
    return getattr(value, "__name__", None)
BASES = ["cluster_size=64k", "cluster_size=4k,refcount_bits=4", "cluster_size=64k,compat=0.10",
         "cluster_size=64k,refcount_bits=64,extended_l2=on"]


def libvdisk_counts(path):
    with open_handle(path, NO_LOCK) as handle:
        rc, counts, lines = vd_check_handle(handle)
    assert rc == 0, f"vd_check failed: {rc} {lines}"
    return counts, lines


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=name_of)
def test_check_counts_agree_and_repair_is_clean(tmp_path, base, corrupt):
    if corrupt is refcount_too_high and "refcount_bits=1," in base + ",":
        pytest.skip("a 1-bit refcount cannot be too high")
    path = tmp_path / "c.qcow2"
    make_base(path, base)
    with Qcow2(path) as q:
        corrupt(q)

    rc, report = qemu_check(path)
    assert rc in (2, 3), report  # there is something to find
    counts, lines = libvdisk_counts(path)
    assert (counts["corruptions"], counts["leaks"]) == (
        report.get("corruptions", 0), report.get("leaks", 0)), (report, counts, lines)
    assert counts["check_errors"] == report.get("check-errors", 0)
    if corrupt in UNREPAIRABLE:
        return
    content = qemu_raw(path)  # repairs keep what the guest sees (the corruption may change it)

    # repair with libvdisk; qemu-img then finds nothing and the guest sees the same disk
    flags = CHECK_REPAIR_LEAKS | (CHECK_REPAIR_ALL if report.get("corruptions") else 0)
    with open_handle(path, RDWR | REPAIR) as handle:
        rc, fixed, lines = vd_check_handle(handle, flags)
    assert rc == 0, lines
    assert fixed["corruptions"] == 0 and fixed["leaks"] == 0, (fixed, lines)
    assert fixed["corruptions_fixed"] + fixed["leaks_fixed"] >= 1, (fixed, lines)
    assert_qemu_clean(path)
    assert qemu_raw(path) == content
    counts, lines = libvdisk_counts(path)
    assert counts["corruptions"] == 0 and counts["leaks"] == 0, lines


@pytest.mark.parametrize("corrupt", [leak, two_leaks_and_an_error, refcount_too_high],
                         ids=lambda f: f.__name__)
def test_repair_leaks_only_agrees_with_qemu(tmp_path, corrupt):
    """Repairing leaks only (qemu-img check -r leaks) leaves what qemu's leaves."""
    ours, theirs = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    make_base(ours, "cluster_size=64k")
    with Qcow2(ours) as q:
        corrupt(q)
    shutil.copy(ours, theirs)
    _, before = qemu_check(ours)
    qemu_img("check", "-r", "leaks", theirs, check=False)
    with open_handle(ours, RDWR | REPAIR) as handle:
        rc, counts, lines = vd_check_handle(handle, CHECK_REPAIR_LEAKS)
    assert rc == 0
    assert counts["leaks_fixed"] == before["leaks"] and counts["leaks"] == 0, (counts, lines)
    _, after_ours = qemu_check(ours)
    _, after_theirs = qemu_check(theirs)
    assert after_ours.get("leaks", 0) == 0
    assert after_ours.get("corruptions", 0) == after_theirs.get("corruptions", 0), (
        after_ours, after_theirs)
    assert qemu_raw(ours) == qemu_raw(theirs)


def test_repair_needs_a_writable_handle(tmp_path):
    path = tmp_path / "c.qcow2"
    make_base(path, "cluster_size=64k")
    with Qcow2(path) as q:
        leak(q)
    with open_handle(path) as handle:
        rc, counts, _ = vd_check_handle(handle, CHECK_REPAIR_LEAKS)
    assert rc < 0
    assert qemu_check(path)[1]["leaks"] == 1  # nothing was changed


def test_invalid_subcluster_bitmap_fails_reads_as_in_qemu(tmp_path):
    """A cluster whose subclusters are both allocated and zero is corrupt:
    qemu-img cannot read it, and neither read nor copy goes through libvdisk."""
    path = tmp_path / "c.qcow2"
    make_base(path, "cluster_size=64k,extended_l2=on")
    with Qcow2(path) as q:
        subcluster_bitmap_invalid(q)
    r = run(QEMU_IMG, "convert", "-O", "raw", path, tmp_path / "q.raw", check=False)
    assert r.returncode == 1 and "Invalid cluster entry" in r.stderr, r.stderr
    with libvdisk.open(path) as img:
        assert img.pread(0, 4096) == b"\x5a" * 4096  # the rest of the disk reads
        with pytest.raises(libvdisk.CorruptImage) as err:
            img.pread(DATA_AT, 4096)
    assert "subcluster bitmap" in str(err.value) and path.name in str(err.value)


def test_zero_flag_in_a_version_2_image_fails_reads_as_in_qemu(tmp_path):
    """Bit 0 of an L2 entry in a version 2 image (no zero clusters there):
    qemu-img check finds no error, and reads of that cluster fail; so for
    libvdisk. The rest of the disk reads."""
    path = tmp_path / "z.qcow2"
    make_base(path, "cluster_size=64k,compat=0.10")
    with Qcow2(path) as q:
        q.set_l2_entry(DATA_AT, q.l2_entry(DATA_AT) | 1)
    assert assert_checks_agree(path)[0] == 0
    r = run(QEMU_IMG, "convert", "-O", "raw", path, tmp_path / "q.raw", check=False)
    assert r.returncode == 1 and "Input/output error" in r.stderr, r.stderr
    with libvdisk.open(path) as img:
        assert img.pread(0, 4096) == b"\x5a" * 4096
        with pytest.raises(libvdisk.CorruptImage) as err:
            img.pread(DATA_AT, 4096)
    assert "zero cluster entry in a version 2 image" in str(err.value)


def test_incomplete_snapshot_entry_repaired_as_qemu_img_repairs_it(tmp_path):
    """A version 3 snapshot entry with only 8 bytes of extra data: both checks
    call it incomplete; libvdisk's -r all completes it and qemu-img then
    finds the image clean, with the snapshot still listed and readable."""
    path = tmp_path / "s.qcow2"
    make_base(path, "cluster_size=64k")
    qemu_img("snapshot", "-c", "before", path)
    with Qcow2(path) as q:
        at = q.h["snapshots_offset"]
        head = bytearray(q.pread(at, 40))
        id_len, name_len = struct.unpack(">HH", head[12:16])
        extra_len = struct.unpack(">I", head[36:40])[0]
        rest = q.pread(at + 40, extra_len + id_len + name_len)
        head[36:40] = struct.pack(">I", 8)
        q.pwrite(at, bytes(head) + rest[:8] + rest[extra_len:])
    rc, report = qemu_check(path)
    assert rc == 2 and report.get("corruptions") == 1, report
    counts, lines = libvdisk_counts(path)
    assert counts["corruptions"] == 1 and any("entry 0 is incomplete" in l for l in lines), lines
    with open_handle(path, RDWR) as handle:
        rc, fixed, lines = vd_check_handle(handle, CHECK_REPAIR_ALL)
    assert rc == 0 and fixed["corruptions"] == 0 and fixed["corruptions_fixed"] == 1, lines
    assert_qemu_clean(path)
    listing = qemu_img("snapshot", "-l", path).stdout
    assert "before" in listing
    with libvdisk.open(path, snapshot="before") as snap:
        assert snap.pread(0, 4096) == b"\x5a" * 4096


def rewrite_first_snapshot_entry(q, edit):
    """Move the snapshot table to the end of the file with entry 0 (one snapshot)
    as edit(l1_offset, l1_size, id, name, extra) returns its fields."""
    at = q.h["snapshots_offset"]
    head = q.pread(at, 40)
    l1_offset, l1_size, id_len, name_len = struct.unpack(">QIHH", head[:16])
    extra_len = struct.unpack(">I", head[36:40])[0]
    rest = q.pread(at + 40, extra_len + id_len + name_len)
    l1_offset, l1_size, extra = edit(l1_offset, l1_size, rest[:extra_len])
    ident, name = rest[extra_len:extra_len + id_len], rest[extra_len + id_len:]
    entry = (struct.pack(">QIHH", l1_offset, l1_size, id_len, name_len) + head[16:36] +
             struct.pack(">I", len(extra)) + extra + ident + name)
    where = (q.f.seek(0, 2) + q.cluster_size - 1) // q.cluster_size * q.cluster_size
    q.pwrite(where, entry + bytes(-len(entry) % q.cluster_size))
    q.set_field("snapshots_offset", where)


def test_too_much_snapshot_extra_data_repaired_as_qemu_img_repairs_it(tmp_path):
    """2 KiB of extra data (QEMU allows 1 KiB): both checks fail to read the
    table (exit 1); -r all keeps the first 1 KiB, rewrites the table, and the
    snapshot stays listed and readable."""
    path = tmp_path / "x.qcow2"
    make_base(path, "cluster_size=64k")
    qemu_img("snapshot", "-c", "before", path)
    with Qcow2(path) as q:
        rewrite_first_snapshot_entry(q, lambda off, size, extra: (off, size, extra + bytes(2048 - len(extra))))
    assert assert_checks_agree(path)[0] == 1
    ours = repair_both_and_compare(path, tmp_path)
    assert "before" in qemu_img("snapshot", "-l", ours).stdout
    with libvdisk.open(ours, snapshot="before") as snap:
        assert snap.pread(0, 4096) == b"\x5a" * 4096


def test_misaligned_snapshot_l1_table_is_reported_as_qemu_img_reports_it(tmp_path):
    """A snapshot whose L1 table offset is misaligned: qemu-img check counts a
    corruption (and the snapshot's clusters leak); so does libvdisk, which
    opens the image for it, read-only, and refuses to read the snapshot."""
    path = tmp_path / "m.qcow2"
    make_base(path, "cluster_size=64k")
    qemu_img("snapshot", "-c", "before", path)
    with Qcow2(path) as q:
        rewrite_first_snapshot_entry(q, lambda off, size, extra: (off + 512, size, extra))
    rc, report = assert_checks_agree(path)
    assert rc == 2 and report["corruptions"] >= 1, report
    with pytest.raises(libvdisk.CorruptImage):
        libvdisk.open(path, snapshot="before")


def test_too_large_snapshot_l1_table_does_not_stop_the_repair(tmp_path):
    """A snapshot whose L1 size claims 2^31 entries (more than QEMU allows):
    both checks count it; -r all repairs the rest (the snapshot's clusters
    leak) and leaves that corruption, no more than qemu-img's repair leaves."""
    path = tmp_path / "l.qcow2"
    make_base(path, "cluster_size=64k")
    qemu_img("snapshot", "-c", "before", path)
    with Qcow2(path) as q:
        rewrite_first_snapshot_entry(q, lambda off, size, extra: (off, 1 << 31, extra))
    assert assert_checks_agree(path)[0] == 2
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(path, ours)
    shutil.copy(path, theirs)
    r = run(os.environ["VDISK"], "check", "-r", "all", ours, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    qemu_img("check", "-r", "all", theirs, check=False)
    (rc_ours, after_ours), (rc_theirs, after_theirs) = qemu_check(ours), qemu_check(theirs)
    assert rc_ours == rc_theirs == 2
    assert 1 <= after_ours["corruptions"] <= after_theirs["corruptions"], (after_ours, after_theirs)
    assert after_ours.get("leaks", 0) == 0, after_ours


def test_two_l1_entries_naming_one_l2_table(tmp_path):
    """An L1 entry aimed at the L2 table of another, COPIED set on both: a
    write through one would change the other's guest data, so libvdisk
    refuses it; -r all makes the table shared (refcount 2, COPIED clear) as
    qemu-img's does, and then a write copies the table first (freeing no
    cluster that metadata still holds)."""
    path = tmp_path / "t.qcow2"
    make_base(path, "cluster_size=4k")  # an L2 table covers 2 MiB
    with Qcow2(path) as q:
        first_index, _ = q.l2_location(0)
        other_index, _ = q.l2_location(9 * MiB)
        q.set_l1_entry(other_index, q.l1_entry(first_index))
    with libvdisk.open(path, "r+") as img:
        with pytest.raises(libvdisk.CorruptImage):
            img.pwrite(9 * MiB, b"x" * 4096)
    ours = repair_both_and_compare(path, tmp_path)
    with libvdisk.open(ours, "r+") as img:
        img.pwrite(9 * MiB, b"x" * 4096)
        assert img.pread(0, 4096) == b"\x5a" * 4096
        assert img.pread(9 * MiB, 4096) == b"x" * 4096
    # the copy leaves the other entry's table with refcount 1 and COPIED still clear:
    # benign (a needless copy later), as a deleted snapshot's sharing leaves it
    r = run(QEMU_IMG, "check", ours, check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert all(line.startswith("ERROR OFLAG_COPIED L2 cluster") and line.endswith("refcount=1")
               for line in errors), r.stderr
    assert "leaked" not in r.stdout, r.stdout


# ---------------------------------------------------------- images check must open

def assert_checks_agree(path):
    """vdisk check and qemu-img check: same exit status and counts. Returns qemu's report."""
    rc, report = qemu_check(path)
    ours = vdisk_check(path)
    if ours is None:
        pytest.skip("no vdisk CLI")
    keys = ("corruptions", "leaks", "check-errors")
    assert (ours[0], [ours[1].get(k, 0) for k in keys]) == (rc, [report.get(k, 0) for k in keys]), (
        ours, report)
    return rc, report


def repair_both_and_compare(path, tmp_path):
    """-r all by vdisk and by qemu-img on copies: ours is no worse, and the guest data
    qemu-img reads is the same."""
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(path, ours)
    shutil.copy(path, theirs)
    r = run(os.environ["VDISK"], "check", "-r", "all", ours, check=False)
    assert r.returncode in (0, 3), r.stdout + r.stderr
    qemu_img("check", "-r", "all", theirs, check=False)
    assert_qemu_clean(ours)
    assert qemu_raw(ours) == qemu_raw(theirs)
    return ours


def rt_entry(q, index):
    return q.h["refcount_table_offset"] + 8 * index


def test_unused_refcount_table_entry_with_reserved_bits(tmp_path):
    """qemu-img counts one corruption; the open no longer refuses the image."""
    path = tmp_path / "r.qcow2"
    make_base(path, "cluster_size=64k")
    with Qcow2(path) as q:
        q.pwrite(rt_entry(q, 1), (1).to_bytes(8, "big"))
    rc, report = assert_checks_agree(path)
    assert rc == 2 and report["corruptions"] == 1
    repair_both_and_compare(path, tmp_path)


@pytest.mark.parametrize("index", [0, 1])
def test_refcount_block_past_the_end_of_the_file(tmp_path, index):
    """Block 0 past the end reads as zeroes, as for qemu-img: every cluster's refcount is wrong."""
    path = tmp_path / "r.qcow2"
    make_base(path, "cluster_size=64k")
    with Qcow2(path) as q:
        q.pwrite(rt_entry(q, index), (1 << 30).to_bytes(8, "big"))
    rc, report = assert_checks_agree(path)
    assert rc == 2 and report["corruptions"] >= 1
    repair_both_and_compare(path, tmp_path)


def test_truncated_inside_an_all_zero_l1_table(tmp_path):
    """The missing part of the L1 table reads as zeroes: no errors for either check; the
    image opens read-only, read-write only to be repaired, and -r all makes the file whole."""
    path = tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path, "64M")
    content = qemu_raw(path)
    with Qcow2(path) as q:  # an empty image: its L1 table is last
        assert file_size(q) == q.h["l1_table_offset"] + 8 * q.h["l1_size"]
        q.f.truncate(q.h["l1_table_offset"] + 8 * q.h["l1_size"] - 100)
    rc, _ = assert_checks_agree(path)
    assert rc == 0
    assert read_all(path) == content
    with pytest.raises(libvdisk.CorruptImage, match="L1 table extends past the end"):
        open_handle(path, RDWR).__enter__()
    repaired = repair_both_and_compare(path, tmp_path)
    with open_handle(repaired, RDWR):
        pass
    assert read_all(repaired) == content


def file_size(q):
    return q.f.seek(0, 2)


def test_truncated_inside_the_snapshot_table(tmp_path):
    """The missing entries read as zeroes, incomplete for version 3: both checks count
    them, and -r all completes them."""
    path = tmp_path / "s.qcow2"
    make_base(path, "cluster_size=64k")
    for name in ("one", "two", "three"):
        qemu_img("snapshot", "-c", name, path)
    with Qcow2(path) as q:
        assert q.h["snapshots_offset"] + q.cluster_size >= file_size(q), "table not last"
        q.f.truncate(q.h["snapshots_offset"] + 60)
    rc, report = assert_checks_agree(path)
    assert rc == 2, report
    repair_both_and_compare(path, tmp_path)


# ---------------------------------------------------------- verdicts and counts

@pytest.mark.parametrize("base", ["cluster_size=64k", "cluster_size=4k,compat=0.10"])
def test_misaligned_l1_entry_walks_the_table_where_it_points(tmp_path, base):
    """qemu-img check reads the L2 table at the misaligned offset and counts what it names."""
    path = tmp_path / "m.qcow2"
    make_base(path, base)
    with Qcow2(path) as q:
        l1_index, _ = q.l2_location(DATA_AT)
        q.set_l1_entry(l1_index, q.l1_entry(l1_index) + 512)
    rc, report = assert_checks_agree(path)
    assert rc == 2, report


def test_refcount_overflow_counts_every_reference_beyond_the_width(tmp_path):
    """Four references to one cluster, with 2-bit refcounts: an overflow, counted as qemu-img does."""
    path = tmp_path / "o.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=2", path, "16M")
    qemu_io(path, "write -P 1 0 64k")
    with Qcow2(path) as q:
        entry = q.l2_entry(0)
        for guest in (1, 2, 3):
            q.set_l2_entry(guest * 65536, entry & ~COPIED)
        q.set_refcount(entry & OFFSET_MASK, 3)
    rc, report = assert_checks_agree(path)
    assert rc == 2 and report["corruptions"] >= 2, report


def test_repairing_leaks_fails_when_the_refcounts_need_a_rebuild(tmp_path):
    """qemu-img check -r leaks: 'Check failed', exit 1, no report, nothing written."""
    path = tmp_path / "r.qcow2"
    make_base(path, "cluster_size=64k")
    with Qcow2(path) as q:
        q.pwrite(rt_entry(q, 1), (1).to_bytes(8, "big"))
    before = path.read_bytes()
    theirs = run(QEMU_IMG, "check", "-r", "leaks", "--output=json", path, check=False)
    ours = run(os.environ["VDISK"], "check", "-r", "leaks", "--output=json", path, check=False)
    assert theirs.returncode == ours.returncode == 1, (theirs.stderr, ours.stderr)
    assert not theirs.stdout.strip() and not ours.stdout.strip()
    assert "Check failed" in ours.stderr and "need to rebuild" in ours.stderr
    assert path.read_bytes() == before
