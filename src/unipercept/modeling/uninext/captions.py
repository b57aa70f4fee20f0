"""Captions and category maps exactly as UNINEXT builds them at test time.

Detection: the cleaned category names are joined by ". " into one caption (no trailing period)
and each category is mapped to the tokens of its name (``create_queries_and_maps``,
``create_positive_dict`` in ``data/coco_dataset_mapper_uni.py``); a class logit is the mean of
its tokens' logits (``convert_grounding_to_od_logits``, ``uninext_img.py:598-613``).
Grounding: the expression goes through :func:`clean_string`. Both are tokenized padded to 256
tokens and truncated there (``forward_text``, ``uninext_img.py:507-513``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unipercept.modeling.uninext.text import uninext_tokenizer

# MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN; PAD_MAX pads every caption to it.
MAX_QUERY_LEN = 256
CATEGORY_SEPARATOR = ". "

_PARENTHESES = re.compile(r"\(.*\)")
# The characters clean_string deletes, and those it turns into spaces.
_EXPRESSION_TABLE = str.maketrans({**dict.fromkeys(".,'!?\"()*#:;"), "-": " ", "/": " "})


def clean_name(name: str) -> str:
    """A category name as UNINEXT puts it in captions: the text from the first "(" to the last
    ")" removed, "_" -> " ", then each pair of spaces -> one space (a single pass)."""
    name = _PARENTHESES.sub("", name)
    return name.replace("_", " ").replace("  ", " ")


def clean_string(expression: str) -> str:
    """A referring expression as UNINEXT feeds it: lower-cased, ``.,'!?"()*#:;`` deleted and
    "-", "/" replaced by spaces (other whitespace kept as is)."""
    return expression.lower().translate(_EXPRESSION_TABLE)


def detection_caption(names: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The detection caption of ``names`` and each category's character span in it.

    Args:
        names: category names in label order (label k+1 is ``names[k]``); each is cleaned
            with :func:`clean_name`.

    Returns:
        ``(caption, spans)``: e.g. ``("person. traffic light", [(0, 6), (8, 21)])``, spans as
        ``(start, end)`` with ``end`` exclusive.
    """
    caption = ""
    spans = []
    for index, name in enumerate(names):
        if index:
            caption += CATEGORY_SEPARATOR
        start = len(caption)
        caption += clean_name(name)
        spans.append((start, len(caption)))
    return caption, spans


def _char_to_token(encoding: Any, char_index: int) -> int | None:
    # UNINEXT wraps its fallback look-ups in try/except: a negative index raises there (and
    # yields None), an index past the end gives None.
    if char_index < 0:
        return None
    return encoding.char_to_token(char_index)


def _first_token(encoding: Any, candidates: Sequence[int]) -> int | None:
    for char_index in candidates:
        token = _char_to_token(encoding, char_index)
        if token is not None:
            return token
    return None


def positive_map_label_to_token(
    encoding: Any, char_spans: Sequence[tuple[int, int]]
) -> dict[int, list[int]]:
    """Each category's token positions in the caption, as UNINEXT's ``create_positive_dict``.

    A category spans the tokens from the one at its first character to the one at its last;
    when a character has no token (a space) the next one or two (first) or the previous one or
    two (last) are tried; a category with no token either way is left out.

    Args:
        encoding: the fast tokenizer's encoding of the caption alone, untruncated (UNINEXT
            tokenizes it once without truncation for this map).
        char_spans: ``(start, end)`` per category, from :func:`detection_caption`.

    Returns:
        ``{label: [token positions]}`` with labels 1..K; positions count [CLS] as 0.
    """
    label_to_token = {}
    for label, (start, end) in enumerate(char_spans, start=1):
        first = _first_token(encoding, (start, start + 1, start + 2))
        last = _first_token(encoding, (end - 1, end - 2, end - 3))
        if first is None or last is None:
            continue
        label_to_token[label] = list(range(first, last + 1))
    return label_to_token


