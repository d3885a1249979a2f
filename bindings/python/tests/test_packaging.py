"""The package installs offline with pip (setuptools as Debian ships it, no
build isolation, no index) and carries its type information."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pip_installs_offline_with_py_typed(tmp_path):
    for module in ("pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{sys.executable} has no {module} (Debian: python3-{module})")
    # a copy: setuptools builds in the source directory it is given
    source = tmp_path / "src"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                             "--no-index", "--no-deps", "--disable-pip-version-check",
                             "--target", str(target), str(source)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
    assert result.returncode == 0, result.stderr
    installed = sorted(p.name for p in (target / "libvdisk").iterdir() if p.name != "__pycache__")
    expected = sorted(p for p in os.listdir(os.path.join(SOURCE, "libvdisk"))
                      if p != "__pycache__")
    assert installed == expected
    assert "py.typed" in installed
    check = subprocess.run([sys.executable, "-c", "import libvdisk; print(libvdisk.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(target)})
    assert check.stdout.startswith(str(target)), check
