"""CPU threads for the command-line entry points.

PyTorch starts one OpenMP thread per physical core, and its threads spin while they wait for
each other. When other processes already keep cores busy, a spinning thread waits for one
that is not scheduled, and every step slows down (a video step of the bundled model on a
2-core machine beside one other PyTorch job: 57 ms with two threads, 27 ms with one; 22 ms
with two when the machine is idle; ``python benchmarks/busy_machine.py``). So the entry points
take one thread per core that is not busy when they start, judged by the 1-minute load
average, and ``--threads`` overrides it.

Between two operations libgomp's idle threads keep spinning for a while (``GOMP_SPINCOUNT``,
300,000 by default). On a machine whose two CPUs share a core, that spinning halves the speed
of the main thread's own work in the gaps: decoding a video frame took 1-3 ms instead of
0.23 ms beside the bundled model's forward pass. :func:`limit_spinning` shortens the spin to
10,000 before torch loads, which costs nothing measurable when the machine is idle
(``python benchmarks/busy_machine.py --burners 0``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SPIN_COUNT = "10000"


def limit_spinning() -> bool:
    """Sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user set it or
    ``OMP_WAIT_POLICY``, or torch (and so libgomp, which reads it once) is already loaded.

    Returns:
        Whether the setting takes effect in this process.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return os.environ["GOMP_SPINCOUNT"] == SPIN_COUNT


def default_threads() -> int:
    """torch's default thread count less the cores other work keeps busy, at least 1.

    The busy share is the 1-minute load average over the CPUs the system has (where the load
    average is unavailable, nothing is taken as busy).
    """
    import torch

    cores = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not every platform has a load average
        return cores
    busy_fraction = min(max(load / (os.cpu_count() or 1), 0.0), 1.0)
    return max(1, min(cores, round(cores * (1.0 - busy_fraction))))


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Runs the block with torch's intra-op threads set to ``threads`` (None:
    :func:`default_threads`), and puts the earlier count back afterwards (an entry point's
    ``main`` called from Python leaves the caller's setting alone).

    Yields:
        The number of threads in use.

    Raises:
        ValueError: ``threads`` below 1.
    """
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads if threads is not None else default_threads())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
