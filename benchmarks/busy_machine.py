"""Milliseconds per video step of the bundled model when other processes keep every core busy,
by how OpenMP threads wait and how many there are: what the command line's default is based on.

    python benchmarks/busy_machine.py [--json PATH] [--rounds 3] [--burners N] [--frames 24]
                                      [--settings "one thread" ...]

``--burners`` processes (default: one) run other PyTorch work, small multi-threaded
convolutions back to back at torch's default thread count, while, one after another
and round by round, child processes run a mot session over the sample video under each
setting: libgomp's default (spin for a while, then sleep), ``OMP_WAIT_POLICY=PASSIVE`` (sleep
at once), ``GOMP_SPINCOUNT`` limits, and one thread. Each child reports the median step time
of its run (after one untimed pass over the video); the table gives the median over rounds.
With ``--burners 0`` the machine is quiet, which shows what each setting costs when nothing
competes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time
import torch
import unipercept
from unipercept.assets import samples
from unipercept.data.video import open_frames

threads, count = int(sys.argv[1]), int(sys.argv[2])
if threads:
    torch.set_num_threads(threads)
from unipercept.api import Predictor
predictor = Predictor(unipercept.load_model())
sample = samples()
with open_frames(sample.video) as source:
    frames = [frame for _, frame in source][:count]
times = []
for timed in (False, True):
    with predictor.start("mot", sample.categories) as session:
        for frame in frames:
            start = time.perf_counter()
            session.step(frame)
            if timed:
                times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "ms": 1e3 * statistics.median(times)}))
"""


def _burn() -> None:
    """Another PyTorch job: small multi-threaded operations back to back (its OpenMP threads
    wait for work between them the same way as ours)."""
    import torch

    x = torch.randn(64, 128, 128)
    while True:
        torch.nn.functional.conv2d(x[None], torch.randn(64, 64, 3, 3), padding=1)


# name -> (environment, threads; 0 = torch's default)
SETTINGS = {
    "libgomp default": ({}, 0),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, 0),
    "GOMP_SPINCOUNT=100000": ({"GOMP_SPINCOUNT": "100000"}, 0),
    "one thread": ({}, 1),
}
_OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def _child(setting: dict[str, str], threads: int, frames: int) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in _OPENMP_VARIABLES}
    environment.update(setting)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(frames)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burners", type=int, default=1, help="other PyTorch processes")
    parser.add_argument("--frames", type=int, default=24, help="frames of the sample video")
    parser.add_argument(
        "--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="default: all"
    )
    args = parser.parse_args(argv)

    timings: dict[str, list[float]] = {name: [] for name in args.settings}
    threads: dict[str, int] = {}
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    try:
        for _ in range(args.rounds):
            for name in args.settings:
                setting, count = SETTINGS[name]
                report = _child(setting, count, args.frames)
                timings[name].append(report["ms"])
                threads[name] = report["threads"]
    finally:
        for burner in burners:
            burner.terminate()
    rows = [
        {"setting": name, "threads": threads[name], "ms_per_step": statistics.median(values)}
        for name, values in timings.items()
    ]
    sys.stdout.write(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.burners} busy processes, mot on the sample video, median of {args.rounds}\n"
        "| setting | threads | ms/step |\n|---|---:|---:|\n"
    )
    for row in rows:
        sys.stdout.write(f"| {row['setting']} | {row['threads']} | {row['ms_per_step']:.1f} |\n")
    if args.json:
        from unipercept.data.io import write_text_atomic

        payload = {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "burners": args.burners,
            "rounds": args.rounds,
            "results": rows,
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
