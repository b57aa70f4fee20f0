"""Per-frame association cost of each tracker, as a fraction of the tiny model's per-frame time.

    python benchmarks/tracking.py [--json PATH] [--frames 20] [--counts 10 100]
                                  [--height 360] [--width 640]

The reference is one frame of a MOTS session with ``model/unipercept_tiny`` (the offline
MobileNetV2 and MiniLM weights): preprocessing (shorter side to the frame's), the forward pass
with a two-category prompt encoded once, and the detections with masks and embeddings, i.e.
everything a :class:`~unipercept.tasks.TrackingSession` step does except ``tracker.update``.

Each tracker (``conf/tracker/*`` as shipped) follows a generated scene of N objects: boxes of
20-60 px moving at constant velocity and bouncing off the borders, each with its own texture
(the flow tracker computes real optical flow), a fixed random embedding plus noise, and its
box as its mask, detected every frame with score 0.9. Every tracker gets masks and embeddings,
as in MOTS. The first frames (``--warmup``) establish the tracks; then, in each round, the model
runs on one frame and every tracker updates on its next frame, interleaved, and the medians
are reported. ``tracks`` is the number of tracks a tracker holds at the end: it shows that the
trackers were really following N objects.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unipercept import config
from unipercept.data.io import write_text_atomic
from unipercept.data.preprocess import ImagePreprocessor
from unipercept.structures import CategoryPrompt, Instances
from unipercept.tasks import InstanceSegmentationTask

TRACKERS = ("qdtrack", "idol", "bytetrack", "flow")
COUNTS = (10, 100)
TARGET = 0.05  # association at 100 tracks within 5% of the model's time


class Scene:
    """N textured boxes moving over a textured background; ``next()`` gives a frame and its
    perfect detections."""

    def __init__(self, count: int, height: int, width: int, embedding_dim: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.height, self.width = height, width
        rng = self.rng
        self.size = rng.integers(20, 61, (count, 2)).astype(np.float64)  # (N, 2) w, h
        self.position = rng.uniform(0, 1, (count, 2)) * ([width, height] - self.size)  # x0, y0
        speed = rng.uniform(1, 4, (count, 1))
        angle = rng.uniform(0, 2 * np.pi, (count, 1))
        self.velocity = speed * np.concatenate((np.cos(angle), np.sin(angle)), 1)  # (N, 2)
        self.background = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
        self.textures = [
            rng.integers(0, 256, (3, int(h), int(w)), dtype=np.uint8) for w, h in self.size
        ]
        self.embeddings = torch.from_numpy(rng.normal(size=(count, embedding_dim))).float() * 4
        self.labels = torch.from_numpy(rng.integers(0, 2, count))

    def next(self) -> tuple[torch.Tensor, Instances]:
        self.position += self.velocity
        limit = np.array([self.width, self.height]) - self.size
        for axis in range(2):
            low = self.position[:, axis] < 0
            high = self.position[:, axis] > limit[:, axis]
            self.velocity[low | high, axis] *= -1
            self.position[:, axis] = np.clip(self.position[:, axis], 0, limit[:, axis])
        frame = self.background.copy()
        count = len(self.size)
        masks = torch.zeros((count, self.height, self.width), dtype=torch.bool)
        boxes = torch.zeros((count, 4))
        for index, ((x0, y0), texture) in enumerate(zip(self.position, self.textures, strict=True)):
            x, y = round(float(x0)), round(float(y0))
            h, w = texture.shape[1:]
            frame[:, y : y + h, x : x + w] = texture
            masks[index, y : y + h, x : x + w] = True
            boxes[index] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        noise = torch.from_numpy(self.rng.normal(scale=0.1, size=self.embeddings.shape)).float()
        detections = Instances(
            (self.height, self.width),
            boxes=boxes,
            scores=torch.full((count,), 0.9),
            labels=self.labels,
            masks=masks,
            embeddings=self.embeddings + noise,
        )
        return torch.from_numpy(frame), detections


def model_step(height: int, width: int):
    """One MOTS frame of the tiny model without association, as a function of the frame."""
    model = config.instantiate(config.compose_group_option("model", "unipercept_tiny")).eval()
    preprocess = ImagePreprocessor(short_size=min(height, width), max_size=max(height, width))
    with torch.no_grad():
        prompt = model.encode_prompts([CategoryPrompt(["person", "car"])])
    detector = InstanceSegmentationTask(score_threshold=0.0, top_k=100)

    def step(frame: torch.Tensor) -> Instances:
        with torch.no_grad():
            batch = preprocess([frame])
            output = model(batch, prompt)
            return detector.detections(output, batch, 0, with_embeddings=True)

    return step


def run(counts: list[int], frames: int, warmup: int, height: int, width: int) -> list[dict]:
    step = model_step(height, width)
    probe = Scene(1, height, width, 8, seed=0).next()[0]
    embedding_dim = int(step(probe).embeddings.shape[1])  # the scenes' embeddings match it
    runs = {}
    for name in TRACKERS:
        factory = config.instantiate(config.compose_group_option("tracker", name))
        for count in counts:
            scene = Scene(count, height, width, embedding_dim, seed=count)
            tracker = factory()
            for _ in range(warmup):
                frame, detections = scene.next()
                tracker.update(detections, frame)
            runs[name, count] = (scene, tracker, [])
    model_times = []
    reference = Scene(5, height, width, embedding_dim, seed=1)
    for _ in range(frames):
        frame, _ = reference.next()
        step(frame)  # untimed first, as every timed call below follows one of its own kind
        begin = time.perf_counter()
        step(frame)
        model_times.append((time.perf_counter() - begin) * 1e3)
        for scene, tracker, times in runs.values():
            frame, detections = scene.next()
            begin = time.perf_counter()
            tracker.update(detections, frame)
            times.append((time.perf_counter() - begin) * 1e3)
    model_ms = statistics.median(model_times)
    records = []
    for (name, count), (_, tracker, times) in runs.items():
        ms = statistics.median(times)
        records.append(
            {
                "tracker": name,
                "count": count,
                "tracks": tracker.num_tracks,
                "assoc_ms": ms,
                "model_ms": model_ms,
                "fraction": ms / model_ms,
                "height": height,
                "width": width,
            }
        )
    return records


def print_table(records: list[dict]) -> None:
    print(f"{'tracker':<10}{'objects':>8}{'tracks':>8}{'assoc ms':>10}{'model ms':>10}{'share':>9}")
    for r in records:
        flag = "" if r["count"] < 100 or r["fraction"] < TARGET else "  (over the 5% target)"
        print(
            f"{r['tracker']:<10}{r['count']:>8}{r['tracks']:>8}{r['assoc_ms']:>10.2f}"
            f"{r['model_ms']:>10.1f}{100 * r['fraction']:>8.2f}%{flag}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write one record per (tracker, count)")
    parser.add_argument("--frames", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=5, help="frames that establish the tracks")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 1 or min(args.counts) < 1:
        parser.error("--frames, --warmup and --counts must be positive")
    records = run(args.counts, args.frames, args.warmup, args.height, args.width)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.height}x{args.width} frames, "
        f"median of {args.frames} interleaved rounds"
    )
    print_table(records)
    if args.json:
        meta = {
            "frames": args.frames,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        }
        payload = [{**meta, **record} for record in records]
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
