"""Atomic training checkpoints that never unpickle code.

A checkpoint is a folder ``<directory>/step_<8-digit step>/`` holding ``model.safetensors``,
``trainer_state.pt`` (optimizer, scheduler and caller state as plain data and tensors, loaded
with ``torch.load(weights_only=True)``) and optionally ``config.yaml``. Only one process (the
main rank) may save into a directory: a save removes the leftover ``step_<step>.tmp-<pid>``
folders of earlier saves there.

The writer only ever deletes what it wrote: a folder with its own name (``step_<8 digits>`` or
its tmp names) holding nothing but its own files. Anything else in the directory, a user's file
or folder, is left alone; one that sits where a checkpoint must go is an error, never replaced.
A checkpoint that cannot be read is renamed ``step_<step>.damaged`` when a resume falls back to
an older one, so the user keeps it and later saves and rotations never take it for a checkpoint.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from unipercept.data.io import default_permissions

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
_OWN_FILES = frozenset({MODEL_FILE, STATE_FILE, CONFIG_FILE})
_STEP_DIR = re.compile(r"step_(\d{8,})")
_TMP_MARK = ".tmp-"
# The tmp names save_checkpoint gives: a folder being written, and an old one moved aside.
_TMP_DIR = re.compile(r"step_\d{8,}\.tmp-\d+(?:-old)?")
_DAMAGED_MARK = ".damaged"
# Leaf types that ``torch.load(weights_only=True)`` accepts. Exact types, not isinstance: numpy
# scalars subclass ``float``/``int`` yet are refused by the weights-only unpickler.
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated (a full disk, a copy cut short), not
    safetensors, or a trainer state that ``torch.load(weights_only=True)`` refuses.

    Unlike a checkpoint that reads but does not fit the model (``RuntimeError``), this is damage
    to the checkpoint itself, so a resume may fall back to an older one.
    """


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    extra: Mapping[str, Any] | None = None,
    config_text: str | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Write a checkpoint atomically: a crash at any point leaves earlier checkpoints intact.

    Args:
        directory: Folder of the ``step_*`` checkpoints; created when missing.
        step: Training step; an existing folder for it is replaced once the new one is complete.
        model: Model saved to ``model.safetensors`` (tensors shared by modules stored once).
        optimizer: Optimizer to save, if any.
        scheduler: Learning-rate scheduler to save, if any.
        extra: Caller state (sampler, counters, :func:`capture_rng_state`): plain data, tensors.
        config_text: Resolved training config, written verbatim to ``config.yaml``.
        keep_last: How many checkpoints with the highest steps to keep (always including the
            one just written); ``None`` keeps all.

    Returns:
        The folder of the new checkpoint.

    Raises:
        ValueError: A negative step, ``keep_last < 1``, or state that a ``weights_only`` load
            would refuse (the message names its key).
        FileExistsError: Something that :func:`save_checkpoint` did not write (a file, a
            folder without the checkpoint files or with other files in it) holds the path of
            this step's checkpoint; it is left as it is.
    """
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 or None, got {keep_last}")
    state = {
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": dict(extra or {}),
    }
    # Checked before writing so that a bad entry fails here, naming its key, instead of making
    # an unloadable checkpoint.
    _check_plain(state, "trainer_state")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = directory / f"{final.name}{_TMP_MARK}{os.getpid()}"
    # Checked before anything is written: a user's file or folder is never replaced.
    check_replaceable(final)
    _remove_own(tmp)
    try:
        tmp.mkdir()
        save_model(model, str(tmp / MODEL_FILE))
        default_permissions(tmp / MODEL_FILE)  # safetensors writes it owner-only
        with open(tmp / STATE_FILE, "wb") as file:
            torch.save(state, file)
        if config_text is not None:
            (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        # Data reaches the disk before the rename publishes it, so a power loss cannot leave a
        # complete-looking folder of empty files.
        for written in (*tmp.iterdir(), tmp):
            _fsync(written)
        # A directory can only be renamed onto an empty one, so an old folder for this step
        # moves aside (to a tmp name, never taken for a checkpoint) and is deleted below.
        if final.exists():
            _move_aside(final)
        os.replace(tmp, final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    for leftover in list(directory.iterdir()):
        if _TMP_DIR.fullmatch(leftover.name):
            _remove_own(leftover, strict=False)
    if keep_last is not None:
        older = [path for path in _complete_checkpoints(directory) if path != final]
        for path in older[: max(0, len(older) - (keep_last - 1))]:
            if (problem := _not_a_checkpoint(path)) is not None:
                logger.warning("keep_last: kept %s, which %s", path, problem)
                continue
            # Renamed first, so a crash mid-deletion never leaves a half-deleted checkpoint.
            shutil.rmtree(_move_aside(path), ignore_errors=True)
    return final


def check_replaceable(path: Path) -> None:
    """Check that a save may write the checkpoint folder ``path``: it is absent or is a
    checkpoint that :func:`save_checkpoint` wrote (which the save replaces).

    Args:
        path: A ``<directory>/step_<step>`` folder.

    Raises:
        FileExistsError: ``path`` is something else (a file, a link, a folder without the
            checkpoint files or with other files in it); the message says what.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and (problem := _not_a_checkpoint(path)) is not None:
        raise FileExistsError(
            f"{path} {problem}, so it is not a checkpoint that unipercept wrote; it is not "
            "replaced: move it away or choose another output folder"
        )


