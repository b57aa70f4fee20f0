"""The command line: ``python -m unipercept.predict ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from unipercept.entry import OneLineParser, start
from unipercept.predict.inputs import parse_box
from unipercept.predict.job import IMAGE_TASKS, VIDEO_TASKS, InputError, Job
from unipercept.predict.runner import run
from unipercept.threads import cpu_threads

logger = logging.getLogger("unipercept.predict")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.predict",
        description="Run one of the ten tasks on images or a video; writes predictions.json "
        "(COCO style, RLE masks, track ids) and overlays.",
    )
    parser.add_argument("--task", required=True, choices=IMAGE_TASKS + VIDEO_TASKS)
    parser.add_argument("--input", required=True, help="image, folder, glob pattern or video")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    parser.add_argument("--prompt", help='category names ("cat. dog") or an expression')
    parser.add_argument("--box", help="sot/vos: the target's first-frame box x,y,w,h (pixels)")
    parser.add_argument(
        "--mask", help="sot/vos: first-frame mask PNG (non-zero = object; palette ids = objects)"
    )
    parser.add_argument(
        "--checkpoint",
        default="unipercept-tiny",
        help="a bundled model's name, a save_pretrained folder (e.g. from python -m "
        "unipercept.convert uninext or python -m unipercept.export), a UNINEXT .pth converted "
        "on the fly, or a training run folder (its checkpoints/best, else its newest "
        "checkpoint), its checkpoints/ folder or one checkpoint folder (default: "
        "unipercept-tiny)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--save-video", action="store_true", help="also write <video>.overlay.mp4 for a video"
    )
    parser.add_argument("--score-threshold", type=float, help="keep results at least this sure")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier predictions in --output"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: one per physical core that other work is not keeping busy, "
        "judged by the load average at start)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0 done, 2 bad input, 130 interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = start(_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        box = parse_box(args.box) if args.box is not None else None
        job = Job(
            task=args.task,
            input=args.input,
            prompt=args.prompt,
            box=box,
            mask=args.mask,
            checkpoint=args.checkpoint,
            score_threshold=args.score_threshold,
        )
        if args.threads is not None and args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        with cpu_threads(args.threads):
            path = run(
                job,
                args.output,
                device=args.device,
                save_video=args.save_video,
                overwrite=args.overwrite,
            )
    except InputError as error:
        logger.error("error: %s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: run the same command again to resume")
        return 130
    predictions = json.loads(path.read_text(encoding="utf-8"))
    sys.stdout.write(
        f"{args.task}: {len(predictions['annotations'])} results on "
        f"{len(predictions['images'])} image(s) -> {path}\n"
    )
    return 0
