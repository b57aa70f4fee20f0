"""Finding, composing and instantiating the Hydra configs shipped with the package.

The configs live in ``conf/`` of the repository and are installed as the ``unipercept.conf``
package, so they resolve the same way from a checkout, an editable install or a wheel. Hydra is
imported only when a function here is called: ``import unipercept`` never initialises it.
"""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_PACKAGE = "unipercept.conf"


def config_dir() -> Path:
    """The directory holding the installed configs (``conf/`` of a checkout)."""
    return Path(str(importlib.resources.files(CONFIG_PACKAGE)))


def list_configs() -> list[str]:
    """Every config file, as a path relative to :func:`config_dir` without ``.yaml``
    (``"train"``, ``"optim/adamw"``, ...), sorted."""
    root = config_dir()
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Composes a top-level config (``"train"``, ...) with command-line style overrides.

    Args:
        config_name: a file at the top of the config directory, without ``.yaml``.
        overrides: Hydra overrides such as ``["optim.lr=1e-4"]``.

    Returns:
        The composed config, with interpolations left unresolved.

    Raises:
        ValueError: ``config_name`` is not a top-level config.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    available = [name for name in list_configs() if "/" not in name]
    if config_name not in available:
        raise ValueError(f"unknown config {config_name!r}; top-level configs are {available}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose_group_option(group: str, option: str) -> DictConfig:
    """Composes one option of a config group on its own, e.g. ``("optim", "adamw")``.

    Returns:
        The option's config (the content of ``conf/<group>/<option>.yaml`` after its own
        defaults list is applied).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if f"{group}/{option}" not in list_configs():
        raise ValueError(f"no config {group}/{option}.yaml in {config_dir()}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = hydra_compose(overrides=[f"+{group}={option}"])
    for key in group.split("/"):
        composed = composed[key]
    return composed


def instantiate(config: DictConfig | dict[str, Any], **kwargs: Any) -> Any:
    """Builds the objects a config names with ``_target_`` (``hydra.utils.instantiate``)."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(config, **kwargs)


class UntrustedConfigError(ValueError):
    """A config read from disk that names something the library does not build from data."""


@dataclass(frozen=True)
class AllowedTarget:
    """One callable that a config read from disk may name as ``_target_``.

    Args:
        module: the module to import (``"unipercept.modeling"``).
        qualname: the attribute path inside it (``"build_unipercept"``,
            ``"MobileNetV2.from_torchvision_checkpoint"``).
        arguments: the keyword arguments it may receive; ``None`` for the project's own
            builders, whose typed keyword-only signatures refuse anything else. Third-party
            callables always list theirs: their ``**kwargs`` reach switches such as
            ``trust_remote_code``.
    """

    module: str
    qualname: str
    arguments: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"

    def resolve(self) -> Any:
        found: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            found = getattr(found, part)
        return found


# Hydra's keys that only steer how a node is built; everything else is a keyword argument.
_BUILD_KEYS = {"_target_", "_convert_", "_recursive_"}
_PLAIN = (str, int, float, bool, type(None))


def build_allowed(
    config: Mapping[str, Any], allowed: Sequence[AllowedTarget], *, source: str
) -> Any:
    """Builds a config that came from disk (a model folder, a checkpoint), naming only
    ``allowed`` callables: the safe counterpart of :func:`instantiate` for data.

    Hydra's ``instantiate`` calls whatever ``_target_`` names (``torch.load`` with
    ``weights_only: false``, ``builtins.exec``, ...), so a config file would be code. Here every
    node with a ``_target_`` must name an allowed callable, may carry only the keyword
    arguments it allows, and is built bottom-up from plain values (strings, numbers, booleans,
    null, lists and mappings); ``_args_``, ``_partial_`` and non-recursive nodes are refused.

    Args:
        config: the plain container (e.g. ``yaml.safe_load`` of ``config.yaml``).
        allowed: what may be built.
        source: the file the config came from, named in errors.

    Returns:
        The built object.

    Raises:
        UntrustedConfigError: a target or argument outside the allow-list, or a value that is
            not plain data; nothing has been called when it is raised.
    """
    by_name = {target.name: target for target in allowed}
    plan = _check_node(config, "", by_name, source)  # every node checked before any call
    return _build_node(plan)


def _check_node(node: Any, where: str, allowed: Mapping[str, AllowedTarget], source: str) -> Any:
    def fail(message: str) -> UntrustedConfigError:
        return UntrustedConfigError(f"{source}: {where or 'the top level'}: {message}")

    if isinstance(node, _PLAIN):
        return node
    if isinstance(node, list | tuple):
        return [_check_node(item, f"{where}[{i}]", allowed, source) for i, item in enumerate(node)]
    if not isinstance(node, Mapping):
        raise fail(f"a {type(node).__name__} is not plain data")
    for key in node:
        if not isinstance(key, str):
            raise fail(f"key {key!r} is not a string")
    children = {
        key: _check_node(value, f"{where}.{key}".lstrip("."), allowed, source)
        for key, value in node.items()
        if key not in _BUILD_KEYS
    }
    if "_target_" not in node:
        return _Plain(children)
    name = node["_target_"]
    if not isinstance(name, str) or name not in allowed:
        raise fail(
            f"_target_ {name!r} is not something this library builds from a file "
            f"(it builds only: {', '.join(sorted(allowed))})"
        )
    if node.get("_recursive_", True) is not True:
        raise fail("_recursive_: false is not allowed")
    if node.get("_convert_", "none") not in ("none", "partial", "object", "all"):
        raise fail(f"_convert_ {node['_convert_']!r} is not a Hydra conversion mode")
    steering = sorted(key for key in children if key.startswith("_") and key.endswith("_"))
    if steering:
        raise fail(f"{steering[0]} is not allowed in a config read from disk")
    target = allowed[name]
    if target.arguments is not None:
        extra = sorted(set(children) - target.arguments)
        if extra:
            raise fail(
                f"{name} takes only {', '.join(sorted(target.arguments))} from a file, "
                f"not {extra[0]}"
            )
    return _Call(target, children)


@dataclass(frozen=True)
class _Plain:
    values: dict[str, Any]


@dataclass(frozen=True)
class _Call:
    target: AllowedTarget
    arguments: dict[str, Any]


def _build_node(node: Any) -> Any:
    if isinstance(node, list):
        return [_build_node(item) for item in node]
    if isinstance(node, _Plain):
        return {key: _build_node(value) for key, value in node.values.items()}
    if isinstance(node, _Call):
        arguments = {key: _build_node(value) for key, value in node.arguments.items()}
        return node.target.resolve()(**arguments)
    return node
