"""A training run's checkpoint as a model: which checkpoint a path means, the model it builds,
and the model folder it exports to.

A checkpoint (``unipercept.engine.checkpoint``) holds ``model.safetensors``,
``trainer_state.pt`` and ``config.yaml``, the run's resolved training config. Like a model
folder it is data, never code: the model is built from the config's ``model:`` section with
:func:`unipercept.config.build_allowed` and the builders a model folder may name
(:data:`unipercept.modeling.pretrained.MODEL_TARGETS`), the weights are read with
safetensors, and the trainer state with ``torch.load(weights_only=True)``. The rest of the
config (data, criterion, optimizer) is never built.

A path may be a training run (the folder holding ``checkpoints/``), its ``checkpoints/`` folder,
or one checkpoint folder. In the first two, ``checkpoints/best`` is taken when it exists,
otherwise the complete ``step_*`` checkpoint with the highest step.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from unipercept.config import UntrustedConfigError, build_allowed
from unipercept.engine.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    load_model_weights,
    weights_file,
)
from unipercept.modeling.pretrained import (
    DEFAULT_MODEL,
    META_FILE,
    MODEL_TARGETS,
    PretrainedError,
    bundled_models,
    check_destination,
    check_device,
    save_pretrained,
)
from unipercept.modeling.pretrained import load_model as load_pretrained

if TYPE_CHECKING:
    from unipercept.modeling.unipercept import UniPercept

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST = "best"
_CHECKPOINT_FILES = (MODEL_FILE, STATE_FILE, CONFIG_FILE)
_NOTHING_HERE = (
    f"not a model folder (no {META_FILE}) nor a training run's checkpoint: expected a training "
    f"run folder (holding {CHECKPOINTS_DIR}/), a {CHECKPOINTS_DIR}/ folder ({BEST}/ or step_*/) "
    f"or one checkpoint folder (holding {MODEL_FILE})"
)


class CheckpointSourceError(PretrainedError):
    """A path that holds no checkpoint a model can be built from: nothing there, a damaged
    checkpoint, or a config that may not be built (the message names the file and why)."""


def is_checkpoint_source(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether ``name_or_path`` is for :func:`model_from_checkpoint` rather than
    :func:`unipercept.modeling.pretrained.load_model`: a folder (or a checkpoint's file) that is
    not a bundled model's name and holds no ``unipercept.json``. The folder's content is not
    checked here; :func:`find_checkpoint` says what is wrong with it."""
    if isinstance(name_or_path, str) and name_or_path in bundled_models():
        return False
    path = Path(name_or_path)
    if path.is_file() and path.name in _CHECKPOINT_FILES:
        path = path.parent
    return path.is_dir() and not (path / META_FILE).is_file()


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder that ``path`` means.

    Args:
        path: a training run folder (holding ``checkpoints/``), a ``checkpoints/`` folder, one
            checkpoint folder, or a file in one.

    Returns:
        ``checkpoints/best`` when there is one, else the complete ``step_*`` checkpoint with the
        highest step (:func:`unipercept.engine.checkpoint.latest_checkpoint`); ``path`` itself
        when it is a checkpoint folder. Its files are not read here.

    Raises:
        CheckpointSourceError: no such path, no checkpoint there (a model folder is not one),
            or a ``best`` folder without weights.
    """
    path = Path(path)
    if not path.exists():
        if str(path) in bundled_models():
            raise CheckpointSourceError(
                f"{path}: a bundled model, not a training run; load it with load_model"
            )
        raise CheckpointSourceError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name not in _CHECKPOINT_FILES:
            raise CheckpointSourceError(f"{path}: a file; {_NOTHING_HERE}")
        path = path.parent
    if (path / META_FILE).is_file():
        raise CheckpointSourceError(
            f"{path}: a model folder ({META_FILE}), not a training run's checkpoint; load it "
            "with load_model"
        )
    if (path / MODEL_FILE).is_file():
        return path
    directory = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    best = directory / BEST
    if best.exists() or best.is_symlink():
        if not (best / MODEL_FILE).is_file():
            raise CheckpointSourceError(
                f"{best}: the run's best checkpoint holds no {MODEL_FILE} (damaged, or not "
                "written by unipercept); give one of its step_* folders instead"
            )
        return best
    latest = latest_checkpoint(directory)
    if latest is not None:
        return latest
    if directory != path or any(directory.glob("step_*")):
        raise CheckpointSourceError(
            f"{directory}: no complete checkpoint yet (a run saves one every "
            "trainer.checkpoint_every steps and at its end)"
        )
    raise CheckpointSourceError(f"{path}: {_NOTHING_HERE}")


def training_config(folder: Path) -> dict[str, Any]:
    """The resolved training config a checkpoint folder holds, as plain data.

    Raises:
        CheckpointSourceError: no ``config.yaml``, not readable YAML, or no ``model:`` section
            with a ``_target_``.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointSourceError(
            f"{folder}: no {CONFIG_FILE} (the run's resolved training config, which says what "
            "model the weights are for); build the model yourself and load the weights with "
            "unipercept.engine.checkpoint.load_model_weights"
        )
    try:
        # Plain YAML: no tags, no interpolation; the config is data, built from MODEL_TARGETS.
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointSourceError(f"{path}: not a readable YAML config ({reason})") from None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or "_target_" not in model:
        hint = ""
        if isinstance(config, dict) and "_target_" in config:
            hint = f" (this is a model's config: a model folder that lost its {META_FILE}?)"
        raise CheckpointSourceError(
            f"{path}: no model: section with a _target_; a checkpoint's {CONFIG_FILE} is the "
            f"run's resolved training config (model:, trainer:, stage:, ...){hint}"
        )
    return config


