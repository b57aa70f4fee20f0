"""End-to-end frames per second of ``unipercept.predict`` for det and mot on the sample video
with the bundled model, against the forward pass alone and against the library call on the
same frames.

    python benchmarks/predict.py [--json PATH] [--rounds 3] [--model unipercept-tiny]

End to end is :func:`unipercept.predict.run` with the model loaded once: decoding the MP4,
preprocessing, the forward pass, post-processing (box NMS; for mot the tracker too), the
per-frame JSON lines, the session snapshots and the final ``predictions.json``. Two references,
timed in the same process and interleaved round by round, get the video's frames already
decoded: ``forward``, the forward pass alone on frames already preprocessed, the prompt
encoded once before timing; and ``library det`` / ``library mot``, what the API does for the
task (``Predictor.predict`` on each frame with the prompt encoded once; a ``model.start``
session stepped through the frames). ``overhead`` = time per frame / the reference's - 1:
against ``forward`` it is everything but the network, against the library it is what the
command line adds (decoding, records, the job folder). All runs, like the command line, start
with :func:`unipercept.threads.limit_spinning`. Medians over the rounds; each timed run
follows the same run untimed (warm caches).
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
from typing import TYPE_CHECKING

from unipercept.threads import limit_spinning

if TYPE_CHECKING:
    import torch


def forward_only(model, frames: list[torch.Tensor], names: str) -> float:
    """Seconds for the forward passes of all frames, the prompt encoded once beforehand (as
    both jobs encode it once per video)."""
    import torch

    from unipercept.structures import CategoryPrompt

    preprocess = model.default_preprocess()
    batches = [preprocess([frame]) for frame in frames]
    with torch.no_grad():
        prompt = model.encode_prompts([CategoryPrompt.parse(names)])
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(batch, prompt)
    return time.perf_counter() - start


def library(model, task: str, frames: list[torch.Tensor], names: str) -> float:
    """Seconds for the API's work on decoded frames: det through Predictor.predict with the
    prompt encoded once (as predict's image path), mot through a session."""
    from unipercept.api import Predictor, resolve_task

    start = time.perf_counter()
    if task == "mot":
        with model.start(task, names) as session:
            for frame in frames:
                session.step(frame)
    else:
        resolved = resolve_task(task)
        predictor = Predictor(model, preprocess=model.default_preprocess())
        embedding = predictor.encode(names, resolved)
        for frame in frames:
            predictor.predict(frame, embedding, task=resolved)
    return time.perf_counter() - start


def end_to_end(model, task: str, video: Path, names: str) -> float:
    """Seconds for a whole predict job on the video (model already loaded)."""
    from unipercept import predict

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
    limit_spinning()  # as the command line does, before torch loads: both runs below get it
    import torch

    from unipercept import load_model
    from unipercept.assets import samples
    from unipercept.data.io import write_text_atomic
    from unipercept.data.video import open_frames

    model = load_model(args.model)
    sample = samples()
    names = sample.categories
    with open_frames(sample.video) as source:
        frames = [frame for _, frame in source]
    count = len(frames)
    runs = {
        "forward": lambda: forward_only(model, frames, names),
        "library det": lambda: library(model, "det", frames, names),
        "library mot": lambda: library(model, "mot", frames, names),
        "det": lambda: end_to_end(model, "det", sample.video, names),
        "mot": lambda: end_to_end(model, "mot", sample.video, names),
    }
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            run()  # untimed: warm caches
            timings[name].append(run())
    per_frame = {name: statistics.median(values) / count for name, values in timings.items()}
    sys.stdout.write(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.model}, {count} frames of {sample.video.name} "
        f"({frames[0].shape[2]}x{frames[0].shape[1]})\n"
        "| run | ms/frame | frames/s | overhead vs forward | overhead vs library |\n"
        "|---|---:|---:|---:|---:|\n"
    )
    rows = []
    for name, seconds in per_frame.items():
        reference = per_frame.get(f"library {name}")
        row = {
            "run": name,
            "ms_per_frame": seconds * 1e3,
            "fps": 1 / seconds,
            "overhead": seconds / per_frame["forward"] - 1,
            "overhead_vs_library": None if reference is None else seconds / reference - 1,
        }
        rows.append(row)
        versus_library = "" if reference is None else f"{row['overhead_vs_library']:+.0%}"
        sys.stdout.write(
            f"| {name} | {seconds * 1e3:.1f} | {1 / seconds:.1f} | {row['overhead']:+.0%} | "
            f"{versus_library} |\n"
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
