"""Atomic training checkpoints that never unpickle code.

A checkpoint is a folder ``<directory>/step_<8-digit step>/`` holding ``model.safetensors``,
``trainer_state.pt`` (optimizer, scheduler and caller state as plain data and tensors, loaded
with ``torch.load(weights_only=True)``) and optionally ``config.yaml``. Only one process (the
main rank) may save into a directory: a save removes every leftover ``*.tmp-*`` folder there.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from unipercept.data.io import default_permissions

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
_STEP_DIR = re.compile(r"step_(\d{8,})")
_TMP_MARK = ".tmp-"
# Leaf types that ``torch.load(weights_only=True)`` accepts. Exact types, not isinstance: numpy
# scalars subclass ``float``/``int`` yet are refused by the weights-only unpickler.
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


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
    if tmp.exists():
        shutil.rmtree(tmp)
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

    for leftover in directory.glob(f"step_*{_TMP_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is not None:
        older = [path for path in _complete_checkpoints(directory) if path != final]
        for path in older[: max(0, len(older) - (keep_last - 1))]:
            # Renamed first, so a crash mid-deletion never leaves a half-deleted checkpoint.
            shutil.rmtree(_move_aside(path), ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """Find the complete checkpoint with the highest step.

    Args:
        directory: Folder of the ``step_*`` checkpoints (need not exist).

    Returns:
        The folder, or ``None``; tmp folders and those lacking ``model.safetensors`` don't count.
    """
    checkpoints = _complete_checkpoints(Path(directory))
    return checkpoints[-1] if checkpoints else None


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
        ValueError: No ``model.safetensors``, a trainer state that ``weights_only=True`` cannot
            load, or one lacking the optimizer/scheduler state asked for.
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
        raise ValueError(f"cannot load {state_path} with weights_only=True: {error}") from error
    if not isinstance(state, dict) or "extra" not in state:
        raise ValueError(f"{state_path} is not a trainer state written by save_checkpoint")
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
        ValueError: A folder without ``model.safetensors``, or a file that is not safetensors.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or weights file at {path}")
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"checkpoint folder {path} holds no {MODEL_FILE}")
    try:
        missing, unexpected = load_model(model, file, strict=strict)
    except safetensors.SafetensorError as error:
        raise ValueError(f"cannot read safetensors file {file}: {error}") from error
    return sorted(missing), sorted(unexpected)


def capture_rng_state() -> dict[str, Any]:
    """Capture this process's random generators as ``weights_only``-loadable data.

    Returns:
        The states of python ``random``, numpy's global generator, torch's CPU generator and
        each CUDA device's generator (when CUDA is available).
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # The key array becomes a list of ints: numpy arrays are refused by weights_only loads.
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators captured by :func:`capture_rng_state`.

    CUDA states are skipped without CUDA, and only as many devices as exist now are restored,
    so a run can resume on a different machine.

    Args:
        state: A mapping returned by :func:`capture_rng_state` (possibly saved and reloaded).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


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
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(path, aside)
    return aside


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
