"""``python -m unipercept.convert uninext CHECKPOINT.pth OUT_DIR``: a UNINEXT release as a model
folder that ``load_model``, ``predict --checkpoint`` and ``evaluate --model`` take.

Exit codes: 0 done, 2 a usage error or a file that is not a usable checkpoint (one line naming
the file and the first offending key), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from unipercept.entry import OneLineParser, start

logger = logging.getLogger("unipercept.convert")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.convert",
        description="Convert another project's released checkpoint into a unipercept model folder.",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    uninext = sources.add_parser(
        "uninext",
        logger=logger,
        help="a UNINEXT release (.pth holding {'model': state_dict}): R50, ConvNeXt-L, ViT-H; "
        "image (stage 1-2) or video (stage 3) models",
        description="The architecture is read from the checkpoint's keys and shapes; the test "
        "sizes below are stored in the folder.",
    )
    uninext.add_argument("checkpoint", help="the UNINEXT .pth file")
    uninext.add_argument("output", help="the model folder to write (new, empty, or an earlier one)")
    uninext.add_argument("--image-size", type=int, default=800, help="images' shortest edge (800)")
    uninext.add_argument("--max-size", type=int, default=1333, help="longest edge at most (1333)")
    uninext.add_argument(
        "--video-size", type=int, default=480, help="video frames' shortest edge (480)"
    )
    uninext.add_argument(
        "--template-size", type=int, default=256, help="SOT/VOS template side (256)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = start(_parser(), argv)
    if isinstance(args, int):
        return args
    from unipercept.modeling.pretrained import PretrainedError
    from unipercept.modeling.uninext.convert import convert_uninext

    try:
        folder = convert_uninext(
            args.checkpoint,
            args.output,
            image_size=args.image_size,
            max_size=args.max_size,
            video_size=args.video_size,
            template_size=args.template_size,
        )
    except (PretrainedError, FileExistsError, ValueError) as error:
        logger.error("error: %s", error)
        return 2
    logger.info("wrote %s", folder)
    return 0
