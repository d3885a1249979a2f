"""Hostile qcow2 images (and VMDK and qcow v1 ones) through libvdisk: no crash, no hang, a clean error
naming the file or success, bounded memory, and the files left untouched.

make_hostile.py builds the corpus (one directory per variant); every
variant is probed by hostile_probe (a small C program, so that sanitizers
see everything) in a child process with a 10 s timeout, read-only (open,
read all or a sample, block status, check, snapshots) and then read-write
(open and close). qemu-img info and check run on the same files for
comparison; a table of every variant is written to hostile-report.tsv in
the corpus directory (its path is printed with -s or on failure).
"""
import concurrent.futures
import hashlib
import json
import os
import stat
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_hostile  # noqa: E402

TIMEOUT = 10
SANITIZED = bool(os.environ.get("HOSTILE_SANITIZED"))
RSS_LIMIT_KB = (1 << 20) if SANITIZED else 200 << 10  # KiB: QEMU's own limits allow ~100 MiB
QEMU_IMG = make_hostile.QEMU_IMG

# Variants that show known libvdisk bugs (reported to the lead), per test;
# strict, so that a fix turns them into failures until the entry is removed.
KNOWN = {
    "read_only": {},
    "read_write": {},
    "check": {},
    "lax": {},
}


def probe_path():
    path = os.environ.get("HOSTILE_PROBE")
    if not path:
        library = os.environ.get("LIBVDISK_LIBRARY", "")
        build = os.path.dirname(os.path.dirname(library)) if library else ""
        path = os.path.join(build, "tests", "hostile", "hostile_probe")
    if not os.access(path, os.X_OK):
        pytest.skip("HOSTILE_PROBE does not name the hostile_probe program (run via meson test)")
    return path


