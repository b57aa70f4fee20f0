"""Contrastive association loss of tracking embeddings (QDTrack, IDOL): embeddings of the same
identity in a key and a reference frame are pulled together, others pushed apart."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check(name: str, embeddings: Tensor, ids_name: str, ids: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(embeddings.shape)}")
    if ids.dim() != 1 or len(ids) != len(embeddings):
        raise ValueError(f"{ids_name} must have shape ({len(embeddings)},), got {tuple(ids.shape)}")


def contrastive_embedding_loss(
    key_embeddings: Tensor,
    key_ids: Tensor,
    reference_embeddings: Tensor,
    reference_ids: Tensor,
    *,
    temperature: float = 1.0,
    auxiliary_weight: float = 1.0,
) -> Tensor:
    """Multi-positive contrastive loss (QDTrack eq. 3) plus the auxiliary cosine loss (eq. 4).

    For a key embedding v whose identity occurs among the references, with positives k+ (same
    id) and negatives k- (other ids):
    ``log(1 + sum_{k+} sum_{k-} exp(v.k- / T - v.k+ / T))``. The double sum factorises into
    ``logsumexp_{k-}(v.k- / T) + logsumexp_{k+}(-v.k+ / T)``, so it is computed in log space
    without forming the (k+, k-) pairs. It is averaged over the keys with a positive; keys
    without one carry no association signal and are left out (a key without negatives gets 0).

    The auxiliary loss is the mean over all (key, reference) pairs of ``(cos(v, k) - c)^2``
    with c = 1 for the same id and 0 otherwise, times ``auxiliary_weight``.

    Args:
        key_embeddings: (Nk, D) embeddings of the key frame's matched instances.
        key_ids: (Nk,) their identity ids.
        reference_embeddings: (Nr, D) embeddings of the reference frame's instances.
        reference_ids: (Nr,) their identity ids.
        temperature: T, divides the dot products.
        auxiliary_weight: weight of the auxiliary cosine loss.

    Returns:
        scalar loss. When no key has a positive the contrastive part is a zero still connected
        to both embedding tensors (so backward works), and with no pairs at all the auxiliary
        part is such a zero too.
    """
    _check("key_embeddings", key_embeddings, "key_ids", key_ids)
    _check("reference_embeddings", reference_embeddings, "reference_ids", reference_ids)
    if key_embeddings.shape[1] != reference_embeddings.shape[1]:
        raise ValueError(
            f"reference_embeddings must have {key_embeddings.shape[1]} channels like "
            f"key_embeddings, got {reference_embeddings.shape[1]}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    zero = key_embeddings.sum() * 0 + reference_embeddings.sum() * 0
    same = key_ids[:, None] == reference_ids[None, :]  # (Nk, Nr)

    has_positive = same.any(1)  # (Nk,)
    if has_positive.any():
        logits = key_embeddings[has_positive] @ reference_embeddings.T / temperature  # (Nq, Nr)
        positive = same[has_positive]  # (Nq, Nr)
        # Excluded entries are -inf; masked_fill also zeroes their (NaN) gradient when a key
        # has no negative and its logsumexp is over -inf alone.
        negative_term = logits.masked_fill(positive, float("-inf")).logsumexp(1)  # (Nq,)
        positive_term = (-logits).masked_fill(~positive, float("-inf")).logsumexp(1)  # (Nq,)
        # log(1 + exp(s)) = softplus(s), which is 0 for s = -inf (no negative).
        contrastive = F.softplus(negative_term + positive_term).mean()
    else:
        contrastive = zero

    if same.numel() > 0:
        cosine = F.normalize(key_embeddings, dim=1) @ F.normalize(reference_embeddings, dim=1).T
        auxiliary = ((cosine - same.to(cosine.dtype)) ** 2).mean()  # cosine: (Nk, Nr)
    else:
        auxiliary = zero
    return contrastive + auxiliary_weight * auxiliary
