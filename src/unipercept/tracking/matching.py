"""Pieces the trackers share: similarity, one-to-one matching (greedy or Hungarian) and
input checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from unipercept.structures import Instances


def bisoftmax_similarity(embeddings: Tensor, memory: Tensor) -> Tensor:
    """QDTrack's bi-softmax similarity.

    Args:
        embeddings: (N, D) detection embeddings, unnormalised: their scale is what the
            association head learned, and it sets how peaked the softmaxes are.
        memory: (M, D) track embeddings.

    Returns:
        (N, M) similarities in [0, 1]: ``(softmax(E M^T, dim=1) + softmax(E M^T, dim=0)) / 2``.
    """
    logits = embeddings @ memory.T  # (N, M)
    return (logits.softmax(dim=1) + logits.softmax(dim=0)) / 2


def check_detections(detections: Instances, names: Sequence[str], tracker: str) -> None:
    """Raises ``ValueError`` naming the first field in ``names`` that ``detections`` lacks.

    A frame without detections passes whatever its fields: there is nothing to associate.
    """
    if len(detections) == 0:
        return
    for name in names:
        if getattr(detections, name) is None:
            raise ValueError(f"{tracker} needs detections.{name}, which is not set")


def check_fraction(name: str, value: float) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def greedy_match(similarity: Tensor, threshold: float) -> Tensor:
    """Rows (detections by decreasing score) take, in turn, their most similar free column.

    QDTrack's and IDOL's association: a confident detection chooses first, so a weaker view of
    the same object (a duplicate, a fragment) cannot take its track.

    Args:
        similarity: (N, M) similarities, rows by decreasing detection score.
        threshold: a row matches only a column more similar than this.

    Returns:
        (N,) int64 column matched by each row, -1 for none, on ``similarity``'s device.
    """
    remaining = similarity.detach().cpu().double().numpy().copy()  # (N, M)
    matched = np.full(remaining.shape[0], -1, dtype=np.int64)  # (N,)
    if remaining.shape[1] == 0:
        return torch.as_tensor(matched, device=similarity.device)
    # One pass per detection, each vectorised over the tracks: the order is the point of greedy
    # matching, so it cannot be one matrix operation.
    for row in range(remaining.shape[0]):
        column = int(remaining[row].argmax())
        if remaining[row, column] > threshold:
            matched[row] = column
            remaining[:, column] = -np.inf
    return torch.as_tensor(matched, device=similarity.device)


def hungarian_match(score: Tensor, feasible: Tensor) -> tuple[Tensor, Tensor]:
    """One-to-one matching of maximum total score, among the feasible pairs only.

    Args:
        score: (N, M) non-negative pair scores (higher is better).
        feasible: (N, M) bool, the pairs allowed to match.

    Returns:
        ``(rows, columns)``: (P,) int64 indices of the matched pairs, on ``score``'s device.
    """
    empty = torch.zeros(0, dtype=torch.int64, device=score.device)
    if score.numel() == 0:
        return empty, empty
    allowed = feasible.cpu().numpy()  # (N, M)
    # An infeasible pair is worth no more than leaving both unmatched, so the solver gains
    # nothing from it; the ones it still pairs up are dropped below.
    values = np.where(allowed, score.detach().cpu().double().numpy(), 0.0)  # (N, M)
    rows, columns = linear_sum_assignment(values, maximize=True)
    keep = allowed[rows, columns]
    return (
        torch.as_tensor(rows[keep], dtype=torch.int64, device=score.device),
        torch.as_tensor(columns[keep], dtype=torch.int64, device=score.device),
    )