def _positive_map(label_to_token: dict[int, list[int]], num_labels: int, max_len: int) -> Tensor:
    positive = torch.zeros(num_labels, max_len, dtype=torch.int64)  # (K, L)
    for label, tokens in label_to_token.items():
        # Tokens past max_len are not in the model's (truncated) input; UNINEXT would fail to
        # index them.
        positive[label - 1, [t for t in tokens if t < max_len]] = 1
    return positive


def positive_map(
    encoding: Any, char_spans: Sequence[tuple[int, int]], max_len: int = MAX_QUERY_LEN
) -> Tensor:
    """The label -> token map of :func:`positive_map_label_to_token` as a 0/1 matrix.

    Args:
        encoding: the caption's untruncated encoding (see :func:`positive_map_label_to_token`).
        char_spans: ``(start, end)`` per category.
        max_len: the padded token length L.

    Returns:
        (K, L) int64, 1 where token j belongs to category k (row k is label k+1); a category
        UNINEXT leaves out has a zero row, tokens at positions >= L are dropped.
    """
    label_to_token = positive_map_label_to_token(encoding, char_spans)
    return _positive_map(label_to_token, len(char_spans), max_len)


def tokenize(
    texts: Sequence[str], max_len: int = MAX_QUERY_LEN, *, tokenizer: Any = None
) -> tuple[Tensor, Tensor]:
    """Tokenizes captions as UNINEXT's ``forward_text``: [CLS] ... [SEP], truncated to and
    padded to ``max_len`` (PAD_MAX).

    Args:
        texts: B captions (already cleaned).
        max_len: the token length L.
        tokenizer: defaults to :func:`uninext_tokenizer`.

    Returns:
        ``(input_ids, attention_mask)``, both (B, L) int64; the mask is 1 on tokens.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if tokenizer is None:
        tokenizer = uninext_tokenizer()
    encoded = tokenizer(
        list(texts), max_length=max_len, padding="max_length", truncation=True, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]


@dataclass(frozen=True, eq=False)
class CategoryText:
    """The text input of detection over a category vocabulary.

    UNINEXT scores category k by the mean of its tokens' logits; ``positive_map`` holds those
    mean weights, so ``class_logits = token_logits @ positive_map.T`` ((B, Q, L) -> (B, Q, K))
    is ``convert_grounding_to_od_logits``, including 0 for a category without tokens.

    Attributes:
        caption: the caption, e.g. ``"person. traffic light. dog"``.
        char_spans: ``(start, end)`` of each category in the caption.
        label_to_token: ``{label: [token positions]}``, labels 1..K (UNINEXT's
            ``positive_map_label_to_token``).
        input_ids: (1, L) int64 token ids; the caption is the same for every image of a batch
            (``expand(B, -1)``).
        attention_mask: (1, L) int64, 1 on tokens.
        positive_map: (K, L) float32, row k = 1/n_k on category k's n_k tokens, zero row when
            it has none.
    """

    caption: str
    char_spans: list[tuple[int, int]]
    label_to_token: dict[int, list[int]]
    input_ids: Tensor
    attention_mask: Tensor
    positive_map: Tensor


def encode_categories(
    names: Sequence[str], *, max_len: int = MAX_QUERY_LEN, tokenizer: Any = None
) -> CategoryText:
    """Builds UNINEXT's detection caption, token ids and category map for ``names``.

    Args:
        names: category names in label order (cleaned with :func:`clean_name`).
        max_len: the token length L.
        tokenizer: defaults to :func:`uninext_tokenizer`.

    Returns:
        The :class:`CategoryText`.
    """
    if tokenizer is None:
        tokenizer = uninext_tokenizer()
    caption, spans = detection_caption(names)
    label_to_token = positive_map_label_to_token(tokenizer(caption), spans)
    counts = _positive_map(label_to_token, len(spans), max_len).float()  # (K, L)
    weights = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    input_ids, attention_mask = tokenize([caption], max_len, tokenizer=tokenizer)
    return CategoryText(
        caption=caption,
        char_spans=spans,
        label_to_token=label_to_token,
        input_ids=input_ids,
        attention_mask=attention_mask,
        positive_map=weights,
    )
