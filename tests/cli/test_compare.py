"""vdisk compare against qemu-img compare: output, exit status, on many layouts."""
import shutil

import pytest

from conftest import MiB, make_sparse, same_result


def qemu_io_write(qemu_io, path, *commands, fmt="qcow2"):
    for command in commands:
        qemu_io("-f", fmt, "-c", command, path, check=0)


def qcow2(qemu_img, qemu_io, path, size, *commands, options=()):
    qemu_img("create", "-f", "qcow2", *options, path, size, check=0)
    qemu_io_write(qemu_io, path, *commands)
    return path


def patched(path, new_path, offset, data):
    """A copy of path with data written at offset."""
    shutil.copyfile(path, new_path)
    with open(new_path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return new_path


def build_pair(name, tmp, qemu_img, qemu_io):
    """Two images (and their -f/-F formats) for one named layout."""
    base = make_sparse(tmp / "base.raw", 4 * MiB, [(MiB, 64 * 1024), (3 * MiB + 512, 1000)])
    as_qcow2 = tmp / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", base, as_qcow2, check=0)
    if name == "raw-copy":
        return base, patched(base, tmp / "b.raw", 0, b""), "raw", "raw"
    if name == "raw-vs-qcow2":
        return base, as_qcow2, "raw", "qcow2"
    if name == "first-byte":
        return base, patched(base, tmp / "b.raw", 0, b"\1"), "raw", "raw"
    if name == "last-byte":
        return base, patched(base, tmp / "b.raw", 4 * MiB - 1, b"\1"), "raw", "raw"
    if name == "middle-byte":
        data = open(base, "rb").read()[MiB + 1234: MiB + 1235]
        return base, patched(base, tmp / "b.raw", MiB + 1234, bytes([data[0] ^ 0x80])), \
            "raw", "raw"
    if name == "data-in-hole":
        return base, patched(base, tmp / "b.raw", 2 * MiB + 700, b"\7"), "raw", "raw"
    if name == "written-zeroes":  # allocated zeroes vs a hole: identical, not in strict mode
        return base, patched(base, tmp / "b.raw", 2 * MiB, bytes(MiB)), "raw", "raw"
    if name == "zero-clusters":
        b = tmp / "b.qcow2"
        shutil.copyfile(as_qcow2, b)
        qemu_io_write(qemu_io, b, "write -z 0 2M", "write -P 0 2M 64k")
        return as_qcow2, b, "qcow2", "qcow2"
    if name == "zero-cluster-over-data":
        b = tmp / "b.qcow2"
        shutil.copyfile(as_qcow2, b)
        qemu_io_write(qemu_io, b, "write -z 1M 64k")
        return as_qcow2, b, "qcow2", "qcow2"
    if name == "larger-zero-tail":
        b = tmp / "b.raw"
        shutil.copyfile(base, b)
        with open(b, "r+b") as f:
            f.truncate(6 * MiB)
            f.seek(5 * MiB)
            f.write(bytes(4096))
        return base, b, "raw", "raw"
    if name == "larger-data-tail":
        b = tmp / "b.raw"
        shutil.copyfile(base, b)
        with open(b, "r+b") as f:
            f.truncate(6 * MiB)
            f.seek(5 * MiB + 4096 + 3)
            f.write(b"x")
        return b, base, "raw", "raw"
    if name == "smaller-qcow2":
        small = qcow2(qemu_img, qemu_io, tmp / "s.qcow2", "1M", "write -P 9 0 4k")
        big = qcow2(qemu_img, qemu_io, tmp / "l.qcow2", "3M", "write -P 9 0 4k",
                    "write -z 2M 64k")
        return small, big, "qcow2", "qcow2"
    if name == "chain-vs-flat":
        qcow2(qemu_img, qemu_io, tmp / "bottom.qcow2", "4M", "write -P 1 0 1M",
              "write -P 2 2M 1M")
        qemu_img("create", "-f", "qcow2", "-b", "bottom.qcow2", "-F", "qcow2",
                 tmp / "top.qcow2", check=0)
        qemu_io_write(qemu_io, tmp / "top.qcow2", "write -P 3 512k 4k", "write -z 2M 64k")
        qemu_img("convert", "-O", "raw", tmp / "top.qcow2", tmp / "flat.raw", check=0)
        return tmp / "top.qcow2", tmp / "flat.raw", "qcow2", "raw"
    if name == "chain-vs-base":
        qcow2(qemu_img, qemu_io, tmp / "bottom.qcow2", "4M", "write -P 1 0 1M")
        qemu_img("create", "-f", "qcow2", "-b", "bottom.qcow2", "-F", "qcow2",
                 tmp / "top.qcow2", check=0)
        qemu_io_write(qemu_io, tmp / "top.qcow2", "write -P 1 0 64k", "write -P 4 3M 512")
        return tmp / "top.qcow2", tmp / "bottom.qcow2", "qcow2", "qcow2"
    if name == "extended-l2":
        a = qcow2(qemu_img, qemu_io, tmp / "a.qcow2", "2M", "write -P 5 4k 4k",
                  "write -z 64k 8k", options=("-o", "extended_l2=on"))
        b = qcow2(qemu_img, qemu_io, tmp / "b.qcow2", "2M", "write -P 5 4k 4k")
        return a, b, "qcow2", "qcow2"
    raise KeyError(name)


LAYOUTS = ["raw-copy", "raw-vs-qcow2", "first-byte", "last-byte", "middle-byte", "data-in-hole",
           "written-zeroes", "zero-clusters", "zero-cluster-over-data", "larger-zero-tail",
           "larger-data-tail", "smaller-qcow2", "chain-vs-flat", "chain-vs-base", "extended-l2"]


@pytest.fixture(params=LAYOUTS)
def pair(request, tmp_path, qemu_img, qemu_io):
    return build_pair(request.param, tmp_path, qemu_img, qemu_io)


@pytest.mark.parametrize("options", [[], ["-s"], ["-q"], ["-s", "-q"], ["-U"]])
def test_same_as_qemu_img(vdisk, qemu_img, pair, options):
    a, b, fa, fb = pair
    args = ["compare", *options, "-f", fa, "-F", fb, a, b]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert same_result(ours, theirs), (ours, theirs)
    # and probed, in the other order
    args = ["compare", *options, b, a]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert same_result(ours, theirs), (ours, theirs)


def test_image_opts(vdisk, qemu_img, tmp_path, qemu_io):
    a, b, fa, fb = build_pair("chain-vs-flat", tmp_path, qemu_img, qemu_io)
    args = ["compare", "--image-opts", f"driver={fa},file.filename={a}",
            f"driver={fb},file.filename={b}"]
    ours = vdisk(*args, check=0)
    assert same_result(ours, qemu_img(*args))
    args = ["compare", "--image-opts", "-f", "raw", f"driver={fa},file.filename={a}", str(b)]
    assert same_result(vdisk(*args, check=2), qemu_img(*args))


def test_large_sparse_images_are_not_read(vdisk, qemu_img, tmp_path):
    # 1 TiB of holes would take minutes to read; block status skips them
    a = make_sparse(tmp_path / "a.raw", 1 << 40, [(5 << 30, 4096)])
    b = tmp_path / "b.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", a, b, check=0)
    assert vdisk("compare", a, b, check=0).stdout == "Images are identical.\n"


