"""Pretrained models as folders: ``save_pretrained`` / ``from_pretrained`` / ``load_model``.

A pretrained folder holds

- ``config.yaml``: the model's resolved config (what ``conf/model/*`` composes to), built again
  with :func:`unipercept.config.instantiate`;
- ``model.safetensors``: the weights (never a pickle);
- ``unipercept.json``: the format version, the inference resolution, a description, tensors
  stored once for several names, and the tensors left out because building the config
  gives them already (pretrained weights the offline packages install, e.g. a frozen text
  encoder), each with the SHA-256 of its bytes, checked when loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unipercept import __version__
from unipercept.data.io import default_permissions

if TYPE_CHECKING:
    from unipercept.modeling.unipercept import UniPercept

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "unipercept.json"
FORMAT_VERSION = 1
DEFAULT_MODEL = "unipercept-tiny"
_TMP_MARK = ".tmp-"


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


def _build(config: Mapping[str, Any]) -> UniPercept:
    from unipercept import config as configs

    return configs.instantiate(dict(config))


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
    """Writes ``model`` as a pretrained folder, atomically (an existing folder is replaced only
    once the new one is complete).

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
    """
    from omegaconf import OmegaConf

    config = config if config is not None else getattr(model, "config", None)
    if config is None:
        raise ValueError(
            "save_pretrained needs the model's config: pass config= (conf/model/... composed)"
        )
    container = _config_container(config)
    settings = dict(preprocess or getattr(model, "preprocess_settings", None) or {})
    unknown = set(settings) - {"short_size", "max_size"}
    if unknown:
        raise ValueError(f"preprocess takes short_size and max_size, got {sorted(unknown)}")
    state = model.state_dict()  # the model's own tensors: shared ones keep one data_ptr

    excluded: dict[str, str] = {}
    if exclude_pretrained:
        # Built under a fresh random seed, so randomly initialised tensors never match; tensors
        # filled with one value (norm weights, zero biases) are stored: the init code makes
        # them, not an installed package.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(os.urandom(7), "little"))
            fresh = _build(container).state_dict()
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
        "aliases": aliases,
        "excluded": excluded,
    }

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}{_TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(stored, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(container), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        default_permissions(tmp / WEIGHTS_FILE)  # safetensors writes it owner-only
        old = None
        if folder.exists():
            old = folder.with_name(f"{folder.name}{_TMP_MARK}old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"{path}: not readable JSON ({error})") from error
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise PretrainedError(
            f"{path}: format_version {version}, this library reads {FORMAT_VERSION}"
        )
    return meta


def from_pretrained(
    name_or_path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> UniPercept:
    """Builds a model from a pretrained folder (or a bundled model's name) in eval mode.

    The weights are read with safetensors (nothing is unpickled); every stored tensor must
    match a parameter or buffer of the built model, and every one of those must be stored or
    rebuilt with the SHA-256 that ``save_pretrained`` recorded.

    Raises:
        PretrainedError: a missing or unreadable file, weights that do not fit the config, or
            rebuilt pretrained weights that differ from those the model was saved with.
    """
    from omegaconf import OmegaConf

    folder = resolve_pretrained(name_or_path)
    meta = _read_meta(folder)
    try:
        container = OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE), resolve=True)
    except Exception as error:
        raise PretrainedError(f"{folder / CONFIG_FILE}: not a readable config ({error})") from error
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise PretrainedError(
            f"{folder / WEIGHTS_FILE}: not a safetensors file ({error})"
        ) from error
    for alias, name in meta.get("aliases", {}).items():
        if name not in weights:
            raise PretrainedError(f"{folder / META_FILE}: alias {alias} names missing {name}")
        weights[alias] = weights[name]

    model = _build(container)
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
    model.pretrained_path = folder
    if device is not None:
        model.to(device)
    return model.eval()


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
) -> UniPercept:
    """The model of a bundled name (``"unipercept-tiny"``) or a pretrained folder, in eval mode,
    ready for ``model.predict(image, prompt)`` and ``model.start(task, prompt)``."""
    return from_pretrained(name_or_path, device=device)
