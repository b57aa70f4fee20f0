"""Pretrained models as folders: ``save_pretrained`` / ``from_pretrained`` / ``load_model``.

A pretrained folder holds

- ``config.yaml``: the model's resolved config (what ``conf/model/*`` composes to), built again
  with :func:`unipercept.config.build_allowed`: a folder is data, so its config may name only
  the builders in :data:`MODEL_TARGETS`, never an arbitrary ``_target_``;
- ``model.safetensors``: the weights (never a pickle);
- ``unipercept.json``: the format version, the SHA-256 of ``model.safetensors``, the inference
  resolution, a description, tensors stored once for several names, and the tensors left out
  because building the config gives them already (pretrained weights the offline packages
  install, e.g. a frozen text encoder), each with the SHA-256 of its bytes. Both checksums
  are verified when loading.

``save_pretrained`` writes a new folder, an empty one, or over an earlier save (replacing only
its own three files); it refuses a file path or a folder holding anything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unipercept import __version__
from unipercept.config import AllowedTarget, UntrustedConfigError, build_allowed
from unipercept.data.io import default_permissions

if TYPE_CHECKING:
    from unipercept.modeling.unipercept import UniPercept

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "unipercept.json"
# 2 records the weights file's SHA-256; folders of version 1 still load (unchecked, with a warning).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_MODEL = "unipercept-tiny"
OWN_FILES = (WEIGHTS_FILE, CONFIG_FILE, META_FILE)
# The inference resolution a folder records: images' shortest and longest edge, and (UNINEXT
# models) video frames' shortest edge.
PREPROCESS_KEYS = frozenset({"short_size", "max_size", "video_size"})

logger = logging.getLogger(__name__)

_RESNET_CONFIG = frozenset(
    {
        "num_channels",
        "embedding_size",
        "hidden_sizes",
        "depths",
        "layer_type",
        "hidden_act",
        "downsample_in_first_stage",
        "downsample_in_bottleneck",
        "out_features",
        "out_indices",
    }
)
# What a model folder's config.yaml may build: the project's model builders and backbones, and
# the two transformers calls its ResNet config uses, with their arguments spelled out.
MODEL_TARGETS = (
    AllowedTarget("unipercept.modeling", "build_unipercept"),
    AllowedTarget("unipercept.modeling", "build_deformable_detr"),
    AllowedTarget("unipercept.modeling.uninext", "build_uninext"),
    AllowedTarget("unipercept.modeling.backbone", "MobileNetV2"),
    AllowedTarget("unipercept.modeling.backbone", "MobileNetV2.from_torchvision_checkpoint"),
    AllowedTarget("unipercept.modeling.backbone", "HFBackbone"),
    AllowedTarget("unipercept.modeling.prompt", "TextEncoder.from_pretrained"),
    AllowedTarget("transformers", "AutoBackbone.from_config", frozenset({"config"})),
    AllowedTarget("transformers", "ResNetConfig", _RESNET_CONFIG),
)


class PretrainedError(ValueError):
    """A pretrained folder that cannot be loaded (the message names the file and the problem)."""


def bundled_models() -> dict[str, Path]:
    """The models that ship inside the package: name -> folder."""
    assets = Path(__file__).resolve().parent.parent / "assets"
    return {
        path.name: path
        for path in sorted(assets.iterdir())
        if path.is_dir() and (path / META_FILE).is_file()
    }


def resolve_pretrained(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a bundled model's name or of a path.

    Raises:
        PretrainedError: neither a bundled name nor a folder with ``unipercept.json``.
    """
    bundled = bundled_models()
    if isinstance(name_or_path, str) and name_or_path in bundled:
        return bundled[name_or_path]
    path = Path(name_or_path)
    if path.is_file() and path.name in (META_FILE, WEIGHTS_FILE, CONFIG_FILE):
        path = path.parent
    if not path.is_dir():
        raise PretrainedError(
            f"{name_or_path}: not a bundled model ({', '.join(bundled) or 'none installed'}) "
            "nor a folder"
        )
    for required in (META_FILE, CONFIG_FILE, WEIGHTS_FILE):
        if not (path / required).is_file():
            raise PretrainedError(
                f"{path}: no {required}; a pretrained folder holds {CONFIG_FILE}, "
                f"{WEIGHTS_FILE} and {META_FILE} (written by save_pretrained)"
            )
    return path


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    flat = tensor.detach().to("cpu").contiguous().view(-1)
    digest = hashlib.sha256(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _build(config: Mapping[str, Any], source: str) -> UniPercept:
    try:
        return build_allowed(config, MODEL_TARGETS, source=source)
    except UntrustedConfigError as error:
        raise PretrainedError(str(error)) from None


def _config_container(config: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        container = OmegaConf.to_container(config, resolve=True)
    elif isinstance(config, Mapping):
        container = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
    else:
        raise TypeError(f"config must be a DictConfig or a mapping, got {type(config).__name__}")
    if "_target_" not in container:
        raise ValueError("config has no _target_: give the model's config (conf/model/...)")
    return container


def save_pretrained(
    model: UniPercept,
    folder: str | os.PathLike[str],
    *,
    config: Any | None = None,
    preprocess: Mapping[str, int] | None = None,
    description: str = "",
    exclude_pretrained: bool = True,
) -> Path:
    """Writes ``model`` as a pretrained folder.

    A new folder appears atomically, complete. Into an empty folder or an earlier save, the
    three files are written completely and then renamed over the old ones; other files there
    (a README) stay. Anything else is refused: nothing the library did not write is replaced.

    Args:
        model: the model.
        config: its config (``conf/model/...`` composed); default ``model.config``, which
            :func:`from_pretrained` sets.
        preprocess: the inference resolution, ``{"short_size": ..., "max_size": ...}``;
            default ``model.preprocess_settings`` or the preprocessor's defaults.
        description: free text kept in ``unipercept.json``.
        exclude_pretrained: leave out tensors that building ``config`` gives bit for bit
            (installed pretrained weights that training left alone: a frozen text encoder,
            an unused classifier); they are rebuilt, and checked against their SHA-256, when
            loading.

    Returns:
        The folder.

    Raises:
        FileExistsError: ``folder`` is a file, or a non-empty folder that is not an earlier
            save (checked before any work).
        PretrainedError: the config names something a model folder may not build.
    """
    from omegaconf import OmegaConf

    check_destination(Path(folder))
    config = config if config is not None else getattr(model, "config", None)
    if config is None:
        raise ValueError(
            "save_pretrained needs the model's config: pass config= (conf/model/... composed)"
        )
    container = _config_container(config)
    settings = dict(preprocess or getattr(model, "preprocess_settings", None) or {})
    unknown = set(settings) - PREPROCESS_KEYS
    if unknown:
        raise ValueError(
            f"preprocess takes {', '.join(sorted(PREPROCESS_KEYS))}, got {sorted(unknown)}"
        )
    tasks = plain_task_settings(getattr(model, "task_settings", None) or {}, "task_settings")
    state = model.state_dict()  # the model's own tensors: shared ones keep one data_ptr

    excluded: dict[str, str] = {}
    if exclude_pretrained:
        # Built under a fresh random seed, so randomly initialised tensors never match; tensors
        # filled with one value (norm weights, zero biases) are stored: the init code makes
        # them, not an installed package.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(os.urandom(7), "little"))
            fresh = _build(container, "the model's config").state_dict()
        for name, tensor in state.items():
            built = fresh.get(name)
            if (
                built is not None
                and tensor.numel() > 1
                and built.shape == tensor.shape
                and built.dtype == tensor.dtype
                and torch.equal(built, tensor.cpu())
                and not torch.equal(tensor.min(), tensor.max())
            ):
                excluded[name] = tensor_digest(tensor)

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        if name in excluded:
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in by_storage:
            aliases[name] = by_storage[key]
            continue
        by_storage[key] = name
        stored[name] = tensor.detach().cpu().contiguous().clone()

    meta = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "description": description,
        "preprocess": settings,
        "tasks": tasks,
        "aliases": aliases,
        "excluded": excluded,
    }

    folder = Path(folder)
    check_destination(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save_file(stored, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        default_permissions(staging / WEIGHTS_FILE)  # safetensors writes it owner-only
        meta["weights_sha256"] = file_digest(staging / WEIGHTS_FILE)
        (staging / CONFIG_FILE).write_text(OmegaConf.to_yaml(container), encoding="utf-8")
        (staging / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        default_permissions(staging)  # mkdtemp makes it owner-only
        if folder.is_dir():
            # An earlier save or an empty folder: only our files are replaced (the metadata
            # last), anything else a user keeps there stays. Interrupted between two renames,
            # the folder fails the weights checksum instead of loading mixed files.
            for name in OWN_FILES:
                os.replace(staging / name, folder / name)
            staging.rmdir()
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def plain_task_settings(settings: object, source: str) -> dict[str, dict[str, Any]]:
    """A copy of a model's task settings, checked to be plain data: task names mapped to
    options of numbers, strings and booleans, or one level deeper (a ``tracker`` entry). What
    the options mean is checked where the tasks are (``unipercept.tasks.settings``).

    Raises:
        PretrainedError: anything else, naming ``source``.
    """

    def plain(value: object, where: str, depth: int) -> Any:
        if isinstance(value, bool | int | float | str):
            return value
        if depth and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return {k: plain(v, f"{where}.{k}", depth - 1) for k, v in value.items()}
        raise PretrainedError(f"{source}: {where} must be plain data, got {value!r}")

    if not isinstance(settings, Mapping):
        raise PretrainedError(f"{source}: tasks must map task names to options, got {settings!r}")
    return {str(task): plain(entry, f"tasks.{task}", 2) for task, entry in settings.items()}


def check_destination(folder: Path) -> None:
    """Refuses a destination whose content save_pretrained did not write."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; save_pretrained writes a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / META_FILE).is_file():
        raise FileExistsError(
            f"{folder} is not empty and holds no earlier save ({META_FILE}); save_pretrained "
            "replaces only its own files: choose a new or empty folder"
        )
    try:
        _read_meta(folder)
    except PretrainedError as error:
        raise FileExistsError(
            f"{folder} is not empty and its {META_FILE} is not one save_pretrained wrote "
            f"({error}); choose a new or empty folder"
        ) from None


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"{path}: not readable JSON ({error})") from error
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in READABLE_VERSIONS:
        raise PretrainedError(
            f"{path}: format_version {version}, this library reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return meta


def _check_weights_file(folder: Path, meta: Mapping[str, Any]) -> None:
    """Compares ``model.safetensors`` with the SHA-256 that save_pretrained recorded."""
    expected = meta.get("weights_sha256")
    if expected is None and meta["format_version"] == 1:
        logger.warning(
            "%s: saved by an older unipercept without a weights checksum; the weights' bytes "
            "are not verified (save_pretrained again to add one)",
            folder,
        )
        return
    if not isinstance(expected, str):
        raise PretrainedError(f"{folder / META_FILE}: no weights_sha256 for {WEIGHTS_FILE}")
    if file_digest(folder / WEIGHTS_FILE) != expected:
        raise PretrainedError(
            f"{folder / WEIGHTS_FILE}: its bytes do not match the SHA-256 in {META_FILE} (a "
            "damaged or replaced file, or an interrupted save_pretrained)"
        )


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine.

    Raises:
        ValueError: a malformed name, or a CUDA device this machine does not have.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: CUDA is not available on this machine (torch "
                f"{torch.__version__}); use device='cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s)"
            )
    return device


def from_pretrained(
    name_or_path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> UniPercept:
    """Builds a model from a pretrained folder (or a bundled model's name) in eval mode.

    The weights are read with safetensors (nothing is unpickled); every stored tensor must
    match a parameter or buffer of the built model, and every one of those must be stored or
    rebuilt with the SHA-256 that ``save_pretrained`` recorded.

    Raises:
        PretrainedError: a missing or unreadable file, weights that do not fit the config, or
            rebuilt pretrained weights that differ from those the model was saved with, weights
            whose bytes differ from the recorded SHA-256, or a config naming anything outside
            :data:`MODEL_TARGETS` (nothing it names is called then).
        ValueError: a ``device`` this machine does not have (checked before loading).
    """
    if device is not None:
        device = check_device(device)
    folder = resolve_pretrained(name_or_path)
    meta = _read_meta(folder)
    try:
        # Plain YAML: no tags, no interpolation; the config is data, built from MODEL_TARGETS.
        container = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise PretrainedError(f"{folder / CONFIG_FILE}: not a readable config ({error})") from None
    if not isinstance(container, dict):
        raise PretrainedError(f"{folder / CONFIG_FILE}: not a mapping of model settings")
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise PretrainedError(
            f"{folder / WEIGHTS_FILE}: not a safetensors file ({error})"
        ) from error
    _check_weights_file(folder, meta)
    for alias, name in meta.get("aliases", {}).items():
        if name not in weights:
            raise PretrainedError(f"{folder / META_FILE}: alias {alias} names missing {name}")
        weights[alias] = weights[name]

    model = _build(container, str(folder / CONFIG_FILE))
    expected = model.state_dict()
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise PretrainedError(
            f"{folder / WEIGHTS_FILE}: {len(unexpected)} tensors the config's model lacks, "
            f"e.g. {unexpected[0]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise PretrainedError(
                f"{folder / WEIGHTS_FILE}: {name} has shape {tuple(tensor.shape)}, the config's "
                f"model {tuple(expected[name].shape)}"
            )
    excluded: dict[str, str] = meta.get("excluded", {})
    missing = sorted(set(expected) - set(weights) - set(excluded))
    if missing:
        raise PretrainedError(
            f"{folder / WEIGHTS_FILE}: {len(missing)} of the model's tensors are not stored, "
            f"e.g. {missing[0]}"
        )
    for name, digest in excluded.items():
        if name not in expected:
            raise PretrainedError(
                f"{folder / META_FILE}: excluded tensor {name} is not in the model"
            )
        if tensor_digest(expected[name]) != digest:
            raise PretrainedError(
                f"{folder}: the rebuilt pretrained tensor {name} differs from the one this model "
                "was saved with (another version of its pretrained package is installed)"
            )
    model.load_state_dict(weights, strict=False)
    model.config = container
    model.preprocess_settings = dict(meta.get("preprocess", {}))
    model.task_settings = plain_task_settings(meta.get("tasks", {}), str(folder / META_FILE))
    model.pretrained_path = folder
    if device is not None:
        model.to(device)
    return model.eval()


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
) -> UniPercept:
    """The model of a bundled name (``"unipercept-tiny"``), a pretrained folder, or a UNINEXT
    checkpoint (``.pth``, converted on the fly at UNINEXT's default sizes; ``python -m
    unipercept.convert uninext`` does it once), in eval mode, ready for
    ``unipercept.api.Predictor(model)``."""
    path = Path(name_or_path)
    if path.suffix in (".pth", ".pt") and path.is_file():
        from unipercept.modeling.uninext.convert import load_uninext_checkpoint

        if device is not None:
            device = check_device(device)
        model = load_uninext_checkpoint(path)
        return model.to(device) if device is not None else model
    return from_pretrained(name_or_path, device=device)
