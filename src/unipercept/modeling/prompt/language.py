"""Category-name and referring-expression prompts, encoded by a text model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unipercept.modeling.outputs import PromptEmbedding
from unipercept.modeling.prompt.text import TextEncoder
from unipercept.structures import CategoryPrompt, ExpressionPrompt, ImageBatch


def _batch(sequences: Sequence[Tensor], rows: Sequence[Tensor], kind: str) -> PromptEmbedding:
    """Pads per-prompt tokens (L_b, C) and pooling rows (K_b, L_b) into one embedding."""
    batch = len(sequences)
    length = max(s.shape[0] for s in sequences)
    classes = max(r.shape[0] for r in rows)
    width = sequences[0].shape[1]
    tokens = sequences[0].new_zeros((batch, length, width))  # (B, L, C)
    valid = torch.zeros((batch, length), dtype=torch.bool, device=tokens.device)
    pooling = tokens.new_zeros((batch, classes, length))  # (B, K, L)
    class_valid = torch.zeros((batch, classes), dtype=torch.bool, device=tokens.device)
    for index, (sequence, row) in enumerate(zip(sequences, rows, strict=True)):
        tokens[index, : sequence.shape[0]] = sequence
        valid[index, : sequence.shape[0]] = True
        pooling[index, : row.shape[0], : row.shape[1]] = row
        class_valid[index, : row.shape[0]] = True
    return PromptEmbedding(
        tokens=tokens, valid=valid, pooling=pooling, class_valid=class_valid, kind=kind
    )


class CategoryPromptEncoder(nn.Module):
    """Category names as one caption ``"name1. name2. ..."``; each name's row of W is the mean
    of its own tokens, so any name (seen in training or not) can be asked for.

    A vocabulary longer than the text encoder's limit is split into several captions, each
    encoded on its own; their tokens are concatenated. Nothing is truncated.
    """

    kind = "category"

    def __init__(self, *, text: TextEncoder) -> None:
        super().__init__()
        self.text = text

    def _chunks(self, names: Sequence[str]) -> list[list[str]]:
        budget = self.text.max_length - 2  # [CLS] and [SEP]
        chunks: list[list[str]] = [[]]
        used = 0
        for name in names:
            cost = self.text.count_tokens(f"{name}.")
            if cost > budget:
                raise ValueError(
                    f"category name {name!r} alone needs {cost} tokens, more than "
                    f"the text encoder's {budget}"
                )
            if used + cost > budget:
                chunks.append([])
                used = 0
            chunks[-1].append(name)
            used += cost
        return chunks

    def forward(
        self, prompts: Sequence[CategoryPrompt], images: ImageBatch | None = None
    ) -> PromptEmbedding:
        """Args:
            prompts: B category prompts (often the same vocabulary: it is encoded once).

        Returns:
            tokens of every caption chunk, and one pooling row per name.
        """
        if not prompts:
            raise ValueError("prompts is empty: give one CategoryPrompt per image")
        vocabularies = list(dict.fromkeys(p.names for p in prompts))
        captions, spans, owner = [], [], []
        for index, names in enumerate(vocabularies):
            for chunk in self._chunks(names):
                caption, chunk_spans = "", []
                for name in chunk:
                    start = len(caption)
                    caption += f"{name}. "
                    chunk_spans.append((start, start + len(name)))
                captions.append(caption.rstrip())
                spans.append(chunk_spans)
                owner.append(index)
        encoded = self.text(captions)
        sequences: list[list[Tensor]] = [[] for _ in vocabularies]
        rows: list[list[Tensor]] = [[] for _ in vocabularies]
        offsets: list[int] = [0 for _ in vocabularies]
        for chunk, (chunk_spans, index) in enumerate(zip(spans, owner, strict=True)):
            valid = encoded.valid[chunk]
            features = encoded.features[chunk][valid]  # (T, C)
            token_span = encoded.offsets[chunk][valid]  # (T, 2)
            for start, end in chunk_spans:
                inside = (
                    (token_span[:, 0] >= start)
                    & (token_span[:, 1] <= end)
                    & (token_span[:, 1] > token_span[:, 0])
                )  # (T,), special tokens have empty spans
                row = inside.to(features.dtype) / inside.sum().clamp(min=1)
                rows[index].append((offsets[index], row))
            sequences[index].append(features)
            offsets[index] += features.shape[0]
        per_vocabulary_tokens = [torch.cat(s) for s in sequences]
        per_vocabulary_rows = []
        for index, tokens in enumerate(per_vocabulary_tokens):
            matrix = tokens.new_zeros((len(rows[index]), tokens.shape[0]))  # (K, L)
            for k, (offset, row) in enumerate(rows[index]):
                matrix[k, offset : offset + row.shape[0]] = row
            per_vocabulary_rows.append(matrix)
        pick = [vocabularies.index(p.names) for p in prompts]
        return _batch(
            [per_vocabulary_tokens[i] for i in pick],
            [per_vocabulary_rows[i] for i in pick],
            self.kind,
        )


class ExpressionPromptEncoder(nn.Module):
    """A referring expression's tokens; W is their mean (one row)."""

    kind = "expression"

    def __init__(self, *, text: TextEncoder) -> None:
        super().__init__()
        self.text = text

    def forward(
        self, prompts: Sequence[ExpressionPrompt], images: ImageBatch | None = None
    ) -> PromptEmbedding:
        if not prompts:
            raise ValueError("prompts is empty: give one ExpressionPrompt per image")
        encoded = self.text([p.text for p in prompts])
        sequences, rows = [], []
        for index in range(len(prompts)):
            tokens = encoded.features[index][encoded.valid[index]]  # (T, C)
            sequences.append(tokens)
            rows.append(tokens.new_full((1, tokens.shape[0]), 1.0 / tokens.shape[0]))
        return _batch(sequences, rows, self.kind)
