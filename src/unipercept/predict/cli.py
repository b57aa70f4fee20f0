"""The command line: ``python -m unipercept.predict ...``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from unipercept.entry import OneLineParser, start
from unipercept.predict.inputs import parse_box
from unipercept.predict.job import DTYPES, IMAGE_TASKS, JOB_DIR, VIDEO_TASKS, InputError, Job
from unipercept.predict.runner import run_job
from unipercept.threads import cpu_threads

logger = logging.getLogger("unipercept.predict")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.predict",
        description="Run one of the ten tasks on images, videos, folders of videos, cameras or "
        "streams; writes predictions.json (COCO style, RLE masks, track ids) and overlays. An "
        "interrupted job resumes when the same command is run again (not on a live source).",
    )
    parser.add_argument("--task", required=True, choices=IMAGE_TASKS + VIDEO_TASKS)
    parser.add_argument(
        "--input",
        required=True,
        help="an image, a folder of images, a glob pattern (quoted), a video file, a folder of "
        "frames; for a video task also a folder of videos (video files and/or folders of "
        "frames: predictions/<video>.json each, predictions.json their index); or a live "
        "source: a capture device (/dev/video0, or 0 for it) or an rtsp://, http:// or "
        "https:// stream, read until it ends, --max-frames, or Ctrl-C (which ends it "
        "cleanly with the frames so far). A live source is not resumable: running into the "
        "same --output again needs --overwrite",
    )
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
        "--save-video",
        action="store_true",
        help="also write <video>.overlay.mp4 for a video (one per video of a folder; a live "
        "source's is drawn as the frames come)",
    )
    parser.add_argument("--score-threshold", type=float, help="keep results at least this sure")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier predictions in --output"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="image tasks: images (or a video's frames) per forward pass; same answers as one "
        "at a time (default 1)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="precision of the forward passes (autocast; weights stay float32): float32 "
        "(default), bfloat16 (CPUs with AMX/AVX512-BF16, recent GPUs) or float16 (GPUs)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        help="stop after this many frames of a video or live source",
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
            dtype=args.dtype,
            max_frames=args.max_frames,
        )
        if args.threads is not None and args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        with cpu_threads(args.threads):
            outcome = run_job(
                job,
                args.output,
                device=args.device,
                save_video=args.save_video,
                overwrite=args.overwrite,
                batch_size=args.batch_size,
            )
    except InputError as error:
        logger.error("error: %s", error)
        return 2
    except KeyboardInterrupt:
        from unipercept.data.video import is_stream

        if is_stream(args.input):
            logger.error(
                "interrupted: a live source cannot be resumed; the frames so far are in %s",
                args.output / JOB_DIR,
            )
        else:
            logger.error("interrupted: run the same command again to resume")
        return 130
    if outcome.stopped is not None:
        logger.warning(
            "stopped at frame %d (%s): %s holds the %d frame(s) before it",
            outcome.images,
            outcome.stopped,
            outcome.path,
            outcome.images,
        )
    where = "image(s)" if outcome.videos is None else f"frame(s) of {outcome.videos} video(s)"
    sys.stdout.write(
        f"{args.task}: {outcome.annotations} results on {outcome.images} {where} -> "
        f"{outcome.path}\n"
    )
    return 0
