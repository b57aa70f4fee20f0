"""End-to-end frames per second of ``unipercept.predict`` for det and mot on the sample video
with the bundled model, against the forward pass alone and against the library call on the
same frames; batches, reduced precision, and reading the video as an HTTP stream.

    python benchmarks/predict.py [--json PATH] [--rounds 3] [--model unipercept-tiny]
                                 [--dtypes float32 bfloat16] [--frames N]

End to end is :func:`unipercept.predict.run` with the model loaded once: decoding the MP4,
preprocessing, the forward pass, post-processing (box NMS; for mot the tracker too), the
per-frame JSON lines, the session snapshots and the final ``predictions.json``. Two references,
timed in the same process and interleaved round by round, get the video's frames already
decoded: ``forward``, the forward pass alone on frames already preprocessed, the prompt
encoded once before timing; and ``library det`` / ``library insseg`` / ``library mot``, what
the API does for the task (``Predictor.predict`` on each frame with the prompt encoded once; a
``Predictor.start`` session stepped through the frames). ``overhead`` = time per frame / the
reference's - 1: against ``forward`` it is everything but the network, against the library it
is what the command line adds (decoding, records, the job folder).

``batch N``: ``Predictor.predict_batch`` over the frames, N per forward pass, against
``library det`` (one by one). Rows ending in ``bf16`` (``--dtypes``) run the same under
``torch.autocast`` (``Predictor(dtype=...)``, ``predict --dtype``). Their answers are compared
with the float32 row's (a batch's with one by one): of the reference's detections, the
fraction found again with the same label at box IoU >= 0.95, the largest score drift, mask IoU
(insseg) and track-id consistency (mot). ``read disk`` / ``read http``: decoding the video
file from disk, and from a loopback HTTP server through :class:`StreamSource` (PyAV), no model.

All runs, like the command line, start with :func:`unipercept.threads.limit_spinning`; the
record says how malloc was set (``UNIPERCEPT_MALLOC``; the benchmark itself leaves glibc's
defaults unless ``--malloc keep``). Medians over the rounds; each timed run follows the same
run untimed (warm caches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.threads import limit_spinning

if TYPE_CHECKING:
    import torch

SHORT = {"float32": "", "bfloat16": " bf16", "float16": " fp16"}


def forward_only(model, frames: list[torch.Tensor], names: str, dtype) -> tuple[float, None]:
    """Seconds for the forward passes of all frames, the prompt encoded once beforehand (as
    both jobs encode it once per video)."""
    import torch

    from unipercept.precision import autocast
    from unipercept.structures import CategoryPrompt

    preprocess = model.default_preprocess()
    batches = [preprocess([frame]) for frame in frames]
    with torch.no_grad():
        prompt = model.encode_prompts([CategoryPrompt.parse(names)])
    start = time.perf_counter()
    with torch.no_grad(), autocast("cpu", dtype):
        for batch in batches:
            model(batch, prompt)
    return time.perf_counter() - start, None


def library(model, task: str, frames, names: str, dtype, batch_size: int | None = None):
    """Seconds for the API's work on decoded frames, and its answers: image tasks through
    Predictor.predict with the prompt encoded once (or predict_batch, ``batch_size`` per
    pass), mot through a session."""
    from unipercept.api import Predictor, resolve_task

    predictor = Predictor(model, preprocess=model.default_preprocess(), dtype=dtype)
    start = time.perf_counter()
    if task == "mot":
        with predictor.start(task, names) as session:
            answers = [session.step(frame) for frame in frames]
    else:
        resolved = resolve_task(task)
        embedding = predictor.encode(names, resolved)
        if batch_size is None:
            answers = [predictor.predict(frame, embedding, task=resolved) for frame in frames]
        else:
            answers = predictor.predict_batch(frames, embedding, resolved, batch_size=batch_size)
    return time.perf_counter() - start, answers


def end_to_end(model, task: str, video: Path, names: str, dtype, frames: int) -> tuple[float, None]:
    """Seconds for a whole predict job on the video's first ``frames`` frames (model already
    loaded)."""
    from unipercept import predict
    from unipercept.precision import dtype_name

    job = predict.Job(
        task=task, input=str(video), prompt=names, dtype=dtype_name(dtype), max_frames=frames
    )
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        predict.run(job, Path(out) / "out", model=model)
        return time.perf_counter() - start, None


@dataclass
class Run:
    """One row: what to time, and which rows its ratios and answers are against."""

    call: Callable[[], tuple[float, Any]]
    forward: str | None = None  # overhead against this row
    library: str | None = None  # overhead against this row
    baseline: str | None = None  # speed against this row (float32's; disk's for http)
    reference: str | None = None  # answers compared with this row's


def _add(
    runs: dict[str, Run],
    name: str,
    call: Callable,
    tag: str,
    *,
    library: str | None,
    answers: bool,
) -> None:
    """Adds row ``name + tag``; a reduced-precision row is timed and, with ``answers``,
    compared against float32's row ``name``."""
    runs[name + tag] = Run(
        call,
        forward="forward" + tag,
        library=None if library is None else library + tag,
        baseline=name if tag else None,
        reference=name if tag and answers else None,
    )


