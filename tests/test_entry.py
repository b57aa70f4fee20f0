"""Entry points run from a directory holding a folder named ``unipercept`` say what is wrong in
one line instead of failing later with ``cannot import name '__version__'``."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY_POINTS = {
    "unipercept": [],
    "unipercept.predict": ["--task", "det", "--prompt", "cat", "--input", "x", "--output", "o"],
    "unipercept.evaluate": ["det", "--gt", "gt.json", "--results", "r.json"],
    "unipercept.data.synthetic": ["--out", "world", "--seed", "0"],
    "unipercept.train": ["stage=1_pretrain"],
    "unipercept.export": ["run", "out"],
    "unipercept.fit_rescorer": ["model", "out", "--data", "refcoco"],
}


@pytest.fixture(scope="module")
def shadowing_cwd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "unipercept").mkdir()  # e.g. an output folder
    probe = subprocess.run(
        [sys.executable, "-c", "import unipercept; print(hasattr(unipercept, '__version__'))"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != "False":
        pytest.skip("this install is not hidden by a folder in the current directory")
    return cwd


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_a_folder_named_unipercept_is_one_line_naming_it(shadowing_cwd, module):
    result = subprocess.run(
        [sys.executable, "-m", module, *ENTRY_POINTS[module]],
        cwd=shadowing_cwd,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hides the installed unipercept package" in lines[0], lines
    assert str(shadowing_cwd / "unipercept") in lines[0]
    assert sorted(p.name for p in shadowing_cwd.iterdir()) == ["unipercept"]  # nothing written
