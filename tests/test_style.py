"""The code holds the style its configuration states (pyproject.toml [tool.ruff]): lines of
at most 120 characters, no unused imports or names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import BIN

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_ruff_finds_nothing() -> None:
    done = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
