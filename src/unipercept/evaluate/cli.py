"""The command line of ``python -m unipercept.evaluate``: parsing, checks of the paths it will
write, and dispatch to scoring, ``--images`` and ``--data``.

Parsing imports nothing heavy (torch, transformers, Hydra, pycocotools, TrackEval load only once
a task runs), so ``--help`` and usage errors answer at once. Every usage error and bad input is
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.entry import OneLineParser, start
from unipercept.evaluate.baselines import BASELINE_TASKS, BASELINES
from unipercept.evaluate.files import TASKS, evaluate_files
from unipercept.evaluate.image_tasks import predict_coco
from unipercept.evaluate.predictor import build_predictor
from unipercept.evaluate.referring import evaluate_referring, evaluate_rvos_model
from unipercept.evaluate.video_tasks import predict_mot, predict_sot, predict_vis, predict_vos

if TYPE_CHECKING:
    from unipercept.evaluate.answers import AnswerLog

logger = logging.getLogger(__name__)

REFERRING_TASKS = ("rec", "res")
# The tasks --images runs a model for, and those whose --results is then one json file.
IMAGE_RUNNERS = ("det", "insseg", "vos", "sot", "mot", "mots", "vis")
JSON_RESULTS = ("det", "insseg", "vis")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.evaluate",
        description="Score result files against ground truth, or run a model first and score "
        "what it writes.",
    )
    parser.add_argument(
        "task",
        choices=(*TASKS, *REFERRING_TASKS),
        metavar="TASK",
        help=f"one of {', '.join(TASKS)} (result files, or --images); "
        f"{', '.join(REFERRING_TASKS)} (and rvos) with --data",
    )
    parser.add_argument(
        "--gt",
        type=Path,
        metavar="PATH",
        help="the ground truth: a COCO json (det, insseg), a YouTube-VIS json (vis), or a "
        "folder: LaSOT sequences holding groundtruth.txt (sot), DAVIS/YouTube-VOS Annotations "
        "(vos), Ref-YouTube-VOS Annotations/<video>/<exp>/ (rvos), MOTChallenge <seq>/gt/gt.txt "
        "(mot), MOTS txt (mots)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        metavar="PATH",
        help="the predictions to score, in the format the benchmark's server takes (a json for "
        "det, insseg, vis; a folder for the others); with --images the model writes them here "
        "first; rvos with --data: also write the submission layout here",
    )
    parser.add_argument(
        "--data",
        metavar="NAME",
        help="rec, res, rvos: the conf/data referring dataset to run the model on",
    )
    parser.add_argument(
        "--data-override",
        nargs="*",
        metavar="KEY=VALUE",
        default=[],
        help="rec, res, rvos with --data: key=value changes to its config, e.g. reader.split=val",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the scores to this json file (atomically)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help=f"{', '.join(IMAGE_RUNNERS)}: run the model on these images first and write "
        "--results: the gt json's images (det, insseg), <seq>/ frame folders (vos), the "
        "dataset folder itself (sot, mot, mots), the json's file_names (vis)",
    )
    parser.add_argument(
        "--model",
        default="unipercept-tiny",
        metavar="NAME",
        help="the model that --images/--data runs: a bundled model (default unipercept-tiny), "
        "a save_pretrained folder, a UNINEXT .pth (converted on the fly), a training run "
        "folder (its checkpoints/best, else its newest checkpoint), its checkpoints/ folder or "
        "one checkpoint folder, a conf/model name with --weights, or copy-first (the video "
        f"tasks {', '.join(BASELINE_TASKS)}: the first frame's ground truth in every frame, the "
        "baseline to beat)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="PATH",
        help="with a conf/model --model: the checkpoint folder or .safetensors file to load",
    )
    parser.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        default=["person"],
        help="mot, mots with --images: the category names the model is prompted with "
        "(default: person)",
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        metavar="FILE",
        help="sot, vos: a file naming the sequences to run and score, one per line (DAVIS's "
        "ImageSets/2017/val.txt, LaSOT's testing_set.txt)",
    )
    parser.add_argument(
        "--short-size",
        type=int,
        metavar="PIXELS",
        help="with --images/--data: the shorter image side the model sees (default: the "
        "model's own, or 800)",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        metavar="PIXELS",
        help="with --images/--data: the most the longer image side may be (default: the "
        "model's own, or 1333)",
    )
    parser.add_argument(
        "--mot15",
        action="store_true",
        help="mot: MOT15 ground truth (no classes, so no distractor preprocessing)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="with --images/--data: CPU threads (default: one per physical core that other "
        "work is not keeping busy, judged by the load average at start)",
    )
    return parser


def _number(value: float, digits: int = 6) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _format(scores: dict, indent: str = "") -> str:
    """The scores as indented ``key: value`` lines (a list of numbers, such as a curve, on one
    line to 3 decimals)."""
    lines = []
    for key, value in scores.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:\n{_format(value, indent + '  ')}")
        elif isinstance(value, float):
            lines.append(f"{indent}{key}: {_number(value)}")
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            lines.append(f"{indent}{key}: {' '.join(_number(v, 3) for v in value)}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def _read_sequences(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"--sequences {path}: no such file")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"--sequences {path}: the file names no sequence")
    return names


def _check_writable(path: Path, option: str, *, folder: bool = False) -> None:
    """Refuses, before any work, an output ``path`` that cannot be written: a file path that is
    a folder (or a folder path that is a file), or one below a file.

    Raises:
        ValueError: naming the option, the path and what is in the way.
    """
    if folder and path.is_file():
        raise ValueError(f"{option} {path}: is a file, expected a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, expected a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            return


def _check_outputs(args: argparse.Namespace) -> None:
    """The paths this run writes, checked before the (maybe long) work that fills them."""
    if args.json is not None:
        _check_writable(args.json, "--json")
    if args.results is not None and (args.images is not None or args.data is not None):
        folder = args.task not in JSON_RESULTS
        _check_writable(args.results, "--results", folder=folder)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """The scores of the parsed command; bad input raises ValueError (or OSError)."""
    sequences = _read_sequences(args.sequences) if args.sequences is not None else None
    if args.model in BASELINES and args.task not in BASELINE_TASKS:
        raise ValueError(
            f"the {args.model} baseline answers the video tasks ({', '.join(BASELINE_TASKS)}): "
            f"{args.task} has no first frame"
        )
    if args.task in REFERRING_TASKS or (args.task == "rvos" and args.data is not None):
        if args.data is None:
            raise ValueError(f"{args.task} is scored by running a model: give --data")
        predictor = build_predictor(args.model, args.weights, args.short_size, args.max_size)
        if args.task == "rvos":
            return evaluate_rvos_model(args.data, predictor, args.data_override, args.results)
        return evaluate_referring(args.task, args.data, predictor, args.data_override)
    if args.gt is None or args.results is None:
        raise ValueError(f"{args.task} needs --gt and --results")
    answers = _run_model(args, sequences) if args.images is not None else None
    scores = evaluate_files(
        args.task, args.gt, args.results, preprocess=not args.mot15, sequences=sequences
    )
    if answers is not None:
        scores["score_separation"] = answers.report(scores)
    return scores


def _run_model(args: argparse.Namespace, sequences: Sequence[str] | None) -> AnswerLog | None:
    """``--images``: runs the model and writes ``--results`` for the task; for sot and vos,
    returns every answer with its score (see :mod:`unipercept.evaluate.answers`)."""
    if args.task not in IMAGE_RUNNERS:
        raise ValueError(f"--images runs a model for {', '.join(IMAGE_RUNNERS)}, not {args.task}")
    if args.task in ("det", "insseg"):
        predict_coco(
            args.gt,
            args.images,
            args.results,
            model_name=args.model,
            weights=args.weights,
            with_masks=args.task == "insseg",
            short_size=args.short_size,
            max_size=args.max_size,
        )
        return None
    predictor = build_predictor(args.model, args.weights, args.short_size, args.max_size)
    if args.task == "vos":
        return predict_vos(args.gt, args.images, args.results, predictor, sequences)
    if args.task == "sot":
        return predict_sot(args.images, args.results, predictor, sequences)
    if args.task == "vis":
        predict_vis(args.gt, args.images, args.results, predictor)
    else:
        with_masks = args.task == "mots"
        predict_mot(
            args.images, args.results, predictor, args.categories, with_masks, truth=args.gt
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 scored, 2 usage error or bad input).

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.
    """
    # Errors and warnings are single lines on stderr; the scores go to stdout.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = start(_parser(), argv)
    if isinstance(args, int):
        return args
    from unipercept.offline import MissingWeightsError
    from unipercept.threads import cpu_threads

    try:
        _check_outputs(args)
        if args.images is not None or args.data is not None:  # a model runs
            with cpu_threads(args.threads):
                scores = _run(args)
        else:
            scores = _run(args)
    except (ValueError, OSError, MissingWeightsError) as error:
        logger.error("error: %s", error)
        return 2
    sys.stdout.write(_format(scores) + "\n")
    if args.json is not None:
        from unipercept.data.io import write_text_atomic

        try:
            write_text_atomic(args.json, json.dumps({"task": args.task, **scores}, indent=2))
        except OSError as error:
            logger.error("error: --json %s: cannot write (%s)", args.json, error)
            return 2
    return 0
