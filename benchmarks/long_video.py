"""Memory of ``unipercept.predict`` over a long video: a generated 10,000-frame video (64x64, a
square moving over a gradient, written frame by frame to an MP4 in a temporary folder) through a
video task, with the process's resident memory (VmRSS) and its peak (VmHWM) read from
``/proc/self/status`` at a tenth of the frames, at the last frame, and after
``predictions.json`` is assembled. Records are written as they come and the predictions are
assembled as a stream, so the peak at the last frame should equal the peak at a tenth.

    python benchmarks/long_video.py --json benchmarks/results/long_video.json
    python benchmarks/long_video.py --frames 500 --json /tmp/long_video_500.json   # a try

Options: ``--frames`` (10000), ``--task`` (mot; any video task with a category prompt, or
sot with a box around the square), ``--model`` (unipercept-tiny), ``--size`` (64).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from unipercept.threads import limit_spinning


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MiB (VmRSS, VmHWM; where there is
    no /proc, the peak from getrusage for both)."""
    status = Path("/proc/self/status")
    if status.is_file():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        kib = {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}
        return {"rss_mb": kib["VmRSS"] / 1024, "peak_rss_mb": kib["VmHWM"] / 1024}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"rss_mb": peak_mb, "peak_rss_mb": peak_mb}


def write_video(path: Path, frames: int, size: int) -> Path:
    """A square moving back and forth over a gradient, encoded as the frames are made."""
    import numpy as np
    import torch

    from unipercept.data.video import VideoWriter

    ramp = np.linspace(0, 160, size, dtype=np.float32)
    background = np.stack(
        [ramp[:, None].repeat(size, 1), ramp[None, :].repeat(size, 0), np.full((size, size), 60)]
    ).astype(np.uint8)  # (3, H, W)
    side = size // 4
    span = size - side
    red = np.array([220, 30, 30], np.uint8)[:, None, None]
    with VideoWriter(path, fps=25, width=size, height=size) as writer:
        for index in range(frames):
            image = background.copy()
            x = abs(index % (2 * span) - span)
            image[:, side : 2 * side, x : x + side] = red
            writer.write(torch.from_numpy(image))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="frame width and height")
    parser.add_argument("--task", default="mot")
    parser.add_argument("--model", default="unipercept-tiny")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.frames < 10:
        parser.error(f"--frames must be at least 10, got {args.frames}")
    limit_spinning()  # as the command line does, before torch loads
    import torch

    from unipercept import load_model, predict
    from unipercept.data.io import write_text_atomic

    checkpoints = {args.frames // 10, args.frames}
    model = load_model(args.model)
    side = args.size // 4
    if args.task in predict.ANNOTATION_TASKS:
        prompt = {"box": (0.0, float(side), float(side), float(side))}
    else:
        prompt = {"prompt": "square. circle"}
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        video = write_video(Path(folder) / "long.mp4", args.frames, args.size)
        encoded = time.perf_counter() - started
        job = predict.Job(task=args.task, input=str(video), **prompt)

        def on_frame(done: int) -> None:
            if done in checkpoints:
                elapsed = round(time.perf_counter() - started, 2)
                rows.append({"frame": done, "seconds": elapsed, **memory_mb()})

        started = time.perf_counter()
        path = predict.run(job, Path(folder) / "out", model=model, on_frame=on_frame)
        seconds = time.perf_counter() - started
        assembled = {"after_predictions": True, **memory_mb()}
        predictions_mb = path.stat().st_size / 2**20
    first, last = rows[0], rows[-1]
    payload = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "task": args.task,
        "frames": args.frames,
        "frame_size": [args.size, args.size],
        "encode_seconds": round(encoded, 2),
        "seconds": round(seconds, 2),
        "frames_per_second": round(args.frames / seconds, 2),
        "predictions_json_mb": round(predictions_mb, 2),
        "memory": [*rows, assembled],
        "peak_growth_mb": round(last["peak_rss_mb"] - first["peak_rss_mb"], 2),
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 2),
    }
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    if args.json:
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
