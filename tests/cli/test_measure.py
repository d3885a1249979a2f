"""vdisk measure against qemu-img measure: the same figures for the same input and options."""
import pytest

from conftest import MiB, make_sparse, same_result

TARGETS = [
    ["-O", "raw"],
    ["-O", "qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=4k"],
    ["-O", "qcow2", "-o", "cluster_size=2M"],
    ["-O", "qcow2", "-o", "cluster_size=512,refcount_bits=1"],
    ["-O", "qcow2", "-o", "refcount_bits=64"],
    ["-O", "qcow2", "-o", "extended_l2=on"],
    ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=16k"],
    ["-O", "qcow2", "-o", "compat=0.10"],
    ["-O", "qcow2", "-o", "preallocation=metadata"],
    ["-O", "qcow2", "-o", "preallocation=falloc"],
    ["-O", "qcow2", "-o", "preallocation=full", "-o", "lazy_refcounts=on"],
    ["-O", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2"],
    ["-O", "qcow2", "--output=json"],
]


def source_images(tmp, qemu_img, qemu_io):
    raw = make_sparse(tmp / "src.raw", 10 * MiB + 512,
                      [(0, 100), (MiB + 4000, 70000), (5 * MiB, 2 * MiB), (10 * MiB, 512)],
                      [(8 * MiB, MiB)])
    q = tmp / "src.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", q, "7M", check=0)
    for command in ["write -P 1 0 3k", "write -z 64k 64k", "write -P 2 1M 100k",
                    "write -z -u 2M 1M", "write -P 3 6M 4k"]:
        qemu_io("-f", "qcow2", "-c", command, q, check=0)
    v2 = tmp / "v2.qcow2"
    qemu_img("convert", "-O", "qcow2", "-o", "compat=0.10", q, v2, check=0)
    top = tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "src.qcow2", "-F", "qcow2", top, "9M", check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 4 5M 64k", top, check=0)
    return {"raw": raw, "qcow2": q, "v2": v2, "chain": top}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, qemu_img, qemu_io):
    return source_images(tmp_path_factory.mktemp("measure"), qemu_img, qemu_io)


@pytest.mark.parametrize("target", TARGETS, ids=" ".join)
@pytest.mark.parametrize("source", ["raw", "qcow2", "v2", "chain"])
def test_image_as_qemu_img(vdisk, qemu_img, sources, source, target):
    args = ["measure", *target, sources[source]]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert same_result(ours, theirs), (ours, theirs)
    assert ours.returncode == 0


@pytest.mark.parametrize("target", TARGETS, ids=" ".join)
@pytest.mark.parametrize("size", ["0", "1000", "1M", "1G", "3T", "300T"])
def test_size_as_qemu_img(vdisk, qemu_img, size, target):
    args = ["measure", *target, "--size", size]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert same_result(ours, theirs), (ours, theirs)


def test_snapshot(vdisk, qemu_img, qemu_io, tmp_path):
    q = tmp_path / "s.qcow2"
    qemu_img("create", "-f", "qcow2", q, "4M", check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 1 0 1M", q, check=0)
    qemu_img("snapshot", "-c", "one", q, check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 2 2M 2M", q, check=0)
    for snapshot in ["one", "1", "snapshot.name=one", "snapshot.id=1", "nosuch",
                     "snapshot.bogus=1"]:
        args = ["measure", "-O", "qcow2", "-l", snapshot, q]
        ours, theirs = vdisk(*args), qemu_img(*args)
        assert same_result(ours, theirs), (snapshot, ours, theirs)


def test_sparse_image_is_not_read(vdisk, qemu_img, tmp_path):
    # 8 TiB of holes (most a file system allows): measured from block status in no time
    big = make_sparse(tmp_path / "big.raw", 8 << 40, [(1 << 40, 4096)])
    args = ["measure", "-O", "qcow2", "-o", "cluster_size=2M", big]
    assert same_result(vdisk(*args), qemu_img(*args))


@pytest.mark.parametrize("args", [
    [],
    ["--size", "1M", "a.raw"],
    ["a.raw", "b.raw"],
    ["-f", "raw"],
    ["-l", "snap", "--size", "1M"],
    ["-O", "nosuch", "--size", "1M"],
    ["-O", "qcow2", "-o", "bogus=1", "--size", "1M"],
    ["-O", "qcow2", "-o", "cluster_size=1000", "--size", "1M"],
    ["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1M"],
    ["-O", "qcow2", "--size", "1E"],
    ["-O", "qcow2", "--size", "-5"],
    ["--output=yaml", "--size", "1M"],
])
def test_errors_as_qemu_img(vdisk, qemu_img, tmp_path, args):
    make_sparse(tmp_path / "a.raw", MiB)
    make_sparse(tmp_path / "b.raw", MiB)
    ours, theirs = vdisk("measure", *args, cwd=tmp_path), qemu_img("measure", *args, cwd=tmp_path)
    assert same_result(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("case", ["missing", "wrong-format", "missing-backing"])
def test_open_errors(vdisk, qemu_img, tmp_path, case):
    make_sparse(tmp_path / "a.raw", MiB)
    qemu_img("create", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2",
             tmp_path / "over.qcow2", "1M", check=0)
    args = {"missing": ["nosuch.raw"], "wrong-format": ["-f", "qcow2", "a.raw"],
            "missing-backing": ["over.qcow2"]}[case]
    ours = vdisk("measure", "-O", "qcow2", *args, cwd=tmp_path)
    theirs = qemu_img("measure", "-O", "qcow2", *args, cwd=tmp_path)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "")
    assert ours.stderr.startswith(f"vdisk: Could not open '{args[-1]}': ")
