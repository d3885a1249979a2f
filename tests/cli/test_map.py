"""vdisk map against qemu-img map on sparse raw files."""
import json

import pytest

from conftest import MiB, make_sparse

# (size, data runs, written-zero runs)
LAYOUTS = {
    "empty": (0, [], []),
    "hole": (8 * MiB, [], []),
    "full": (2 * MiB, [(0, 2 * MiB)], []),
    "head": (4 * MiB, [(0, MiB)], []),
    "tail": (4 * MiB, [(3 * MiB, MiB)], []),
    "mixed": (10 * MiB, [(2 * MiB, MiB), (5 * MiB, 2 * MiB)], []),
    "small-runs": (MiB, [(i * 8192, 4096) for i in range(0, 128, 3)], []),
    "adjacent": (4 * MiB, [(MiB, 4096), (MiB + 4096, 4096)], []),
    "written-zeroes": (4 * MiB, [(0, 4096)], [(MiB, MiB)]),
    "unaligned-run": (4 * MiB, [(MiB + 100, 10)], []),
}


@pytest.fixture(params=sorted(LAYOUTS))
def image(request, tmp_path):
    size, data, zeroes = LAYOUTS[request.param]
    return make_sparse(tmp_path / f"{request.param}.img", size, data, zeroes)


def test_json_identical_to_qemu_img(vdisk, qemu_img, image):
    ours = vdisk("map", "--output=json", image, check=0).stdout
    assert ours == qemu_img("map", "--output=json", image, check=0).stdout
    extents = json.loads(ours)
    assert sum(e["length"] for e in extents) == image.stat().st_size


def test_human_identical_to_qemu_img(vdisk, qemu_img, image):
    ours = vdisk("map", image, check=0).stdout
    assert ours == qemu_img("map", "--output=human", image, check=0).stdout
    assert ours.startswith("Offset          Length          Mapped to       File\n")


def test_mixed_layout_content(vdisk, tmp_path):
    path = make_sparse(tmp_path / "m.img", 10 * MiB, [(2 * MiB, MiB), (5 * MiB, 2 * MiB)])
    extents = vdisk.json("map", "--output=json", "-f", "raw", "-U", path)
    assert [(e["start"], e["length"], e["data"], e["zero"]) for e in extents] == [
        (0, 2 * MiB, False, True),
        (2 * MiB, MiB, True, False),
        (3 * MiB, 2 * MiB, False, True),
        (5 * MiB, 2 * MiB, True, False),
        (7 * MiB, 3 * MiB, False, True),
    ]
    assert all(e["present"] and e["depth"] == 0 and e["offset"] == e["start"] for e in extents)
    human = vdisk("map", path, check=0).stdout.splitlines()
    assert human[1:] == [f"0x200000        0x100000        0x200000        {path}",
                         f"0x500000        0x200000        0x500000        {path}"]


def test_missing_file(vdisk, tmp_path):
    result = vdisk("map", tmp_path / "missing.img", check=1)
    assert result.stderr.startswith(f"vdisk: Could not open '{tmp_path / 'missing.img'}': ")
    assert result.stdout == ""


def test_bad_output_format(vdisk, tmp_path):
    path = make_sparse(tmp_path / "a.img", MiB)
    result = vdisk("map", "--output=yaml", path, check=1)
    assert result.stderr == "vdisk: --output must be used with human or json as argument.\n"


# qcow2 images qemu-img creates and qemu-io writes: (create options, qemu-io commands)
QCOW2_LAYOUTS = {
    # a zero cluster that keeps its host cluster (write -z without -u) has an offset
    "zero-keeps-host": ("", ["write -P 1 0 64k", "write -z 0 64k", "write -P 2 64k 64k"]),
    "zero-unmapped": ("", ["write -P 1 0 64k", "write -z -u 0 64k"]),
    # unallocated subclusters of an allocated cluster have an offset too
    "extl2-partial": ("extended_l2=on", ["write -P 1 0 4k", "write -z 8k 4k",
                                         "write -P 3 64k 2k", "write -z -u 128k 64k"]),
    # data clusters over fallocated (unwritten) extents: data, not zero
    "falloc": ("preallocation=falloc", []),
    "falloc-written": ("preallocation=falloc", ["write -P 7 64k 4k"]),
    # data clusters over holes of a metadata-preallocated file: data and zero
    "metadata": ("preallocation=metadata", ["write -P 7 128k 4k"]),
}


@pytest.fixture(params=sorted(QCOW2_LAYOUTS))
def qcow2_image(request, tmp_path, qemu_img, qemu_io):
    options, commands = QCOW2_LAYOUTS[request.param]
    path = tmp_path / f"{request.param}.qcow2"
    qemu_img("create", "-f", "qcow2", *(["-o", options] if options else []), path, "1M", check=0)
    for command in commands:
        qemu_io("-f", "qcow2", "-c", command, path, check=0)
    return path


@pytest.mark.parametrize("output", ["json", "human"])
def test_qcow2_map_identical_to_qemu_img(vdisk, qemu_img, qcow2_image, output):
    ours = vdisk("map", f"--output={output}", qcow2_image, check=0).stdout
    assert ours == qemu_img("map", f"--output={output}", qcow2_image, check=0).stdout


def test_human_map_names_the_external_data_file(vdisk, qemu_img, qemu_io, tmp_path):
    # qemu-img 7.2 opens a relative data file from the working directory
    qemu_img("create", "-f", "qcow2", "-o", "data_file=d.raw", "d.qcow2", "1M", cwd=tmp_path,
             check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 1 64k 64k", "d.qcow2", cwd=tmp_path, check=0)
    ours = vdisk("map", "d.qcow2", cwd=tmp_path, check=0).stdout
    assert ours == qemu_img("map", "d.qcow2", cwd=tmp_path, check=0).stdout
    assert ours.splitlines()[1:] == ["0x10000         0x10000         0x10000         d.raw"]


@pytest.mark.parametrize("output", ["json", "human"])
@pytest.mark.parametrize("window", [
    ["--start-offset=128k"], ["--start-offset=100000", "--max-length=1000"],
    ["--max-length=1500k"], ["--start-offset=8M"], ["--start-offset=4M"], ["--max-length=0"],
    ["--start-offset=1M", "--max-length=9E"], ["--start-offset=3M", "--max-length=8E"],
    ["--start-offset=-1"], ["--max-length=x"],
], ids=" ".join)
def test_window_as_qemu_img(vdisk, qemu_img, qemu_io, tmp_path, window, output):
    path = tmp_path / "w.qcow2"
    qemu_img("create", "-f", "qcow2", path, "4M", check=0)
    qemu_io("-f", "qcow2", "-c", "write -P 1 64k 1M", "-c", "write -z 2M 64k", path, check=0)
    args = ["map", f"--output={output}", *window, path]
    ours, theirs = vdisk(*args), qemu_img(*args)
    assert (ours.returncode, ours.stdout, ours.stderr) == \
        (theirs.returncode, theirs.stdout, theirs.stderr.replace("qemu-img", "vdisk"))
