"""Dispatch, help, version, and qemu-img's usage errors and exit codes."""
import re

import pytest

COMMANDS = ["create", "info", "convert", "map", "check", "resize", "snapshot", "rebase", "commit",
            "compare", "measure", "dd", "bench"]


def test_version(vdisk):
    result = vdisk("--version", check=0)
    assert re.fullmatch(r"vdisk version \d+\.\d+\.\d+ \(libvdisk \d+\.\d+\.\d+\)\n", result.stdout)
    assert vdisk("-V", check=0).stdout == result.stdout


def test_help_lists_every_command(vdisk):
    for args in (["--help"], ["-h"], ["help"]):
        out = vdisk(*args, check=0).stdout
        assert out.startswith("usage: vdisk")
        for name in COMMANDS:
            assert f"\n  {name} " in out
        assert "raw" in out  # the supported formats


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(vdisk, name):
    expected = vdisk("help", name, check=0).stdout
    assert expected.startswith(f"usage: vdisk {name} ")
    assert vdisk(name, "--help", check=0).stdout == expected
    assert vdisk(name, "-h", check=0).stdout == expected


@pytest.mark.parametrize("args, message", [
    ([], "vdisk: Not enough arguments"),
    (["frob"], "vdisk: Command not found: frob"),
    (["help", "frob"], "vdisk: Command not found: frob"),
    (["--bogus"], "vdisk: unrecognized option '--bogus'"),
    (["info", "--bogus", "x.img"], "vdisk: unrecognized option '--bogus'"),
    (["info", "-z", "x.img"], "vdisk: unrecognized option '-z'"),
    (["info", "-f"], "vdisk: missing argument for option '-f'"),
    (["convert", "-O"], "vdisk: missing argument for option '-O'"),
    (["info"], "vdisk: Expecting one image file name"),
    (["info", "a.img", "b.img"], "vdisk: Expecting one image file name"),
    (["map"], "vdisk: Expecting one image file name"),
    (["check"], "vdisk: Expecting one image file name"),
    (["map", "--backing-chain", "x.img"], "vdisk: unrecognized option '--backing-chain'"),
    (["info", "-r", "all", "x.img"], "vdisk: unrecognized option '-r'"),
    (["resize", "x.img"], "vdisk: Not enough arguments"),
    (["create"], "vdisk: Expecting image file name"),
    (["create", "a.img", "1M", "extra"], "vdisk: Unexpected argument: extra"),
    (["convert", "a.img"], "vdisk: Expecting a source and a destination file name"),
    (["snapshot"], "vdisk: Expecting one image file name"),
    (["snapshot", "-l", "-d", "x", "a.img"], "vdisk: Cannot mix '-l', '-a', '-c', '-d'"),
    (["rebase", "-b", "x.img"], "vdisk: Expecting one image file name"),
    (["rebase", "a.img"], "vdisk: Must specify backing file (-b) or use unsafe mode (-u)"),
    (["commit"], "vdisk: Expecting one image file name"),
])
def test_usage_errors(vdisk, tmp_path, args, message):
    result = vdisk(*args, cwd=tmp_path, check=1)
    assert result.stderr == message + "\nTry 'vdisk --help' for more information\n"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    [],
    ["frob"],
    ["info", "--bogus", "x.img"],
    ["info", "-f"],
    ["info"],
    ["create"],
    ["create", "a.img", "1M", "extra"],
    ["info", "--output=xml", "x.img"],
    ["map", "--output=xml", "x.img"],
    ["info", "missing.img"],
    ["map", "missing.img"],
    ["convert", "missing.img", "out.img"],
    ["create", "-f", "nosuchformat", "a.img", "1M"],
    ["create", "a.img", "lots"],
    ["check"],
    ["check", "missing.img"],
    ["check", "-r", "some", "missing.img"],
    ["resize", "missing.img", "1M"],
    ["resize", "missing.img"],
    ["create", "-f", "qcow2", "-b", "missing.img", "-F", "raw", "a.img"],
    ["info", "--backing-chain", "missing.img"],
    ["snapshot"],
    ["snapshot", "-l", "missing.img"],
    ["snapshot", "-c", "x", "missing.img"],
    ["rebase", "-b", "", "missing.img"],
    ["rebase", "-u", "-b", "", "missing.img"],
    ["rebase", "missing.img"],
    ["commit", "missing.img"],
    ["convert", "-l", "x", "missing.img", "out.img"],
    ["convert", "-O", "qcow2", "-B", "missing.img", "-F", "raw", "missing.img", "out.img"],
])
def test_exit_codes_match_qemu_img(vdisk, qemu_img, tmp_path, args):
    ours = vdisk(*args, cwd=tmp_path)
    theirs = qemu_img(*args, cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.startswith("vdisk: ")
