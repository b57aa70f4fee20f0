from __future__ import annotations

import pytest
import torch

from unipercept.modeling.prompt import (
    AnnotationPromptEncoder,
    CategoryPromptEncoder,
    ExpressionPromptEncoder,
    TextEncoder,
)
from unipercept.structures import AnnotationPrompt, CategoryPrompt, ExpressionPrompt

from ..tiny import tiny_backbone, tiny_text_encoder

NAMES = (
    "cat",
    "dog",
    "traffic light",
    "zebra",
    "fire hydrant",
    "teapot",
    "bus",
    "kite",
    "baseball glove",
    "potted plant",
)


def test_each_name_pools_its_own_tokens():
    text = tiny_text_encoder().eval()
    embedding = CategoryPromptEncoder(text=text)([CategoryPrompt(("cat", "traffic light"))])
    tokens = text.tokenizer.convert_ids_to_tokens(
        text.tokenizer("cat. traffic light.")["input_ids"]
    )
    assert tokens == ["[CLS]", "cat", ".", "traffic", "light", ".", "[SEP]"]
    expected = torch.tensor([[0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0.5, 0.5, 0, 0]])
    torch.testing.assert_close(embedding.pooling[0], expected)


def test_long_vocabularies_are_split_into_chunks_not_truncated():
    text = tiny_text_encoder().eval()
    text.max_length = 12  # [CLS] + 10 tokens + [SEP] per caption
    encoder = CategoryPromptEncoder(text=text)
    chunks = encoder._chunks(NAMES)
    assert len(chunks) > 2 and [n for c in chunks for n in c] == list(NAMES)
    assert all(sum(text.count_tokens(f"{n}.") for n in c) <= 10 for c in chunks)
    with torch.no_grad():
        embedding = encoder([CategoryPrompt(NAMES)])
        assert embedding.pooling.shape[1] == len(NAMES) and bool(embedding.class_valid.all())
        rows = embedding.class_embeddings()[0]  # (K, C)
        # Every name's row equals encoding its chunk's caption on its own.
        offset = 0
        for chunk in chunks:
            alone = encoder([CategoryPrompt(tuple(chunk))])
            count = len(chunk)
            torch.testing.assert_close(rows[offset : offset + count], alone.class_embeddings()[0])
            offset += count
        length = int(embedding.valid.sum())
        assert length == sum(int(encoder([CategoryPrompt(tuple(c))]).valid.sum()) for c in chunks)
    with pytest.raises(ValueError, match="alone needs"):
        encoder([CategoryPrompt(("a very very long name with many many words in it indeed",))])


def test_expressions_pool_uniformly_and_refuse_texts_beyond_the_limit():
    text = tiny_text_encoder().eval()
    encoder = ExpressionPromptEncoder(text=text)
    embedding = encoder([ExpressionPrompt("the man in red"), ExpressionPrompt("a dog")])
    torch.testing.assert_close(embedding.pooling.sum(-1), torch.ones(2, 1))
    assert embedding.pooling[1, 0, 4:].abs().sum() == 0  # "[CLS] a dog [SEP]" then padding
    text.max_length = 4
    with pytest.raises(ValueError, match="exceeds the text encoder's limit of 4"):
        encoder([ExpressionPrompt("the man in red")])


def test_freezing_keeps_the_text_model_fixed_but_trains_the_projection():
    text = tiny_text_encoder(freeze=True).train()
    assert not text.model.training  # frozen encoder runs without dropout
    out = text(["a cat"]).features.sum()
    out.backward()
    assert all(p.grad is None and not p.requires_grad for p in text.model.parameters())
    assert text.projection[0].weight.grad is not None


def test_text_encoder_loads_a_model_folder(tmp_path):
    text = tiny_text_encoder()
    text.model.save_pretrained(tmp_path)
    text.tokenizer.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path, hidden_dim=32)
    assert loaded.model.config.hidden_size == 32 and loaded.max_length == 512
    for name, parameter in loaded.model.state_dict().items():
        torch.testing.assert_close(parameter, text.model.state_dict()[name])


def test_annotation_crop_is_centred_with_context():
    encoder = AnnotationPromptEncoder(
        backbone=tiny_backbone(), hidden_dim=32, crop_size=64, context_factor=2.0
    )
    frame = torch.zeros(3, 200, 300, dtype=torch.uint8)
    frame[:, 80:120, 130:170] = 255  # a white square target of 40 x 40
    crop = encoder.crops([AnnotationPrompt(frame, box=torch.tensor([130.0, 80.0, 170.0, 120.0]))])[
        0
    ]
    assert crop.shape == (4, 64, 64)
    prior = crop[3] > 0.5
    rows, cols = prior.any(1).nonzero().flatten(), prior.any(0).nonzero().flatten()
    # Context 2: the 40-pixel box fills the middle half of the crop.
    assert int(rows.min()) in (15, 16, 17) and int(rows.max()) in (46, 47, 48)
    assert int(cols.min()) in (15, 16, 17) and int(cols.max()) in (46, 47, 48)
    white = crop[0] > 1.0  # normalised white
    assert torch.equal(white[20:44, 20:44], prior[20:44, 20:44])
    with pytest.raises(ValueError, match="context_factor must be >= 1"):
        AnnotationPromptEncoder(backbone=tiny_backbone(), hidden_dim=32, context_factor=0.5)