def preprocess_settings(config: Mapping[str, Any], source: str) -> dict[str, int]:
    """The inference resolution of a training config: the largest of ``trainer.short_sizes``
    (the scale multi-scale training ends at, as detectron2 and UNINEXT test) and
    ``trainer.max_size``; empty (the preprocessor's 800/1333) when the config has neither.

    Raises:
        CheckpointSourceError: a value that is not a positive integer (or a list of them).
    """
    trainer = config.get("trainer")
    trainer = trainer if isinstance(trainer, Mapping) else {}
    settings: dict[str, int] = {}
    sizes = trainer.get("short_sizes")
    if sizes is not None:
        if not isinstance(sizes, list) or not sizes or not all(_positive(s) for s in sizes):
            raise CheckpointSourceError(
                f"{source}: trainer.short_sizes must be a list of positive integers, got {sizes!r}"
            )
        settings["short_size"] = max(sizes)
    max_size = trainer.get("max_size")
    if max_size is not None:
        if not _positive(max_size):
            raise CheckpointSourceError(
                f"{source}: trainer.max_size must be a positive integer, got {max_size!r}"
            )
        settings["max_size"] = max_size
    return settings


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def checkpoint_step(folder: Path) -> int | None:
    """The training step a checkpoint was saved at (its trainer state, else its name).

    The trainer state is read with ``torch.load(weights_only=True, mmap=True)``: nothing is
    unpickled as code, and the optimizer's tensors are mapped, not read.

    Raises:
        CheckpointSourceError: no ``trainer_state.pt``, or one that cannot be read.
    """
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointSourceError(
            f"{folder}: no {STATE_FILE}; a complete checkpoint holds {', '.join(_CHECKPOINT_FILES)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else "the file ends before its data does"
        raise CheckpointSourceError(
            f"{path}: a damaged trainer state, not loadable with weights_only=True ({reason})"
        ) from None
    extra = state.get("extra") if isinstance(state, dict) else None
    step = extra.get("step") if isinstance(extra, dict) else None
    if _positive(step) or step == 0:
        return int(step)
    name = folder.name.removeprefix("step_")
    return int(name) if name.isdigit() else None


def run_folder(checkpoint: Path) -> Path:
    """The training run a checkpoint folder belongs to (the parent of ``checkpoints/``), or
    the folder holding it when it is not in a ``checkpoints/`` folder."""
    checkpoint = checkpoint.resolve()
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else parent


def model_from_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> UniPercept:
    """Builds the model of a training run's checkpoint, in eval mode.

    Args:
        path: a run folder, its ``checkpoints/`` folder or a checkpoint folder
            (:func:`find_checkpoint` picks the checkpoint).
        device: where the model goes (checked to exist before anything is loaded).

    Returns:
        The model with its weights; ``model.config`` is the config's ``model:`` section,
        ``model.preprocess_settings`` the training resolution (:func:`preprocess_settings`;
        a UNINEXT model's video resolution too),
        ``model.checkpoint_path`` the checkpoint folder and ``model.checkpoint_step`` its step
        (None when it records none).

    Raises:
        CheckpointSourceError: no checkpoint at ``path``, a damaged one (weights, trainer state
            or config unreadable), a config naming anything outside ``MODEL_TARGETS`` (nothing
            it names is called then), or weights that do not fit the model it builds.
        ValueError: a ``device`` this machine does not have.
    """
    if device is not None:
        device = check_device(device)
    folder = find_checkpoint(path)
    try:
        weights = weights_file(folder)  # a truncated or foreign file fails before any build
    except (CheckpointError, FileNotFoundError) as error:
        raise CheckpointSourceError(f"a damaged checkpoint: {error}") from None
    config = training_config(folder)
    config_path = folder / CONFIG_FILE
    preprocess = preprocess_settings(config, str(config_path))
    step = checkpoint_step(folder)
    try:
        # Built as a one-key mapping so that errors name the setting as the file spells it
        # (model.backbone._target_), not relative to the model section.
        model = build_allowed({"model": config["model"]}, MODEL_TARGETS, source=str(config_path))
        model = model["model"]
    except UntrustedConfigError as error:
        raise CheckpointSourceError(str(error)) from None
    try:
        missing, unexpected = load_model_weights(model, folder, strict=False)
    except CheckpointError as error:
        raise CheckpointSourceError(f"a damaged checkpoint: {error}") from None
    except RuntimeError as error:  # shapes that do not fit
        raise CheckpointSourceError(
            f"{weights}: does not fit the model its {CONFIG_FILE} builds ({_detail(error)})"
        ) from None
    if missing or unexpected:
        raise CheckpointSourceError(
            f"{weights}: does not fit the model its {CONFIG_FILE} builds: {len(missing)} "
            f"tensor(s) missing ({_some(missing)}), {len(unexpected)} unexpected "
            f"({_some(unexpected)})"
        )
    model.config = config["model"]
    from unipercept.modeling.uninext import Uninext

    if isinstance(model, Uninext) and "short_size" in preprocess:
        # A UNINEXT model also has a video resolution: the one it was trained and scored at.
        preprocess["video_size"] = preprocess["short_size"]
    model.preprocess_settings = preprocess
    model.checkpoint_path = folder
    model.checkpoint_step = step
    if device is not None:
        model.to(device)
    return model.eval()


def export_checkpoint(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    short_size: int | None = None,
    max_size: int | None = None,
    description: str | None = None,
) -> Path:
    """Writes a training run's checkpoint as a model folder (``save_pretrained``), which
    :func:`unipercept.load_model`, ``predict --checkpoint`` and ``evaluate --model`` take.

    Args:
        path: a run folder, its ``checkpoints/`` folder or a checkpoint folder.
        out: the folder to write: new, empty, or an earlier save (only its own files are
            replaced); written atomically.
        short_size, max_size: the inference resolution to record; default the training
            config's (:func:`preprocess_settings`).
        description: kept in ``unipercept.json``; default names the run, checkpoint and step.

    Returns:
        The folder written.

    Raises:
        FileExistsError: ``out`` is a file, or a folder holding what ``save_pretrained`` did not
            write (checked before anything is loaded).
        CheckpointSourceError: as :func:`model_from_checkpoint`.
        ValueError: a non-positive size.
    """
    out = Path(out)
    check_destination(out)
    for name, value in (("short_size", short_size), ("max_size", max_size)):
        if value is not None and not _positive(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model = model_from_checkpoint(path)
    settings = dict(model.preprocess_settings)
    if short_size is not None:
        settings["short_size"] = short_size
    if max_size is not None:
        settings["max_size"] = max_size
    if description is None:
        description = _description(model.checkpoint_path, model.checkpoint_step)
    return save_pretrained(
        model, out, config=model.config, preprocess=settings, description=description
    )


def _description(folder: Path, step: int | None) -> str:
    """Names the run, the checkpoint and its step, and for ``best`` the score that made it
    the best (``best.json``, when it is about this step)."""
    from unipercept.engine.best import read_best

    details = [f"checkpoint {folder.name}"]
    if step is not None:
        details.append(f"step {step}")
    record = read_best(folder.parent) if folder.name == BEST else None
    if record is not None and record.get("step") == step:
        metric, value = record.get("metric"), record.get("value")
        if isinstance(metric, str) and isinstance(value, int | float):
            details.append(f"{metric} {value:.4g}")
    return f"exported from training run {run_folder(folder)} ({', '.join(details)})"


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
) -> UniPercept:
    """A model in eval mode from anything a user may point at: a bundled model's name, a
    ``save_pretrained`` folder, a UNINEXT ``.pth``
    (:func:`unipercept.modeling.pretrained.load_model`), or a training run, its
    ``checkpoints/`` folder or one checkpoint folder (:func:`model_from_checkpoint`).

    Raises:
        PretrainedError: nothing loadable there (a :class:`CheckpointSourceError` for a run or
            checkpoint), with the file and the reason.
        ValueError: a ``device`` this machine does not have.
    """
    if is_checkpoint_source(name_or_path):
        return model_from_checkpoint(name_or_path, device=device)
    return load_pretrained(name_or_path, device=device)


def _detail(error: Exception) -> str:
    from unipercept.engine.checkpoint import load_error_line

    return load_error_line(error)


def _some(names: list[str], limit: int = 3) -> str:
    from unipercept.engine.checkpoint import some_names

    return some_names(names, limit)
