"""End-to-end frames per second of ``unipercept.predict`` for det and mot on the sample video
with the bundled model, against the model's forward pass alone on the same frames.

    python benchmarks/predict.py [--json PATH] [--rounds 3] [--model unipercept-tiny]

End to end is :func:`unipercept.predict.run` with the model loaded once: decoding the MP4,
preprocessing, the forward pass, post-processing (box NMS; for mot the tracker too), the
per-frame JSON lines, the session snapshots and the final ``predictions.json``. The reference,
timed in the same process and interleaved round by round, is the forward pass alone on the
video's frames already decoded and preprocessed, the prompt encoded with each frame as the
image tasks do. ``overhead`` = end-to-end time per frame / forward time per frame - 1.
Medians over the rounds; each timed run follows the same run untimed (warm caches).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unipercept import load_model, predict
from unipercept.assets import samples
from unipercept.data.io import write_text_atomic
from unipercept.data.video import open_frames
from unipercept.structures import CategoryPrompt


def forward_only(model, frames: list[torch.Tensor], names: str) -> float:
    """Seconds for the forward passes of all frames."""
    preprocess = model.default_preprocess()
    batches = [preprocess([frame]) for frame in frames]
    prompt = CategoryPrompt.parse(names)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(batch, [prompt])
    return time.perf_counter() - start


def end_to_end(model, task: str, video: Path, names: str) -> float:
    """Seconds for a whole predict job on the video (model already loaded)."""
    job = predict.Job(task=task, input=str(video), prompt=names)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        predict.run(job, Path(out) / "out", model=model)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="unipercept-tiny")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    sample = samples()
    names = sample.categories
    with open_frames(sample.video) as source:
        frames = [frame for _, frame in source]
    count = len(frames)
    timings: dict[str, list[float]] = {"forward": [], "det": [], "mot": []}
    for _ in range(args.rounds):
        for name in timings:
            run = (
                (lambda: forward_only(model, frames, names))
                if name == "forward"
                else (lambda name=name: end_to_end(model, name, sample.video, names))
            )
            run()  # untimed: warm caches
            timings[name].append(run())
    forward = statistics.median(timings["forward"]) / count
    rows = []
    sys.stdout.write(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.model}, {count} frames of {sample.video.name} "
        f"({frames[0].shape[2]}x{frames[0].shape[1]})\n"
    )
    sys.stdout.write("| run | ms/frame | frames/s | overhead vs forward |\n|---|---:|---:|---:|\n")
    for name, values in timings.items():
        per_frame = statistics.median(values) / count
        overhead = per_frame / forward - 1
        rows.append(
            {
                "run": name,
                "ms_per_frame": per_frame * 1e3,
                "fps": 1 / per_frame,
                "overhead": overhead,
            }
        )
        sys.stdout.write(
            f"| {name} | {per_frame * 1e3:.1f} | {1 / per_frame:.1f} | {overhead:+.0%} |\n"
        )
    if args.json:
        payload = {
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "model": args.model,
            "frames": count,
            "rounds": args.rounds,
            "results": rows,
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
