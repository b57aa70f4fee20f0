"""What every benchmark record says about the run besides its timings: the machine, threads,
torch, how malloc was set up (:mod:`unipercept.allocator`) and how busy the machine was."""

from __future__ import annotations

import os
import platform
import resource
import sys


def environment() -> dict:
    import torch

    from unipercept.allocator import malloc_settings

    try:
        load = list(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "malloc": malloc_settings(),
        "load_average": load,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def minor_faults() -> int:
    """Page faults this process has taken so far that needed no disk read (fresh pages)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