def latest_checkpoint(directory: Path) -> Path | None:
    """Find the complete checkpoint with the highest step.

    Args:
        directory: Folder of the ``step_*`` checkpoints (need not exist).

    Returns:
        The folder, or ``None``; tmp folders, damaged ones set aside by
        :func:`load_newest_checkpoint` and those lacking ``model.safetensors`` don't count.
    """
    checkpoints = _complete_checkpoints(Path(directory))
    return checkpoints[-1] if checkpoints else None


def load_newest_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    strict: bool = True,
) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest checkpoint of ``directory`` that can be read, as a resume does.

    A newer checkpoint whose files cannot be read (:class:`CheckpointError`, or a missing
    ``trainer_state.pt``) is skipped with a warning naming it and why, then renamed
    ``step_<step>.damaged`` once an older one has loaded: the user keeps it, and neither the
    next save of that step nor the ``keep_last`` rotation takes it for a checkpoint. Nothing is
    renamed when no checkpoint loads.

    Args:
        directory: Folder of the ``step_*`` checkpoints (need not exist).
        model: Model receiving the weights.
        optimizer: Optimizer to restore, if any.
        scheduler: Scheduler to restore, if any.
        strict: Whether missing or unexpected weights are an error.

    Returns:
        The folder restored and the ``extra`` mapping given to :func:`save_checkpoint`, or
        ``None`` when ``directory`` holds no checkpoint.

    Raises:
        CheckpointError: There are checkpoints but none can be read (each named, with why).
        RuntimeError, ValueError: As :func:`load_checkpoint`, for a checkpoint that reads but
            does not fit (the model changed): older ones would not fit either.
    """
    checkpoints = _complete_checkpoints(Path(directory))
    damaged: list[tuple[Path, str]] = []
    for path in reversed(checkpoints):
        try:
            extra = load_checkpoint(
                path, model=model, optimizer=optimizer, scheduler=scheduler, strict=strict
            )
        except (CheckpointError, FileNotFoundError) as error:
            logger.warning("checkpoint %s cannot be read, trying an older one: %s", path, error)
            damaged.append((path, str(error)))
            continue
        for bad, _ in damaged:
            logger.warning("resumed from %s; kept the damaged %s as %s", path, bad, _set_aside(bad))
        return path, extra
    if damaged:
        reasons = "; ".join(f"{path.name}: {reason}" for path, reason in damaged)
        raise CheckpointError(
            f"no checkpoint in {directory} can be read ({reasons}); move them away to start over"
        )
    return None


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`.

    Move the model to its device before building the optimizer and calling this: the optimizer
    casts its restored state to the device of each parameter.

    Args:
        path: The checkpoint folder.
        model: Model receiving the weights.
        optimizer: Optimizer to restore, if any.
        scheduler: Scheduler to restore, if any.
        strict: Whether missing or unexpected weights are an error.

    Returns:
        The ``extra`` mapping given to :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: The folder or its ``trainer_state.pt`` is missing.
        CheckpointError: No ``model.safetensors``, or a file that cannot be read (truncated,
            not safetensors, a trainer state that ``weights_only=True`` cannot load).
        ValueError: A trainer state lacking the optimizer/scheduler state asked for.
        RuntimeError: Weights that do not fit the model (with ``strict``).
    """
    path = Path(path)
    state_path = path / STATE_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {path}")
    if not state_path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {path}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        # A truncated file fails in the zip reader, an empty one with EOFError.
        reason = _first_line(error) or "the file ends before the data does"
        raise CheckpointError(
            f"cannot load {state_path} with weights_only=True: {reason}"
        ) from error
    if not isinstance(state, dict) or "extra" not in state:
        raise CheckpointError(f"{state_path} is not a trainer state written by save_checkpoint")
    # The trainer state is read first so that a bad file fails before the model is modified.
    load_model_weights(model, path, strict=strict)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        if state.get(name) is None:
            raise ValueError(f"checkpoint {path} holds no {name} state")
        target.load_state_dict(state[name])
    return state["extra"]


