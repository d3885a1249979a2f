"""Where the package looks for libvdisk.so.1."""

import ctypes.util
import os
import subprocess
import sys

from libvdisk import _lib


def make_build_dir(path):
    (path / "meson-info").mkdir(parents=True)
    (path / "lib").mkdir()
    (path / "lib" / _lib.SONAME).write_bytes(b"")
    return str(path / "lib" / _lib.SONAME)


def make_source_tree(root):
    (root / "include" / "libvdisk").mkdir(parents=True)
    (root / "include" / "libvdisk" / "libvdisk.h").write_text("")
    (root / "meson.build").write_text("")
    package = root / "bindings" / "python" / "libvdisk"
    package.mkdir(parents=True)
    return package


def test_environment_variable_wins(tmp_path):
    package = make_source_tree(tmp_path)
    make_build_dir(tmp_path / "build")
    environ = {_lib.ENV_VAR: "/opt/vd/libvdisk.so.1"}
    assert _lib.find_library(environ, [str(package)]) == "/opt/vd/libvdisk.so.1"


def test_build_dir_of_source_tree(tmp_path):
    package = make_source_tree(tmp_path)
    make_build_dir(tmp_path / "zz-other")
    expected = make_build_dir(tmp_path / "build")
    assert _lib.find_library({}, [str(package)]) == expected


def test_inside_build_dir(tmp_path):
    expected = make_build_dir(tmp_path / "b")
    (tmp_path / "b" / "tests").mkdir()
    assert _lib.find_library({}, [str(tmp_path / "nowhere"), str(tmp_path / "b" / "tests")]) \
        == expected


def test_system_fallback(tmp_path):
    # a build dir next to a directory that is no libvdisk source tree is not used
    make_build_dir(tmp_path / "build")
    (tmp_path / "project").mkdir()
    found = _lib.find_library({}, [str(tmp_path / "project")])
    assert found in (ctypes.util.find_library("vdisk"), _lib.SONAME)


def test_bad_environment_variable_is_reported():
    env = dict(os.environ, **{_lib.ENV_VAR: "/nonexistent/libvdisk.so.1"})
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(_lib.__file__)))
    result = subprocess.run([sys.executable, "-c", "import libvdisk; libvdisk.version()"],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "/nonexistent/libvdisk.so.1" in result.stderr
    assert _lib.ENV_VAR in result.stderr
