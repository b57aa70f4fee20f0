"""Checks the command-line entry points make before anything else."""

from __future__ import annotations

import sys
from pathlib import Path


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