def load_model_weights(
    model: nn.Module, path: Path, *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load weights from a checkpoint folder or a ``.safetensors`` file.

    ``safetensors.torch.load_model`` checks no shapes itself: it calls ``model.load_state_dict``,
    so ``_load_from_state_dict`` overrides can adapt older weights, and it accepts the names of
    shared tensors that ``save_model`` stored once.

    Args:
        model: Model receiving the weights.
        path: A checkpoint folder or a safetensors file.
        strict: Whether missing or unexpected weights raise ``RuntimeError``.

    Returns:
        The missing and unexpected parameter names, sorted.

    Raises:
        FileNotFoundError: The path does not exist.
        CheckpointError: A folder without ``model.safetensors``, or a file that is not
            safetensors or is truncated.
        RuntimeError: Weights that do not fit the model (with ``strict``).
    """
    file = weights_file(path, check=False)
    try:
        missing, unexpected = load_model(model, file, strict=strict)
    except safetensors.SafetensorError as error:
        # The header is checked against the file size before any tensor reaches the model.
        raise CheckpointError(f"cannot read safetensors file {file}: {error}") from error
    return sorted(missing), sorted(unexpected)


def weights_file(path: Path, *, check: bool = True) -> Path:
    """The safetensors file of a checkpoint folder, or ``path`` itself if it is a file.

    Args:
        path: A checkpoint folder or a safetensors file.
        check: Read the file's header and check the file is as long as the header says (a
            truncated copy is caught without reading the weights).

    Returns:
        The file.

    Raises:
        FileNotFoundError: The path does not exist.
        CheckpointError: A folder without ``model.safetensors``, or (``check``) a file that is
            not safetensors or is truncated.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or weights file at {path}")
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"checkpoint folder {path} holds no {MODEL_FILE}")
    if check:
        try:
            with safetensors.safe_open(str(file), framework="pt"):
                pass
        except safetensors.SafetensorError as error:
            raise CheckpointError(f"cannot read safetensors file {file}: {error}") from error
    return file


def _complete_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders in ``directory``, sorted by increasing step."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and (path / MODEL_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _move_aside(path: Path) -> Path:
    """Atomically rename a folder to a tmp name, which the next save cleans up."""
    aside = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}-old")
    _remove_own(aside)
    os.replace(path, aside)
    return aside


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (``.damaged-<n>`` if taken)."""
    target = path.with_name(f"{path.name}{_DAMAGED_MARK}")
    number = 1
    while target.exists() or target.is_symlink():
        target = path.with_name(f"{path.name}{_DAMAGED_MARK}-{number}")
        number += 1
    os.replace(path, target)
    return target


def load_error_line(error: Exception) -> str:
    """One line of an error from loading weights: load_state_dict's first line only says
    "Error(s) in loading state_dict", its second names the tensor."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]


def some_names(names: list[str], limit: int = 3) -> str:
    """Up to ``limit`` names, and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's zip reader appends a paragraph)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def _foreign(path: Path) -> str | None:
    """What makes ``path`` something :func:`save_checkpoint` did not write (a file, a link, a
    folder holding anything but its files), or ``None`` for one of its folders."""
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is a file" if path.exists() else "does not exist"
    others = sorted(
        entry.name
        for entry in path.iterdir()
        if entry.name not in _OWN_FILES or entry.is_symlink() or not entry.is_file()
    )
    if others:
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"holds files that a checkpoint does not ({listed})"
    return None


def _not_a_checkpoint(path: Path) -> str | None:
    """Like :func:`_foreign`, and also a folder lacking the files every checkpoint has."""
    if (problem := _foreign(path)) is not None:
        return problem
    missing = [name for name in (MODEL_FILE, STATE_FILE) if not (path / name).is_file()]
    return f"is a folder without {' and '.join(missing)}" if missing else None


def _remove_own(path: Path, *, strict: bool = True) -> None:
    """Delete a tmp folder of :func:`save_checkpoint`'s, if there is one at ``path``.

    Anything else there is an error (``strict``; the name is this save's own) or is kept with
    a warning (a leftover that only looks like one of ours).
    """
    if not (path.exists() or path.is_symlink()):
        return
    problem = _foreign(path)
    if problem is None:
        shutil.rmtree(path, ignore_errors=True)
    elif strict:
        raise FileExistsError(
            f"{path} {problem}, so unipercept did not write it; it is not deleted: move it away"
        )
    else:
        logger.warning("kept %s, which looks like a leftover checkpoint but %s", path, problem)


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry list to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _check_plain(value: Any, key: str) -> None:
    """Raise ``ValueError`` naming ``key`` if ``value`` holds what weights-only loads refuse."""
    if type(value) in (dict, OrderedDict):
        for name, item in value.items():
            _check_plain(name, f"{key} (a key)")
            _check_plain(item, f"{key}.{name}")
    elif type(value) in (list, tuple, set) or isinstance(value, torch.Size):
        for index, item in enumerate(value):
            _check_plain(item, f"{key}[{index}]")
    elif not (isinstance(value, torch.Tensor) or type(value) in _PLAIN_LEAVES):
        raise ValueError(
            f"{key} is a {type(value).__module__}.{type(value).__qualname__}, which "
            "torch.load(weights_only=True) refuses; store plain data or tensors instead"
        )
