"""``python -m unipercept.fit_rescorer MODEL OUTPUT --data DATA``: a referring re-scorer for
any model, fitted on a referring dataset with the rest of the model frozen.

``MODEL`` is anything ``unipercept.load_model`` takes (a bundled name, a model folder, a
training run); ``DATA`` a ``conf/data`` dataset of expressions (``refcoco`` with
``--data-override reader.split=train``, ``synthetic_refcoco``). A fresh re-scorer is fitted
(one the model already has is replaced) as :mod:`unipercept.engine.rescorer_fit` describes, and
the model is saved with it to ``OUTPUT`` (``save_pretrained``: a new or empty folder, or an
earlier save). Category and annotation prompts answer as before.

Exit codes: 0 done, 2 a usage error or a model, dataset or destination that is refused (one
line naming it and why), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from unipercept.entry import OneLineParser, start

logger = logging.getLogger("unipercept.fit_rescorer")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.fit_rescorer",
        description="Fit a referring re-scorer on a frozen model and save the model with it.",
    )
    parser.add_argument("model", help="a bundled model's name, a model folder or a training run")
    parser.add_argument("output", type=Path, help="the model folder to write")
    parser.add_argument(
        "--data", required=True, help="a conf/data dataset of referring expressions"
    )
    parser.add_argument(
        "--data-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the dataset's config (repeatable), e.g. reader.split=train",
    )
    parser.add_argument("--steps", type=int, default=6000, help="fitting steps (batch 64)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    parser.add_argument(
        "--no-mirror",
        action="store_true",
        help="do not also fit on each image mirrored (with 'left' and 'right' swapped)",
    )
    return parser


def fit(args: argparse.Namespace) -> Path:
    """Loads the model and the data, fits a fresh re-scorer, saves; returns the folder."""
    import torch

    from unipercept.api import is_uninext
    from unipercept.engine.rescorer_fit import collect_examples, fit_rescorer
    from unipercept.evaluate.referring import referring_spec
    from unipercept.export.checkpoint import load_model
    from unipercept.modeling.pretrained import save_pretrained
    from unipercept.modeling.rescorer import ReferringRescorer

    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    spec = referring_spec(args.data, args.data_override)
    model = load_model(args.model)
    if is_uninext(model) or model.config is None:
        raise ValueError(
            f"{args.model}: a re-scorer needs a unipercept model folder with its config "
            "(UNINEXT models rank expressions their own way)"
        )
    torch.manual_seed(args.seed)
    model.rescorer = ReferringRescorer(
        hidden_dim=model.neck.hidden_dim, num_heads=int(model.config.get("num_heads", 8))
    )
    examples = collect_examples(model, spec.read(), mirror=not args.no_mirror, progress=True)
    report = fit_rescorer(model.rescorer, examples, steps=args.steps, seed=args.seed)
    logger.info(
        "%d training expressions; held-out P@0.5 %.3f -> %.3f (step %d of %d)",
        report.train_examples,
        report.held_out_before,
        report.held_out_after,
        report.best_step,
        args.steps,
    )
    config = {**model.config, "referring_rescorer": True}
    return save_pretrained(model, args.output, config=config)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = start(_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        written = fit(args)
    except (ValueError, OSError, ImportError) as error:
        logger.error("error: %s", error)
        return 2
    logger.info("wrote %s", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
