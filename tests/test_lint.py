"""The code passes the linter configured in pyproject.toml (pyflakes, pycodestyle, import order, bugbear)."""
import importlib.util
import subprocess
import sys

import pytest

from helpers import REPO


def test_ruff_check_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]' installs it)")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
