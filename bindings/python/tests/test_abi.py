"""The ctypes declarations match the C header: structure layouts (compiled
with the system C compiler) and flag values."""

import ctypes
import os
import re
import shutil
import subprocess

import pytest

from libvdisk import _lib

INCLUDE = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "include")
HEADER = os.path.join(INCLUDE, "libvdisk", "libvdisk.h")
STRUCTS = {
    "vd_info": _lib.VdInfo,
    "vd_extent": _lib.VdExtent,
    "vd_check_result": _lib.VdCheckResult,
    "vd_open_opts": _lib.VdOpenOpts,
    "vd_snapshot_info": _lib.VdSnapshotInfo,
    "vd_convert_opts": _lib.VdConvertOpts,
}
# _lib constant -> header macro
FLAGS = {
    "OPEN_RDWR": "VD_OPEN_RDWR", "OPEN_NO_BACKING": "VD_OPEN_NO_BACKING",
    "OPEN_NO_LOCK": "VD_OPEN_NO_LOCK", "OPEN_CONFINED": "VD_OPEN_CONFINED",
    "OPEN_UNSAFE_RAW": "VD_OPEN_UNSAFE_RAW", "OPEN_REPAIR": "VD_OPEN_REPAIR",
    "OPEN_NO_FLUSH": "VD_OPEN_NO_FLUSH", "OPEN_SAFE": "VD_OPEN_SAFE",
    "OPEN_DIRECT": "VD_OPEN_DIRECT", "OPEN_WRITETHROUGH": "VD_OPEN_WRITETHROUGH",
    "OPEN_DIRECT_FALLBACK": "VD_OPEN_DIRECT_FALLBACK",
    "CREATE_EXCL": "VD_CREATE_EXCL", "CREATE_UNSAFE_BACKING": "VD_CREATE_UNSAFE_BACKING",
    "CREATE_CONFINED": "VD_CREATE_CONFINED", "WRITE_FUA": "VD_WRITE_FUA",
    "ZERO_MAY_UNMAP": "VD_ZERO_MAY_UNMAP", "RESIZE_SHRINK": "VD_RESIZE_SHRINK",
    "EXTENT_DATA": "VD_EXTENT_DATA", "EXTENT_ZERO": "VD_EXTENT_ZERO",
    "EXTENT_ALLOCATED": "VD_EXTENT_ALLOCATED", "CHECK_REPAIR_LEAKS": "VD_CHECK_REPAIR_LEAKS",
    "CHECK_REPAIR_ALL": "VD_CHECK_REPAIR_ALL", "REBASE_UNSAFE": "VD_REBASE_UNSAFE",
    "COMMIT_EMPTY": "VD_COMMIT_EMPTY", "CONVERT_EXISTING": "VD_CONVERT_EXISTING",
    "CONVERT_TARGET_IS_ZERO": "VD_CONVERT_TARGET_IS_ZERO",
    "CONVERT_OUT_OF_ORDER": "VD_CONVERT_OUT_OF_ORDER",
}

needs_header = pytest.mark.skipif(not os.path.exists(HEADER), reason="not in a source tree")


@needs_header
def test_flag_values_match_header():
    with open(HEADER, encoding="utf-8") as header:
        text = header.read()
    for constant, macro in FLAGS.items():
        match = re.search(rf"#define {macro}\s+\(1u << (\d+)\)", text)
        assert match, macro
        assert getattr(_lib, constant) == 1 << int(match.group(1)), constant


@needs_header
def test_structure_layouts_match_header(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler")
    # version.h is generated at build time; the layouts do not depend on it
    (tmp_path / "libvdisk").mkdir()
    (tmp_path / "libvdisk" / "version.h").write_text("")
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include <libvdisk/libvdisk.h>',
             'int main(void) {']
    for name, structure in STRUCTS.items():
        lines.append(f'printf("{name} size %zu\\n", sizeof({name}));')
        for field, _ in structure._fields_:
            lines.append(f'printf("{name} {field} %zu\\n", offsetof({name}, {field}));')
    lines.append("return 0; }")
    source, program = tmp_path / "layout.c", tmp_path / "layout"
    source.write_text("\n".join(lines))
    subprocess.run([compiler, "-I", str(tmp_path), "-I", INCLUDE, "-o", str(program), str(source)],
                   check=True, capture_output=True)
    output = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    from_c = {tuple(line.split()[:2]): int(line.split()[2]) for line in output.splitlines()}
    for name, structure in STRUCTS.items():
        assert from_c[(name, "size")] == ctypes.sizeof(structure), name
        for field, _ in structure._fields_:
            assert from_c[(name, field)] == getattr(structure, field).offset, (name, field)