def run_child(args, timeout=TIMEOUT):
    """(status, stdout, stderr, seconds): status is the exit code, or
    "hang" after the timeout (the child is killed)."""
    start = time.monotonic()
    try:
        r = subprocess.run(args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return "hang", (e.stdout or b"").decode(errors="replace"), \
            (e.stderr or b"").decode(errors="replace"), time.monotonic() - start
    return (r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"),
            time.monotonic() - start)


def snapshot_files(directory):
    """{name: sha256 or link target or file type} for everything in a variant's directory."""
    state = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            state[name] = "link:" + os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                state[name] = hashlib.sha256(f.read()).hexdigest()
        else:
            state[name] = "type:%o" % stat.S_IFMT(st.st_mode)
    return state


def changed_bytes(old, new):
    """Offsets (at most 1000) where two byte strings differ, a length change included."""
    if old == new:
        return []
    out = [i for i in range(min(len(old), len(new))) if old[i] != new[i]][:1000]
    return out + list(range(min(len(old), len(new)), max(len(old), len(new))))[:1000 - len(out)]


def parse(stdout):
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def qemu(*args):
    status, out, err, _ = run_child([QEMU_IMG, *args])
    return status, out, err


def without_backing(image):
    """A json: name for image that keeps qemu-img from opening its backing
    chain (qemu-img check hangs on backing loops)."""
    return json.dumps({"driver": "qcow2", "backing": None,
                       "file": {"driver": "file", "filename": image}})


def probe_command(probe, *args):
    """The probe's command line; outside sanitizers its address space is
    capped so that a runaway allocation fails instead of taking the machine."""
    return [probe] + ([] if SANITIZED else ["--as-limit", "4096"]) + list(args)


def examine(corpus, entry, probe):
    """Everything the tests assert about one variant."""
    vdir = os.path.join(corpus, entry["dir"])
    image = os.path.join(vdir, entry["file"])
    result = {"entry": entry, "vdir": vdir, "image": image}
    result["before"] = snapshot_files(vdir)
    result["qemu_info"] = qemu("info", "--output=json", "-U", image)
    result["qemu_check"] = qemu("check", "--output=json", "-U", "json:" + without_backing(image))
    result["ro"] = run_child(probe_command(probe, image))
    result["ro_json"] = parse(result["ro"][1])
    result["after_ro"] = snapshot_files(vdir)
    original = open(image, "rb").read() if os.path.isfile(image) else b""
    result["rw"] = run_child(probe_command(probe, "--rw", image))
    result["rw_json"] = parse(result["rw"][1])
    result["after_rw"] = snapshot_files(vdir)
    now = open(image, "rb").read() if os.path.isfile(image) else b""
    result["changed_bytes"] = changed_bytes(original, now)
    if entry["outside"]:
        dump = image + ".confined.dump"
        result["confined"] = run_child(probe_command(probe, "--confined", "--dump", dump, image))
        result["confined_json"] = parse(result["confined"][1])
        result["confined_dump"] = open(dump, "rb").read() if os.path.exists(dump) else b""
        if os.path.exists(dump):
            os.unlink(dump)
    return result


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hostile"))
    index = make_hostile.build(out)
    return out, {e["name"]: e for e in index}


@pytest.fixture(scope="session")
def results(corpus):
    """Every variant examined, in parallel; and the comparison table written."""
    out, index = corpus
    probe = probe_path()
    workers = max(2, min(8, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = dict(zip(index, pool.map(lambda e: examine(out, e, probe), index.values())))
    write_report(out, done)
    return done


def write_report(out, done):
    rows = ["variant\tqemu-img info\tqemu-img check\tlibvdisk open\tread errors\t"
            "check corruptions\tnote\twhat"]
    for name, r in done.items():
        j = r["ro_json"] or {}
        rows.append("\t".join(str(x) for x in (
            name, r["qemu_info"][0], r["qemu_check"][0],
            j.get("open_rc", r["ro"][0]), j.get("read_errors", "-"),
            j.get("corruptions", "-"), silent_acceptance(r) or "", r["entry"]["what"])))
    with open(os.path.join(out, "hostile-report.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"\nhostile corpus report: {os.path.join(out, 'hostile-report.tsv')}")


def silent_acceptance(r):
    """A note when qemu-img refuses the image but libvdisk opens and reads all
    of it and its check finds nothing wrong."""
    j = r["ro_json"]
    if r["qemu_info"][0] in (0, "hang") or not j or j["open_rc"] < 0:
        return None
    if j.get("read_errors") or j.get("bs_errors") or j.get("corruptions") or \
            j.get("check_errors") or j.get("check_rc", 0) not in (0, -7):
        return None
    return "accepted by libvdisk, refused by qemu-img: " + r["qemu_info"][2].strip()[:200]


def variant_params(test):
    params = []
    for v in make_hostile.VARIANTS:
        reason = KNOWN[test].get(v["name"])
        marks = [pytest.mark.xfail(strict=True, reason="libvdisk bug: " + reason)] \
            if reason else []
        params.append(pytest.param(v["name"], marks=marks, id=v["name"]))
    return params


def names_the_file(message, r):
    """An error message names the file: the image's path, or the file it refers to."""
    if not message:
        return False
    return r["entry"]["dir"] + "/" in message or os.path.basename(r["image"]) in message or \
        any(p in message for p in ("/etc/passwd", "/dev/zero"))


def assert_survived(status, name, kind):
    out, err = status[1], status[2]
    assert status[0] != "hang", f"{name}: {kind} hung for {TIMEOUT} s"
    signal = f" (signal {-status[0]})" if status[0] < 0 else ""
    assert status[0] == 0, (f"{name}: {kind} exited with {status[0]}{signal}"
                            f"\n{out[-2000:]}\n{err[-4000:]}")


@pytest.mark.parametrize("name", variant_params("read_only"))
def test_read_only(results, name):
    r = results[name]
    assert_survived(r["ro"], name, "read-only probe")
    j = r["ro_json"]
    assert j is not None, f"{name}: no result: {r['ro'][1]}"
    assert j["maxrss_kb"] < RSS_LIMIT_KB, f"{name}: peak RSS {j['maxrss_kb']} KiB"
    assert r["after_ro"] == r["before"], f"{name}: a read-only open changed the files"
    if j["open_rc"] < 0:
        assert names_the_file(j["open_msg"], r), f"{name}: open error {j['open_msg']!r}"
        return
    for key in ("read", "bs"):
        if j[f"{key}_errors"]:
            assert names_the_file(j[f"{key}_msg"], r), f"{name}: {key} error {j[key + '_msg']!r}"
    if j["check_rc"] < 0:
        assert names_the_file(j["check_msg"], r), f"{name}: check error {j['check_msg']!r}"
    assert j["close_rc"] == 0, f"{name}: read-only close failed: {j['close_msg']}"
    # block status described the disk in well-formed extents up to an error or the end
    assert j["bad_extents"] == 0, f"{name}: block status returned an extent not at the offset asked"
    assert j["bs_errors"] or j["bs_end"] == j["size"] or j["extents"] >= 200000, j
    if not j["read_errors"]:
        assert j["bytes_read"] == (j["size"] if not j["sampled"] else j["bytes_read"])


@pytest.mark.parametrize("name", variant_params("read_write"))
def test_read_write_open_changes_nothing_unless_valid(results, name):
    r = results[name]
    assert_survived(r["rw"], name, "read-write probe")
    j = r["rw_json"]
    assert j is not None
    assert j["maxrss_kb"] < RSS_LIMIT_KB, f"{name}: peak RSS {j['maxrss_kb']} KiB"
    if j["open_rc"] < 0:
        assert names_the_file(j["open_msg"], r), f"{name}: open error {j['open_msg']!r}"
    if r["after_rw"] == r["after_ro"]:
        return
    changed = [k for k in r["after_rw"] if r["after_rw"][k] != r["after_ro"].get(k)]
    assert j["open_rc"] == 0, f"{name}: a failed read-write open changed {changed}"
    assert changed == [r["entry"]["file"]], f"{name}: read-write open+close changed {changed}"
    # the feature bits of the header may change (autoclear bits we do not
    # maintain, a dirty bit after the repair); anything else only in an image
    # qemu-img check finds valid, which must stay so
    if set(r["changed_bytes"]) <= set(range(72, 96)):
        return
    valid = r["qemu_check"][0] in (0, 3)
    assert valid, (f"{name}: read-write open+close of an invalid image changed bytes "
                   f"{r['changed_bytes'][:10]}")
    status, out, err = qemu("check", "-U", "json:" + without_backing(r["image"]))
    assert status in (0, 3), f"{name}: now qemu-img check says:\n{out}{err}"


def outside_params():
    return [pytest.param(v["name"], id=v["name"]) for v in make_hostile.VARIANTS
            if v["outside"]]


@pytest.mark.parametrize("name", outside_params())
def test_confined_refuses_files_outside_the_directory(results, name):
    r = results[name]
    assert_survived(r["confined"], name, "confined probe")
    j = r["confined_json"]
    with open("/etc/passwd", "rb") as f:
        needle = f.read(24)
    assert needle not in r["confined_dump"], f"{name}: /etc/passwd bytes exposed under CONFINED"
    assert b"OUTSIDE-THE-DIRECTORY" not in r["confined_dump"], \
        f"{name}: ../outside.raw bytes exposed under CONFINED"
    assert j["open_rc"] < 0, f"{name}: opened with VD_OPEN_CONFINED"
    assert names_the_file(j["open_msg"], r), j["open_msg"]


@pytest.mark.parametrize("name", variant_params("lax"))
def test_not_accepted_where_qemu_refuses(results, name):
    """libvdisk may be stricter than qemu-img, not laxer: an image qemu-img
    info refuses is not opened and read without any complaint."""
    note = silent_acceptance(results[name])
    assert note is None, f"{name} ({results[name]['entry']['what']}): {note}"


@pytest.mark.parametrize("name", variant_params("check"))
def test_check_reports_what_qemu_reports(results, name):
    """Where qemu-img check finds corruptions and libvdisk opens the image,
    vd_check() (on a fresh handle) finds a problem too, or cannot run."""
    r = results[name]
    j = r["ro_json"]
    if r["qemu_check"][0] != 2 or not j or j["open_rc"] < 0 or j.get("check_rc", 0) < 0:
        return
    try:
        qemu_report = json.loads(r["qemu_check"][1])
    except ValueError:
        qemu_report = {}
    assert j["corruptions"] or j["check_errors"], (
        f"{name} ({r['entry']['what']}): qemu-img check finds "
        f"{qemu_report.get('corruptions')} corruptions, libvdisk none "
        f"(leaks {j['leaks']})")


@pytest.fixture(scope="session")
def other_corpus(tmp_path_factory):
    """The VMDK and qcow (v1) variants (make_hostile.build_other), by format."""
    out = str(tmp_path_factory.mktemp("hostile-other"))
    by_format = {}
    for e in make_hostile.build_other(out):
        by_format.setdefault(e["format"], []).append(e)
    return out, by_format


def probe_other(corpus, entry, probe):
    """The failures of one VMDK or qcow (v1) variant: read-only then read-write
    probes survive, within the RSS limit, error messages name the file, and
    neither changes a byte."""
    vdir = os.path.join(corpus, entry["dir"])
    image = os.path.join(vdir, entry["file"])
    r = {"entry": {**entry, "outside": False}, "image": image}
    before = snapshot_files(vdir)
    failures = []
    for args in ([], ["--rw"]):
        status = run_child(probe_command(probe, *args, image))
        kind = "read-write probe" if args else "read-only probe"
        try:
            assert_survived(status, entry["name"], kind)
            j = parse(status[1])
            assert j is not None, f"{entry['name']}: no result: {status[1]}"
            assert j["maxrss_kb"] < RSS_LIMIT_KB, f"{entry['name']}: peak RSS {j['maxrss_kb']} KiB"
            for key in ("open", "read", "bs", "check"):
                msg = j.get(f"{key}_msg")
                failed = j.get(f"{key}_rc", 0) < 0 or j.get(f"{key}_errors")
                assert not failed or names_the_file(msg, r), \
                    f"{entry['name']}: {kind}: {key} error {msg!r} does not name the file"
            assert snapshot_files(vdir) == before, f"{entry['name']}: {kind} changed the files"
        except AssertionError as e:
            failures.append(str(e))
    return failures


@pytest.mark.parametrize("fmt", ["vmdk", "qcow"])
def test_other_formats_survive(other_corpus, fmt):
    """Every hostile VMDK and qcow (v1) variant is refused cleanly or read
    (and checked) without a crash, a hang or a change to its files."""
    out, by_format = other_corpus
    probe = probe_path()
    entries = by_format[fmt]
    assert len(entries) > 40
    workers = max(2, min(8, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        failures = [f for fs in pool.map(lambda e: probe_other(out, e, probe), entries)
                    for f in fs]
    assert not failures, "\n".join(failures[:20])


def test_confined_accepts_backing_files_inside_the_directory(tmp_path):
    """Control for the confined tests: a chain inside one directory opens."""
    probe = probe_path()
    sub = tmp_path / "d"
    sub.mkdir()
    make_hostile.qemu_img("create", "-q", "-f", "raw", "base.raw", "1M", cwd=sub)
    make_hostile.qemu_io("base.raw", "write -P 0x42 0 1M", fmt="raw", cwd=sub)
    make_hostile.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
                          "top.qcow2", cwd=sub)
    dump = tmp_path / "dump"
    status = run_child([probe, "--confined", "--dump", str(dump), str(sub / "top.qcow2")])
    assert_survived(status, "inside", "confined probe")
    j = parse(status[1])
    assert j["open_rc"] == 0, j
    assert j["chain_depth"] == 1
    assert dump.read_bytes() == b"\x42" * (1 << 20)
    # and the same chain named through ../ is refused
    (tmp_path / "e").mkdir()
    make_hostile.qemu_img("create", "-q", "-f", "qcow2", "-b", "../d/base.raw", "-F", "raw",
                          "top.qcow2", cwd=tmp_path / "e")
    status = run_child([probe, "--confined", str(tmp_path / "e" / "top.qcow2")])
    assert_survived(status, "dotdot", "confined probe")
    assert parse(status[1])["open_rc"] < 0
    status = run_child([probe, str(tmp_path / "e" / "top.qcow2")])
    assert parse(status[1])["open_rc"] == 0


def test_probe_detects_a_crash(tmp_path):
    """The harness itself: a child killed by a signal is reported as such."""
    status = run_child([sys.executable, "-c", "import os; os.kill(os.getpid(), 11)"])
    with pytest.raises(AssertionError, match="signal 11"):
        assert_survived(status, "self-test", "crash")
    status = run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    with pytest.raises(AssertionError, match="hung"):
        assert_survived(status, "self-test", "hang")