def plan(model, frames, sample, dtypes) -> dict[str, Run]:
    """The rows for the decoded ``frames`` (the video's first ``len(frames)``)."""
    from stream import read_disk

    from unipercept.precision import dtype_name

    names, video = sample.categories, sample.video
    runs: dict[str, Run] = {}
    for dtype in dtypes:
        tag = SHORT[dtype_name(dtype)]

        def add(name, call, *, library=None, answers=False, tag=tag):
            _add(runs, name, call, tag, library=library, answers=answers)

        add("forward", lambda d=dtype: forward_only(model, frames, names, d))
        add("library det", lambda d=dtype: library(model, "det", frames, names, d), answers=True)
        for size in (4,) if tag else (1, 4):
            add(
                f"batch {size}",
                lambda d=dtype, n=size: library(model, "det", frames, names, d, n),
                library="library det",
            )
            runs[f"batch {size}{tag}"].reference = "library det" + tag  # batch vs one by one
        add(
            "library insseg",
            lambda d=dtype: library(model, "insseg", frames, names, d),
            answers=True,
        )
        add("library mot", lambda d=dtype: library(model, "mot", frames, names, d), answers=True)
        add(
            "det",
            lambda d=dtype: end_to_end(model, "det", video, names, d, len(frames)),
            library="library det",
        )
        add(
            "mot",
            lambda d=dtype: end_to_end(model, "mot", video, names, d, len(frames)),
            library="library mot",
        )
    runs["read disk"] = Run(lambda: (read_disk(video, len(frames))[0], None))
    return runs


def compare(reference: list, candidate: list, name: str) -> dict:
    from agreement import agreement, combine, track_agreement

    if "mot" in name:
        combined, consistency = track_agreement(reference, candidate)
        return {**combined.as_dict(), "id_consistency": consistency}
    combined = combine([agreement(r, c) for r, c in zip(reference, candidate, strict=True)])
    return combined.as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="unipercept-tiny")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--malloc", choices=("system", "keep"), default="system")
    parser.add_argument("--frames", type=int, help="the video's first N frames (default all)")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    limit_spinning()  # as the command line does, before torch loads: every run below gets it
    if args.malloc == "keep":
        from unipercept.allocator import keep_freed_memory

        keep_freed_memory()
    import torch
    from record import environment
    from stream import read_stream, served

    from unipercept import load_model
    from unipercept.assets import samples
    from unipercept.data.io import write_text_atomic
    from unipercept.data.video import open_frames
    from unipercept.precision import parse_dtype

    dtypes = [parse_dtype(name) for name in args.dtypes]
    if torch.float32 not in dtypes:
        dtypes.insert(0, torch.float32)  # the reference of every agreement
    model = load_model(args.model)
    sample = samples()
    with open_frames(sample.video) as source:
        frames = [frame for _, frame in source][: args.frames]
    count = len(frames)
    with served(sample.video) as url:
        runs = plan(model, frames, sample, dtypes)
        runs["read http"] = Run(lambda: (read_stream(url, count)[0], None), baseline="read disk")
        timings: dict[str, list[float]] = {name: [] for name in runs}
        answers: dict[str, Any] = {}
        for _ in range(args.rounds):
            for name, run in runs.items():
                answers[name] = run.call()[1]  # untimed: warm caches
                timings[name].append(run.call()[0])
    per_frame = {name: statistics.median(values) / count for name, values in timings.items()}

    def ratio(name: str, other: str | None) -> float | None:
        return None if other not in per_frame else per_frame[name] / per_frame[other]

    rows = []
    for name, run in runs.items():
        overhead, versus_library = ratio(name, run.forward), ratio(name, run.library)
        speed = ratio(name, run.baseline)
        rows.append(
            {
                "run": name,
                "ms_per_frame": per_frame[name] * 1e3,
                "fps": 1 / per_frame[name],
                "overhead": None if overhead is None else overhead - 1,
                "overhead_vs_library": None if versus_library is None else versus_library - 1,
                "baseline": run.baseline,
                "speed_vs_baseline": None if speed is None else 1 / speed,
                "reference": run.reference,
                "agreement": None
                if run.reference is None
                else compare(answers[run.reference], answers[name], name),
            }
        )
    _print_table(rows, args, count, frames, sample, torch)
    if args.json:
        payload = {
            **environment(),
            "model": args.model,
            "frames": count,
            "rounds": args.rounds,
            "results": rows,
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


def _print_table(rows, args, count, frames, sample, torch) -> None:
    sys.stdout.write(
        f"# {torch.get_num_threads()} threads, torch {torch.__version__}, {args.model}, {count} "
        f"frames of {sample.video.name} ({frames[0].shape[2]}x{frames[0].shape[1]})\n"
        "| run | ms/frame | frames/s | overhead vs forward | overhead vs library | speed vs "
        "baseline | answers vs | matched | max score drift | mask IoU | id consistency |\n"
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n"
    )
    for row in rows:
        agreement = row["agreement"] or {}

        def fmt(value, spec: str) -> str:
            return "" if value is None else format(value, spec)

        sys.stdout.write(
            f"| {row['run']} | {row['ms_per_frame']:.1f} | {row['fps']:.1f} | "
            f"{fmt(row['overhead'], '+.0%')} | {fmt(row['overhead_vs_library'], '+.0%')} | "
            f"{fmt(row['speed_vs_baseline'], '.2f')} | {row['reference'] or ''} | "
            f"{fmt(agreement.get('matched'), '.1%')} | "
            f"{fmt(agreement.get('max_score_drift'), '.3f')} | "
            f"{fmt(agreement.get('mean_mask_iou'), '.3f')} | "
            f"{fmt(agreement.get('id_consistency'), '.1%')} |\n"
        )


if __name__ == "__main__":
    sys.exit(main())
