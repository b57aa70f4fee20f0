"""Matrix NMS against greedy mask NMS: time of each at several mask counts.

    python benchmarks/matrix_nms.py [--json PATH] [--repeats 7] [--counts 100 500 1000]

Masks are 200x336 (a 800x1344 image at stride 4, where SOLO-style heads predict them), boxes
and ellipses of varied size jittered around 20 object centres, so that most masks are
near-duplicates of a few objects and suppression really happens; scores are uniform. Inputs come
from a fixed seed. Both ops run class-agnostic: ``matrix_nms`` with the Gaussian kernel and
sigma 2, ``mask_nms`` with IoU threshold 0.5.

Two greedy baselines: ``mask-nms``, the library's own (an int8 matrix product per kept mask),
and ``mask-nms-textbook``, the float formulation SOLO-style code uses. The ratios are printed
against both.

The implementations run interleaved in one process (one call of each per round, medians over
rounds; each timed call right after the same call untimed, so neither inherits the other's
caches). The speed-up is the greedy time over the Matrix NMS time at the same count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from unipercept.data.io import write_text_atomic
from unipercept.ops.matrix_nms import mask_nms, matrix_nms

HEIGHT, WIDTH = 200, 336
OBJECTS = 20
COUNTS = (100, 500, 1000)


def textbook_mask_nms(
    masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Greedy mask NMS as SOLO-style code writes it: float masks, one matrix-vector product
    per kept mask. A second baseline beside the library's int8 ``mask_nms``."""
    flat = masks.flatten(1).float()  # (N, P)
    areas = flat.sum(1)  # (N,)
    alive = torch.argsort(scores, descending=True, stable=True)
    kept = []
    while alive.numel():
        best, alive = alive[0], alive[1:]
        kept.append(best)
        inter = flat[alive] @ flat[best]  # (R,)
        iou = inter / (areas[alive] + areas[best] - inter).clamp_min(1)
        alive = alive[iou <= iou_threshold]
    return torch.stack(kept)


IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "matrix-nms": lambda masks, scores: matrix_nms(masks, scores, kernel="gaussian", sigma=2.0),
    "mask-nms": lambda masks, scores: mask_nms(masks, scores, iou_threshold=0.5),
    "mask-nms-textbook": lambda masks, scores: textbook_mask_nms(masks, scores, 0.5),
}


def make_inputs(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, HEIGHT, WIDTH) bool masks around OBJECTS objects and (count,) scores."""
    generator = torch.Generator().manual_seed(seed)
    extent = torch.tensor([WIDTH, HEIGHT], dtype=torch.float32)
    # Objects from small (16 px) to large (40% of the image), half of them boxes, half ellipses.
    centres = torch.rand(OBJECTS, 2, generator=generator) * extent  # (O, 2) as (x, y)
    sizes = 16 + torch.rand(OBJECTS, 2, generator=generator) * extent * 0.4  # (O, 2)
    is_ellipse = torch.rand(OBJECTS, generator=generator) < 0.5  # (O,)
    # Each mask is one object with its centre moved by ~10% and its size scaled by ~15% of the
    # object's size, like the many candidate masks a detector predicts around each object.
    pick = torch.randint(0, OBJECTS, (count,), generator=generator)  # (N,)
    centre = centres[pick] + torch.randn(count, 2, generator=generator) * sizes[pick] * 0.1
    scale = (1 + 0.15 * torch.randn(count, 2, generator=generator)).clamp(0.5, 1.5)
    half = sizes[pick] * scale / 2  # (N, 2)
    x = (torch.arange(WIDTH) + 0.5 - centre[:, 0, None, None]) / half[:, 0, None, None]
    y = (torch.arange(HEIGHT)[:, None] + 0.5 - centre[:, 1, None, None]) / half[:, 1, None, None]
    ellipses = x.square() + y.square() <= 1  # (N, H, W)
    boxes = (x.abs() <= 1) & (y.abs() <= 1)  # (N, H, W)
    masks = torch.where(is_ellipse[pick][:, None, None], ellipses, boxes)  # (N, H, W)
    return masks, torch.rand(count, generator=generator)


def run(counts: list[int], repeats: int) -> list[dict]:
    records = []
    for count in counts:
        masks, scores = make_inputs(count)
        times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
        for _ in range(repeats):
            for name, fn in IMPLEMENTATIONS.items():
                # Untimed first, so the timed call finds the caches as this implementation
                # leaves them, not as the other one did.
                fn(masks, scores)
                begin = time.perf_counter()
                fn(masks, scores)
                times[name].append((time.perf_counter() - begin) * 1e3)
        greedy_kept = len(mask_nms(masks, scores, iou_threshold=0.5))
        for name in IMPLEMENTATIONS:
            records.append(
                {
                    "implementation": name,
                    "count": count,
                    "height": HEIGHT,
                    "width": WIDTH,
                    "ms": statistics.median(times[name]),
                    "greedy_kept": greedy_kept,
                }
            )
    return records


def print_table(records: list[dict]) -> None:
    print(
        f"{'masks':>6}  {'implementation':<20}{'ms':>10}{'mask-nms / this':>17}"
        f"{'textbook / this':>17}{'greedy kept':>13}"
    )
    by_count: dict[int, dict[str, dict]] = {}
    for record in records:
        by_count.setdefault(record["count"], {})[record["implementation"]] = record
    for count, rows in by_count.items():
        ours, textbook = rows["mask-nms"]["ms"], rows["mask-nms-textbook"]["ms"]
        for name, record in rows.items():
            print(
                f"{count:>6}  {name:<20}{record['ms']:>10.2f}{ours / record['ms']:>16.2f}x"
                f"{textbook / record['ms']:>16.2f}x{record['greedy_kept']:>13}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write one record per (count, implementation)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    args = parser.parse_args(argv)
    records = run(args.counts, args.repeats)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {HEIGHT}x{WIDTH} masks, "
        f"median of {args.repeats} interleaved rounds"
    )
    print_table(records)
    if args.json:
        meta = {
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        }
        payload = [{**meta, **record} for record in records]
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
