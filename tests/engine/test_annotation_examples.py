"""SOT/VOS training examples: pseudo-videos of still images, mask templates, absent targets."""

from __future__ import annotations

import os

import pytest
import torch

from unipercept import config
from unipercept.criterion import HungarianMatcher, UniPerceptCriterion
from unipercept.data.synthetic import generate
from unipercept.engine.batches import ExampleSettings, TrainingData

from ..modeling.tiny import tiny_unipercept


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=2, size="small")
    os.environ["UNIPERCEPT_DATA"] = str(root)
    try:
        return {
            name: config.instantiate(config.compose_group_option("data", name))
            for name in ("synthetic_coco_templates", "synthetic_davis")
        }
    finally:
        del os.environ["UNIPERCEPT_DATA"]


def _data(specs, name: str, **settings) -> TrainingData:
    return TrainingData(
        {name: specs[name]},
        {name: 1.0},
        batch_size=4,
        settings=ExampleSettings(short_sizes=(96,), max_size=128, **settings),
    )


def test_still_images_become_template_and_zoomed_search_frame(specs):
    data = _data(specs, "synthetic_coco_templates")
    moved = 0
    for step in range(4):
        batch = data.batch_at(step)
        assert batch.prompt_kind == "annotation"
        for prompt, target in zip(batch.prompts, batch.targets, strict=True):
            assert prompt.mask is None  # boxes only by default
            assert len(target) == 1 and target.labels.tolist() == [0]
            # The search frame is a zoomed crop: the target is elsewhere or at another scale.
            moved += not torch.allclose(prompt.box, target.boxes[0], atol=8.0)
    assert moved > 0


def test_absent_examples_have_no_target_and_mask_examples_a_mask(specs):
    for name in ("synthetic_coco_templates", "synthetic_davis"):
        data = _data(specs, name, absent_probability=1.0, mask_prior_probability=1.0)
        empty = 0
        for step in range(3):
            batch = data.batch_at(step)
            for prompt, target in zip(batch.prompts, batch.targets, strict=True):
                assert prompt.mask is not None and bool(prompt.mask.any())
                empty += len(target) == 0
        # Most lose their target: a crop leaving out a large one is not always found, and
        # the example then stays a positive one.
        assert empty >= 8, name
    # Batches are still a pure function of the step.
    again = _data(specs, "synthetic_davis", absent_probability=1.0, mask_prior_probability=1.0)
    first = _data(specs, "synthetic_davis", absent_probability=1.0, mask_prior_probability=1.0)
    torch.testing.assert_close(again.batch_at(5).images.tensor, first.batch_at(5).images.tensor)


def test_the_criterion_trains_on_absent_targets(specs):
    data = _data(specs, "synthetic_coco_templates", absent_probability=1.0)
    batch = data.batch_at(0)
    assert any(len(t) == 0 for t in batch.targets)
    torch.manual_seed(0)
    model = tiny_unipercept(annotation_encoder="template")
    outputs = model(batch.images, batch.prompts)
    losses = UniPerceptCriterion(matcher=HungarianMatcher())(outputs, batch.targets, batch.images)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # "Not found" is learned: the classification loss pushes every query's score down.
    assert model.heads.retrieval[-1].parameters().__next__().grad is not None
