"""``python -m unipercept.export SOURCE OUTPUT``: what ``OUTPUT`` names decides what is written.

- a folder: the model folder (``save_pretrained``) of a training run's checkpoint. ``SOURCE`` is
  the run folder (the one holding ``checkpoints/``; ``checkpoints/best`` is taken when it exists,
  else the newest complete ``step_*``), its ``checkpoints/`` folder, or one checkpoint folder.
  The inference resolution is the training config's (the largest ``trainer.short_sizes``,
  ``trainer.max_size``) unless ``--short-size``/``--max-size`` say otherwise.
- ``*.onnx`` / ``*.pt2``: the model for one task and prompt as an ONNX graph or a
  ``torch.export`` program (:mod:`unipercept.export.onnx`). ``SOURCE`` is anything
  ``unipercept.load_model`` takes: a model folder, a bundled model's name, a run or checkpoint.

Exit codes: 0 done, 2 a usage error or a source or destination that is refused (one line
naming the path and why), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from unipercept.entry import OneLineParser, start

logger = logging.getLogger("unipercept.export")

GRAPH_SUFFIXES = (".onnx", ".pt2")
_GRAPH_OPTIONS = ("task", "prompt", "height", "width", "opset")
_FOLDER_OPTIONS = ("short_size", "max_size", "description")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.export",
        description="Export a training run's checkpoint as a model folder, or a model as an "
        "ONNX graph (.onnx) or a torch.export program (.pt2).",
    )
    parser.add_argument(
        "source",
        help="a training run folder (holding checkpoints/), its checkpoints/ folder or one "
        "checkpoint folder; for .onnx/.pt2 also a model folder or a bundled model's name",
    )
    parser.add_argument(
        "output",
        type=Path,
        help="the model folder to write (new, empty, or an earlier export), or a .onnx / .pt2 file",
    )
    folder = parser.add_argument_group("model folder")
    folder.add_argument(
        "--short-size",
        type=int,
        metavar="PIXELS",
        help="images' shorter side at inference (default: the largest trainer.short_sizes)",
    )
    folder.add_argument(
        "--max-size",
        type=int,
        metavar="PIXELS",
        help="the most the longer side may be (default: trainer.max_size)",
    )
    folder.add_argument(
        "--description",
        help="kept in unipercept.json (default: the run, checkpoint and step it came from)",
    )
    graph = parser.add_argument_group(".onnx / .pt2")
    graph.add_argument("--task", help="the task the graph answers (default: det)")
    graph.add_argument(
        "--prompt", help='the prompt it is built for: category names ("person. car") or text'
    )
    graph.add_argument(
        "--height",
        type=int,
        metavar="PIXELS",
        help="the input canvas's height, a multiple of 32 (default: the model's inference size)",
    )
    graph.add_argument(
        "--width",
        type=int,
        metavar="PIXELS",
        help="the input canvas's width, a multiple of 32 (default: the model's inference size)",
    )
    graph.add_argument("--opset", type=int, help=".onnx: the ONNX opset (default: the exporter's)")
    return parser


def _check_options(args: argparse.Namespace) -> bool:
    """Reports options that do not apply to the output's kind; True when all apply."""
    graph = args.output.suffix in GRAPH_SUFFIXES
    wrong = _FOLDER_OPTIONS if graph else _GRAPH_OPTIONS
    given = [name for name in wrong if getattr(args, name) is not None]
    problem = None
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        kind = f"a {args.output.suffix} file" if graph else "a model folder"
        problem = f"{flags}: not for {kind} ({args.output})"
    elif graph and not args.prompt:
        problem = f"--prompt is required for {args.output.suffix}: the graph answers one prompt"
    else:
        for name in ("short_size", "max_size", "height", "width"):
            value = getattr(args, name)
            if value is not None and value < 1:
                problem = f"--{name.replace('_', '-')} must be positive, got {value}"
                break
    if problem is not None:
        logger.error("error: %s (see --help)", problem)
        return False
    return True


def _export_graph(args: argparse.Namespace) -> Path:
    """Loads ``args.source`` and hands it to the exporter the output's suffix names."""
    from unipercept.export import load_model

    # Loaded here only: the exporters pull in the tracing and ONNX machinery.
    from unipercept.export.graph import SIZE_DIVISIBILITY
    from unipercept.export.onnx import export_onnx, export_program

    model = load_model(args.source)
    # The default canvas holds the model's inference size, rounded up as the graph needs.
    size = model.default_preprocess().short_size
    size = -(-size // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    height = args.height if args.height is not None else size
    width = args.width if args.width is not None else size
    task = args.task or "det"
    if args.output.suffix == ".onnx":
        return export_onnx(
            model,
            args.output,
            task=task,
            prompt=args.prompt,
            height=height,
            width=width,
            opset=args.opset,
        )
    return export_program(
        model, args.output, task=task, prompt=args.prompt, height=height, width=width
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = start(_parser(), argv)
    if isinstance(args, int):
        return args
    if not _check_options(args):
        return 2
    try:
        if args.output.suffix in GRAPH_SUFFIXES:
            written = _export_graph(args)
        else:
            from unipercept.export.checkpoint import export_checkpoint

            written = export_checkpoint(
                args.source,
                args.output,
                short_size=args.short_size,
                max_size=args.max_size,
                description=args.description,
            )
    except (ValueError, OSError, ImportError) as error:
        # PretrainedError and CheckpointSourceError are ValueErrors, FileExistsError an
        # OSError; ImportError: offline weights (MissingWeightsError) or onnxscript missing,
        # each message naming the install command.
        logger.error("error: %s", error)
        return 2
    logger.info("wrote %s", written)
    return 0
