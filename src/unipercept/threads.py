"""CPU threads for the command-line entry points.

PyTorch's OpenMP threads spin while they wait for each other (libgomp's default "active" wait).
When other processes keep the cores busy, a spinning thread waits for one that is not
scheduled, and a step can take ten times longer with two threads than with one (measured on
a loaded 2-core machine: 380-1350 ms per video frame against 40-140 ms). Passive waiting
removes that collapse. libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so the
entry points call :func:`prefer_passive_waiting` before anything imports torch; a value the
user set is kept.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_waiting() -> bool:
    """Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it or torch is already loaded.

    Returns:
        Whether the policy is PASSIVE for this process.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def set_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads (``None``: torch's default, one per physical core).

    Returns:
        The number of threads in use.

    Raises:
        ValueError: ``threads`` below 1.
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
