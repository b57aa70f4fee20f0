"""Shared test helpers: the reference fixtures and the CUDA marker."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` beside the checkout; tests using it skip when it is absent (a
    user's fresh clone has no ``../shared``)."""
    if not FIXTURES.is_dir():
        pytest.skip(
            f"reference fixtures not found at {FIXTURES} (only present beside the "
            "project's own checkouts)"
        )
    return FIXTURES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        # The marker, not the keyword: keywords hold every parametrize id and name part, so a
        # case named "[cuda]" (e.g. trainer.device=cuda on a CPU machine) would be skipped too.
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A random model/unipercept_tiny's weights, as evaluate --model and predict --checkpoint
    take them."""
    import torch
    from safetensors.torch import save_model

    from unipercept import config

    torch.manual_seed(0)
    model = config.instantiate(config.compose_group_option("model", "unipercept_tiny"))
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_model(model, str(path))
    return path
