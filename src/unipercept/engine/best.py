"""The best checkpoint of a run: ``<checkpoints>/best``, kept beside the ``step_*`` ones.

A run that evaluates itself (a fine-tune scoring its held-out data) keeps the checkpoint with
the highest score in ``best/``: a checkpoint folder as :func:`save_checkpoint` writes one
(``model.safetensors``, ``trainer_state.pt`` without optimizer state, ``config.yaml``), whose
trainer state records the step and the score. ``best.json`` beside it says the same for people
and tools (``{"step", "metric", "value", "initial"}``; ``initial`` is the starting model's
score). ``keep_last`` rotates only ``step_*`` folders, so ``best/`` is never pruned, and
``python -m unipercept.export RUN`` takes it before the newest step.

Both are replaced atomically: the new folder is written completely under a temporary name and
renamed into place (the old one moved aside first, so readers see the old or the new, never a
mix), then ``best.json`` is written the same way. A ``best`` that this library did not write
(a user's file, a folder with other files) is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from unipercept.data.io import replace_folder, write_text_atomic
from unipercept.engine.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    check_replaceable,
    save_checkpoint,
)

BEST_DIR = "best"
BEST_FILE = "best.json"
_OWN_FILES = frozenset({MODEL_FILE, STATE_FILE, CONFIG_FILE})


@dataclass(frozen=True)
class BestScore:
    """The best evaluation of a run so far.

    Attributes:
        step: the training step evaluated.
        metric: what was measured (e.g. ``"segm_ap"``); higher is better.
        value: the score.
    """

    step: int
    metric: str
    value: float

    @classmethod
    def from_dict(cls, data: Any) -> BestScore:
        """The score a checkpoint's trainer state recorded.

        Raises:
            ValueError: ``data`` is not ``{"step": int, "metric": str, "value": float}``.
        """
        if not (
            isinstance(data, Mapping)
            and isinstance(data.get("step"), int)
            and isinstance(data.get("metric"), str)
            and isinstance(data.get("value"), int | float)
        ):
            raise ValueError(f"a best score is {{step, metric, value}}, got {data!r}")
        return cls(int(data["step"]), str(data["metric"]), float(data["value"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_best(
    directory: str | os.PathLike[str],
    score: BestScore,
    *,
    model: nn.Module,
    extra: Mapping[str, Any],
    config_text: str | None = None,
    initial: float | None = None,
) -> Path:
    """Writes ``model`` as ``<directory>/best`` and its score as ``<directory>/best.json``.

    Args:
        directory: the run's checkpoints folder (created when missing).
        score: the evaluation that made this the best checkpoint.
        model: the model, saved to ``model.safetensors``.
        extra: trainer state to record (plain data; ``save_checkpoint``'s rules).
        config_text: the resolved training config, written to ``config.yaml``.
        initial: the starting model's score, recorded in ``best.json`` for comparison.

    Returns:
        The ``best`` folder.

    Raises:
        FileExistsError: something unipercept did not write holds ``<directory>/best``; it is
            left as it is and nothing is written.
    """
    directory = Path(directory)
    target = directory / BEST_DIR
    check_replaceable(target)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BEST_DIR}.", suffix=".tmp", dir=directory))
    try:
        written = save_checkpoint(
            staging, score.step, model=model, extra=extra, config_text=config_text, keep_last=None
        )
        replace_folder(written, target, owned=_own_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # made by mkdtemp above: ours
    record = {**score.to_dict(), "initial": initial}
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    write_text_atomic(directory / BEST_FILE, text)
    return target


def read_best(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``best.json`` of a checkpoints folder, or None when there is none or it is unreadable."""
    path = Path(directory) / BEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_better(value: float, best: BestScore | None) -> bool:
    """Whether ``value`` beats ``best`` (any finite value beats none; ties keep the earlier)."""
    return math.isfinite(value) and (best is None or value > best.value)


def _own_file(entry: Path) -> bool:
    return entry.name in _OWN_FILES and entry.is_file() and not entry.is_symlink()
