"""`python -m unipercept` (the README's first command) checks the install for real."""

from __future__ import annotations

import json
import subprocess
import sys

from unipercept import config


def test_self_check_passes_and_reports_json():
    result = subprocess.run(
        [sys.executable, "-m", "unipercept", "--json"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failures"] == {}
    assert report["facts"]["configs"].startswith(f"{len(config.list_configs())} composed")
    assert "roi_align -> (" in report["facts"]["box ops"]
    # The compiled kernels are reported (and checked against the reference).
    assert report["facts"]["deformable attention op"].startswith("cpu: ")
    # Loading the offline text encoder for the configs shows no third-party progress bar.
    assert "Loading weights" not in result.stderr, result.stderr[-500:]


def test_self_check_reports_failures(monkeypatch, capsys):
    from unipercept import __main__ as main_module

    def broken() -> str:
        raise RuntimeError("weights gone")

    monkeypatch.setattr(main_module, "_mobilenet_path", broken)
    assert main_module.main([]) == 1
    captured = capsys.readouterr()
    assert "FAILED backbone weights" in captured.err and "weights gone" in captured.err
