"""A second opinion besides QEMU: libyal's qcowinfo (Debian's libqcow-utils)
reads the headers of images libvdisk writes as libvdisk means them."""
import re
import shutil
import subprocess

import pytest

import libvdisk
from vdhelp import MiB

QCOWINFO = shutil.which("qcowinfo")
pytestmark = pytest.mark.skipif(QCOWINFO is None, reason="qcowinfo (libqcow-utils) is not installed")


def qcowinfo(path):
    r = subprocess.run([QCOWINFO, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    fields = dict(re.findall(r"^\t([^:\t]+?)\s*:\s*(.*)$", r.stdout, re.M))
    return fields


@pytest.mark.parametrize("options", [{}, {"compat": "0.10"}, {"cluster_size": 4096},
                                     {"cluster_size": 2 * MiB, "refcount_bits": 64}],
                         ids=["v3", "v2", "4k", "2m-rc64"])
def test_qcowinfo_reads_what_libvdisk_wrote(tmp_path, options):
    path = tmp_path / "d.qcow2"
    size = 3 * 1024 * MiB + 512 * 1024
    libvdisk.create(path, "qcow2", size, **options)
    with libvdisk.open(path, "r+") as img:
        img.pwrite(5 * MiB, b"libyal" * 1000)
        img.snapshot_create("one")
        img.snapshot_create("two")
    info = qcowinfo(path)
    assert info["Format version"] == ("2" if options.get("compat") == "0.10" else "3")
    assert info["Media size"].endswith(f"({size} bytes)")
    assert info["Encryption method"] == "None"
    assert info["Number of snapshots"] == "2"
