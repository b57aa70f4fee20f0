"""Keeping freed memory for reuse: glibc takes the settings, freed large blocks then come back
without fresh pages from the kernel, and ``UNIPERCEPT_MALLOC=system`` (or the user's own glibc
variables) leaves glibc alone. Each case runs in its own process: malloc settings are
process-wide and cannot be undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from unipercept.allocator import glibc_version

pytestmark = pytest.mark.skipif(glibc_version() is None, reason="glibc only")

# A forward pass in miniature: three 40 MiB activations (above glibc's largest mmap threshold)
# made and freed per step. After a few steps the heap has settled; then the page faults of
# four more steps are counted.
CHILD = r"""
import json, resource, sys
from unipercept import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "call" else None
if sys.argv[1] == "start":
    from unipercept.entry import OneLineParser, start
    import logging
    code = start(OneLineParser(logger=logging.getLogger("test"), prog="x"), [])
    if isinstance(code, int):
        print(json.dumps({"exit": code})); sys.exit(0)
import torch
x = torch.ones(10 * 1024 * 1024)
def step():
    a = x * 2
    b = a + 1
    return float((a * b)[0])
for _ in range(8):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults, "settings": allocator.malloc_settings()}))
"""
PAGES = 4 * 3 * 40 * 1024 * 1024 // 4096  # every activation of the four steps, fresh


def child(mode: str, **environment: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "UNIPERCEPT_MALLOC")
    }
    env.update(environment, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "stderr": result.stderr}


def test_glibc_keeps_freed_memory_for_reuse():
    report = child("call")
    assert report["applied"] is True  # both mallopt calls returned 1
    assert report["settings"]["keep_freed_memory"] is True
    assert report["faults"] < PAGES // 10  # the freed activations were reused


def test_glibc_defaults_give_fresh_pages_every_time():
    """What the setting removes (so the test above measures something)."""
    report = child("none")
    assert report["faults"] >= PAGES * 9 // 10
    assert report["settings"]["keep_freed_memory"] is False


@pytest.mark.parametrize(
    "environment",
    [{"UNIPERCEPT_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}],
    ids=["opt-out", "user-glibc-variable"],
)
def test_opt_out_and_user_settings_leave_glibc_alone(environment):
    report = child("call", **environment)
    assert report["applied"] is False
    assert report["faults"] >= PAGES * 9 // 10


def test_command_line_start_applies_the_default_and_honours_the_opt_out():
    from unipercept.allocator import DEFAULT_MODE

    assert child("start")["settings"]["keep_freed_memory"] is (DEFAULT_MODE == "keep")
    assert child("start", UNIPERCEPT_MALLOC="keep")["settings"]["keep_freed_memory"] is True
    assert child("start", UNIPERCEPT_MALLOC="system")["settings"]["keep_freed_memory"] is False


def test_a_bad_mode_is_one_line_and_exit_code_2():
    report = child("start", UNIPERCEPT_MALLOC="jemalloc")
    assert report["exit"] == 2
    assert "UNIPERCEPT_MALLOC must be one of keep, system, got 'jemalloc'" in report["stderr"]


def test_a_bad_mode_raises_when_called(monkeypatch):
    from unipercept.allocator import keep_freed_memory

    monkeypatch.setenv("UNIPERCEPT_MALLOC", "fast")
    with pytest.raises(ValueError, match="UNIPERCEPT_MALLOC must be one of keep, system"):
        keep_freed_memory()