@pytest.mark.parametrize("case", ["missing-first", "missing-second", "wrong-format",
                                  "unknown-format", "bad-cache", "missing-backing",
                                  "one-name", "three-names", "bad-option", "no-argument"])
def test_errors_as_qemu_img(vdisk, qemu_img, tmp_path, qemu_io, case):
    good = make_sparse(tmp_path / "good.raw", MiB, [(0, 4096)])
    q = qcow2(qemu_img, qemu_io, tmp_path / "q.qcow2", "1M")
    args = {
        "missing-first": [tmp_path / "missing.raw", good],
        "missing-second": [good, tmp_path / "missing.raw"],
        "wrong-format": ["-f", "qcow2", good, q],
        "unknown-format": ["-F", "nosuch", good, q],
        "bad-cache": ["-T", "sometimes", good, q],
        "missing-backing": [good, "over.qcow2"],
        "one-name": [good],
        "three-names": [good, good, good],
        "bad-option": ["-z", good, good],
        "no-argument": [good, good, "-f"],
    }[case]
    if case == "missing-backing":
        qemu_img("create", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", "-u",
                 tmp_path / "over.qcow2", "1M", check=0)
    ours = vdisk("compare", *args, cwd=tmp_path)
    theirs = qemu_img("compare", *args, cwd=tmp_path)
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert ours.stdout == theirs.stdout
    if case in ("bad-cache", "one-name", "three-names", "bad-option", "no-argument"):
        assert same_result(ours, theirs), (ours, theirs)
    else:  # the library words the reason its own way
        assert ours.stderr.startswith("vdisk: Could not open "), ours.stderr
