"""The referring re-scorer: inert until fitted, only for expressions, sees the other queries'
boxes and the words, survives save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unipercept.modeling.rescorer import ReferringRescorer
from unipercept.structures import AnnotationPrompt, CategoryPrompt, ExpressionPrompt, ImageBatch

from .tiny import tiny_unipercept


def _images() -> ImageBatch:
    generator = torch.Generator().manual_seed(0)
    return ImageBatch.from_images(
        [torch.randn(3, 96, 128, generator=generator), torch.randn(3, 80, 100, generator=generator)]
    )


def _fitted(rescorer: ReferringRescorer) -> ReferringRescorer:
    """Gives the zero-initialised output layer weights, as fitting would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        rescorer.output.weight.copy_(torch.randn(rescorer.output.weight.shape, generator=generator))
    return rescorer


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    plain = tiny_unipercept().eval()
    torch.manual_seed(0)
    with_rescorer = tiny_unipercept(referring_rescorer=True).eval()
    return plain, with_rescorer


def test_an_unfitted_rescorer_answers_exactly_as_without_it(models):
    plain, with_rescorer = models
    # Same seed, and the re-scorer is built last: every other weight is the same.
    shared = dict(with_rescorer.named_parameters())
    for name, parameter in plain.named_parameters():
        assert torch.equal(parameter, shared[name]), name
    batch = _images()
    prompts = [ExpressionPrompt("the cat left of the dog"), ExpressionPrompt("a small cat")]
    with torch.no_grad():
        expected = plain(batch, prompts)
        found = with_rescorer(batch, prompts)
    assert torch.equal(found.logits, expected.logits)
    # The fused word tokens are given out, padded: the longer sentence has more.
    assert found.prompt_tokens is not None and found.prompt_valid is not None
    assert found.prompt_tokens.shape[:2] == found.prompt_valid.shape
    lengths = found.prompt_valid.sum(1).tolist()
    assert lengths[0] > lengths[1]


def test_only_expression_prompts_are_rescored_and_only_the_last_layer():
    torch.manual_seed(0)
    model = tiny_unipercept(referring_rescorer=True).eval()
    batch = _images()
    prompts = {
        "category": [CategoryPrompt(("cat",)), CategoryPrompt(("cat",))],
        "expression": [ExpressionPrompt("the cat"), ExpressionPrompt("the cat")],
        "annotation": [
            AnnotationPrompt(image, box=torch.tensor([10.0, 10.0, 50.0, 60.0]))
            for image in (torch.rand(3, 96, 128), torch.rand(3, 80, 100))
        ],
    }
    with torch.no_grad():
        before = {kind: model(batch, p).logits for kind, p in prompts.items()}
        _fitted(model.rescorer)
        after = {kind: model(batch, p).logits for kind, p in prompts.items()}
    assert torch.equal(before["category"], after["category"])
    assert torch.equal(before["annotation"], after["annotation"])
    assert torch.equal(before["expression"][:-1], after["expression"][:-1])
    assert not torch.allclose(before["expression"][-1], after["expression"][-1])
    # An embedding encoded once (as predict does for many images) keeps its kind.
    embedding = model.encode_prompts(prompts["expression"])
    assert embedding.kind == "expression"
    with torch.no_grad():
        assert torch.equal(model(batch, embedding).logits, after["expression"])


def test_each_query_is_scored_with_the_others_boxes_and_the_words():
    torch.manual_seed(0)
    rescorer = _fitted(ReferringRescorer(hidden_dim=16, width=16, num_heads=2)).eval()
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 5, 16, generator=generator)
    boxes = torch.rand(1, 5, 4, generator=generator)
    logits, quality = torch.zeros(1, 5), torch.zeros(1, 5)
    words = torch.randn(1, 3, 16, generator=generator)
    valid = torch.ones(1, 3, dtype=torch.bool)
    base = rescorer(hidden, boxes, logits, quality, words, valid)
    moved = boxes.clone()
    moved[0, 4, 0] += 0.5  # another query moves: query 0's own inputs are unchanged
    assert not torch.allclose(
        rescorer(hidden, moved, logits, quality, words, valid)[0, 0], base[0, 0]
    )
    reworded = words.clone()
    reworded[0, 1] = torch.randn(16, generator=generator)
    assert not torch.allclose(rescorer(hidden, boxes, logits, quality, reworded, valid), base)
    # Padded words are not read.
    padded_words = torch.cat((words, torch.randn(1, 2, 16, generator=generator)), 1)
    padded_valid = torch.cat((valid, torch.zeros(1, 2, dtype=torch.bool)), 1)
    torch.testing.assert_close(
        rescorer(hidden, boxes, logits, quality, padded_words, padded_valid), base
    )


def test_a_rescorer_survives_save_and_load(tmp_path):
    from omegaconf import OmegaConf

    from unipercept import config
    from unipercept.modeling.pretrained import from_pretrained, save_pretrained

    cfg = config.compose_group_option("model", "unipercept_tiny")
    assert cfg.referring_rescorer is False  # the default model has none
    cfg.referring_rescorer = True
    torch.manual_seed(0)
    model = config.instantiate(cfg).eval()
    assert isinstance(model.rescorer, nn.Module)
    _fitted(model.rescorer)
    folder = save_pretrained(model, tmp_path / "model", config=OmegaConf.to_container(cfg))
    loaded = from_pretrained(folder)
    for name, tensor in model.rescorer.state_dict().items():
        assert torch.equal(loaded.rescorer.state_dict()[name], tensor), name
