"""Finding, composing and instantiating the Hydra configs shipped with the package.

The configs live in ``conf/`` of the repository and are installed as the ``unipercept.conf``
package, so they resolve the same way from a checkout, an editable install or a wheel. Hydra is
imported only when a function here is called: ``import unipercept`` never initialises it.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
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
