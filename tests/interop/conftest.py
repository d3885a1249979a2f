"""Fixtures shared by the interop tests."""
import pytest

from vdhelp import PASSPHRASE


@pytest.fixture
def pw(tmp_path):
    """A file holding PASSPHRASE, for qemu's --object secret,file=."""
    path = tmp_path / "pw"
    path.write_text(PASSPHRASE)
    return path
