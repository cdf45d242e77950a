import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the venv's python3 kernel wins over any user-level kernelspec of that name
os.environ.setdefault("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "notebook: executes a notebook with papermill")


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an unrelated working directory."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d
