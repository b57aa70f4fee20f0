"""The code base is ruff clean (lint and format), so style never depends on who ran what."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO_ROOT

ruff = shutil.which("ruff")


@pytest.mark.skipif(ruff is None, reason="ruff is not installed (bash scripts/setup.sh --dev)")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    result = subprocess.run(
        [ruff, *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
