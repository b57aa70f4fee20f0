"""What the command-line entry points do before anything else: parse the arguments with usage
errors as one line, check that ``unipercept`` is this package, limit OpenMP's spinning before
torch loads, and set malloc up to keep freed memory for reuse (:mod:`unipercept.allocator`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a usage error as one logged line (``error: ...``, exit
    code 2) instead of argparse's usage block.

    Args:
        logger: where the line goes.
        **kwargs: as ``argparse.ArgumentParser``.
    """

    def __init__(self, *, logger: logging.Logger, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logger = logger

    def error(self, message: str) -> None:  # type: ignore[override]
        self.logger.error("error: %s (see --help)", message)
        raise SystemExit(2)


def start(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parses ``argv`` and prepares the process for the command's work.

    Returns:
        The arguments, or the exit code to return at once: 0 after ``--help``, 2 after a usage
        error, when a folder hides the package, or for a bad ``UNIPERCEPT_MALLOC`` (all
        reported).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, reported by the parser)
        return int(exit_.code or 0)
    logger = getattr(parser, "logger", logging.getLogger("unipercept"))
    if (problem := shadowed_package()) is not None:
        logger.error("error: %s", problem)
        return 2
    from unipercept.allocator import configure_malloc
    from unipercept.threads import limit_spinning

    limit_spinning()  # before torch loads
    try:
        configure_malloc()  # before the work allocates (see unipercept.allocator)
    except ValueError as error:
        logger.error("error: %s", error)
        return 2
    return args


def shadowed_package() -> str | None:
    """Why ``import unipercept`` gives another folder than this package, or None.

    A folder named ``unipercept`` in the current directory (an output folder, a checkout's
    parent) comes first on ``sys.path``; with an editable install, Python then takes it for the
    top-level package while the submodules still load from here, and the first use of
    ``unipercept.__version__`` fails with a puzzling ImportError. Entry points say so instead.
    """
    package = sys.modules.get("unipercept")
    here = Path(__file__).resolve().parent
    paths = [Path(p).resolve() for p in getattr(package, "__path__", [])]
    if package is None or here in paths:
        return None
    where = ", ".join(str(p) for p in paths) or "another module"
    return (
        f"the folder {where} hides the installed unipercept package (Python looks in the "
        "current directory first); run from another directory or rename that folder"
    )
