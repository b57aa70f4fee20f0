"""Forward latency and page faults under glibc's default malloc settings against keeping freed
memory for reuse (:func:`unipercept.allocator.keep_freed_memory`, or glibc's environment).

    python benchmarks/allocator.py [--json PATH] [--rounds 3] [--repeats 5]
                                   [--height 480 --width 640] [--workloads ours ours-bf16 ...]
                                   [--settings "glibc default" ...]

glibc hands an allocation of 32 MiB or more (less until its threshold adapts) its own ``mmap``
and unmaps it when freed, so each forward pass gets its large activations as fresh pages
again, one page fault per 4 KiB. A malloc setting holds for a whole process, so each setting
runs in its own child process, the settings one after another round by round (each child:
one untimed call of each workload, then ``--repeats`` timed calls; it reports medians, the page
faults of one call and its peak resident set). The table gives the median over rounds.

Settings: glibc's defaults; ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184`` in the
environment; ``keep_freed_memory()`` called at start (what the command line does unless
``UNIPERCEPT_MALLOC=system``). Workloads: the ResNet-50 Deformable DETR of
``benchmarks/detector.py`` (``ours``, ``ours-bf16`` under bfloat16 autocast, and
``transformers``, the same model in transformers) on one image; ``tiny-mot``, a mot session of
the bundled model over the sample video, per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "glibc default": ({}, False),
    "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=16GiB": (
        {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"},
        False,
    ),
    "keep_freed_memory()": ({}, True),
}
WORKLOADS = ("ours", "ours-bf16", "transformers", "tiny-mot")
_MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
keep = sys.argv[2] == "1"
height, width, repeats = (int(value) for value in sys.argv[3:6])
workloads = sys.argv[6].split(",")
from unipercept.threads import limit_spinning
limit_spinning()
applied = None
if keep:
    from unipercept.allocator import keep_freed_memory
    applied = keep_freed_memory()
import torch
from record import minor_faults, peak_rss_mb
from unipercept.precision import autocast
calls = {}
if {"ours", "ours-bf16", "transformers"} & set(workloads):
    from detector import build_models
    from unipercept.structures import ImageBatch
    hf, ours = build_models()
    image = torch.randn(3, height, width, generator=torch.Generator().manual_seed(1))
    batch = ImageBatch.from_images([image])
    pixels, mask = batch.tensor, batch.valid.long()
    def detector(dtype):
        def call():
            with torch.no_grad(), autocast("cpu", dtype):
                ours(batch)
        return call
    def transformers():
        with torch.no_grad():
            hf(pixel_values=pixels, pixel_mask=mask)
    calls = {"ours": detector(torch.float32), "ours-bf16": detector(torch.bfloat16),
             "transformers": transformers}
if "tiny-mot" in workloads:
    from unipercept.api import Predictor
    from unipercept.assets import samples
    from unipercept.data.video import open_frames
    predictor = Predictor.from_pretrained("unipercept-tiny")
    sample = samples()
    with open_frames(sample.video) as source:
        frames = [frame for _, frame in source]
    def mot():
        with predictor.start("mot", sample.categories) as session:
            for frame in frames:
                session.step(frame)
    calls["tiny-mot"] = mot
    per_call = {"tiny-mot": len(frames)}
else:
    per_call = {}
results = {}
for name in workloads:
    calls[name]()  # untimed
    times, faults = [], []
    for _ in range(repeats):
        before = minor_faults()
        start = time.perf_counter()
        calls[name]()
        times.append((time.perf_counter() - start) * 1e3 / per_call.get(name, 1))
        faults.append((minor_faults() - before) / per_call.get(name, 1))
    results[name] = {"ms": statistics.median(times), "faults": statistics.median(faults)}
print(json.dumps({"applied": applied, "peak_rss_mb": peak_rss_mb(), "results": results}))
"""


def _child(setting: dict[str, str], keep: bool, args: argparse.Namespace) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in _MALLOC_VARIABLES}
    environment.pop("UNIPERCEPT_MALLOC", None)
    environment.update(setting)
    command = [
        sys.executable,
        "-c",
        CHILD,
        str(HERE),
        "1" if keep else "0",
        str(args.height),
        str(args.width),
        str(args.repeats),
        ",".join(args.workloads),
    ]
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"child failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if keep and not report["applied"]:
        raise SystemExit("keep_freed_memory() did not apply in the child (not glibc?)")
    return report


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="default: all"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from record import environment

    reports: dict[str, list[dict]] = {name: [] for name in args.settings}
    for _ in range(args.rounds):
        for name in args.settings:
            setting, keep = SETTINGS[name]
            reports[name].append(_child(setting, keep, args))
    rows = []
    for name, runs in reports.items():
        for workload in args.workloads:
            rows.append(
                {
                    "setting": name,
                    "workload": workload,
                    "ms": statistics.median(r["results"][workload]["ms"] for r in runs),
                    "faults": statistics.median(r["results"][workload]["faults"] for r in runs),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                }
            )
    default = {r["workload"]: r["ms"] for r in rows if r["setting"] == "glibc default"}
    for row in rows:  # None when glibc's default was not among --settings
        reference = default.get(row["workload"])
        row["speedup_vs_default"] = None if reference is None else reference / row["ms"]
    sys.stdout.write(
        f"# {args.height}x{args.width}, median of {args.rounds} rounds of {args.repeats} calls; "
        "tiny-mot per frame; peak RSS of the whole child (all workloads)\n"
        "| setting | workload | ms | speed vs default | page faults / call | peak RSS MB |\n"
        "|---|---|---:|---:|---:|---:|\n"
    )
    for r in rows:
        sys.stdout.write(
            f"| {r['setting']} | {r['workload']} | {r['ms']:.1f} | "
            f"{_times(r['speedup_vs_default'])} | {r['faults']:.0f} | {r['peak_rss_mb']:.0f} |\n"
        )
    if args.json:
        from unipercept.data.io import write_text_atomic

        payload = {
            **environment(),
            "height": args.height,
            "width": args.width,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "settings": {name: SETTINGS[name][0] for name in args.settings},
            "results": rows,
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
