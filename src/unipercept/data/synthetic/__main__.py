"""``python -m unipercept.data.synthetic --out DIR --seed S [--size small|train] [--overwrite]``

Writes the generated world's datasets under DIR. Exits with 2 and one line on stderr when DIR
is not empty and ``--overwrite`` is not given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from unipercept.entry import shadowed_package

from . import PRESETS, generate


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m unipercept.data.synthetic",
        description="Generate a world of coloured shapes written as COCO, RefCOCO, "
        "YouTube-VIS, DAVIS, LaSOT, MOTChallenge and Ref-YouTube-VOS datasets.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, required=True, help="non-negative random seed")
    parser.add_argument(
        "--size",
        choices=sorted(PRESETS),
        default="small",
        help="small: seconds, for tests; train: a few minutes, for training (default: small)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier world at --out"
    )
    args = parser.parse_args(argv)
    if (problem := shadowed_package()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.seed < 0:
        parser.error("--seed must be a non-negative integer")
    start = time.perf_counter()
    try:
        summary = generate(args.out, args.seed, args.size, overwrite=args.overwrite, progress=True)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(
        f"wrote {sum(summary.images.values())} images, {sum(summary.videos.values())} videos "
        f"and {sum(summary.mot_sequences.values())} MOT sequences to {summary.root} "
        f"in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
