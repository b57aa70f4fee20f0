from __future__ import annotations

import math

import pytest
import torch

from unipercept.criterion.embedding_loss import contrastive_embedding_loss


def brute_force(keys, key_ids, references, reference_ids, temperature, auxiliary_weight):
    """QDTrack's eqs. 3 and 4 by direct loops in float64."""
    keys, references = keys.double().tolist(), references.double().tolist()
    key_ids, reference_ids = key_ids.tolist(), reference_ids.tolist()

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    contrastive = []
    for v, identity in zip(keys, key_ids, strict=True):
        positives = [k for k, i in zip(references, reference_ids, strict=True) if i == identity]
        negatives = [k for k, i in zip(references, reference_ids, strict=True) if i != identity]
        if not positives:
            continue
        total = sum(
            math.exp(dot(v, n) / temperature - dot(v, p) / temperature)
            for p in positives
            for n in negatives
        )
        contrastive.append(math.log(1 + total))
    auxiliary = []
    for v, key_id in zip(keys, key_ids, strict=True):
        for k, reference_id in zip(references, reference_ids, strict=True):
            cosine = dot(v, k) / math.sqrt(dot(v, v) * dot(k, k))
            auxiliary.append((cosine - (key_id == reference_id)) ** 2)
    main = sum(contrastive) / len(contrastive) if contrastive else 0.0
    return main + auxiliary_weight * (sum(auxiliary) / len(auxiliary) if auxiliary else 0.0)


def random_case(seed: int, keys: int = 5, references: int = 7, dim: int = 4):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(keys, dim, generator=generator),
        torch.randint(0, 4, (keys,), generator=generator),
        torch.randn(references, dim, generator=generator),
        torch.randint(0, 4, (references,), generator=generator),
    )


@pytest.mark.parametrize(("seed", "temperature", "weight"), [(0, 1.0, 1.0), (1, 0.5, 0.3)])
def test_matches_brute_force(seed, temperature, weight):
    case = random_case(seed)
    loss = contrastive_embedding_loss(*case, temperature=temperature, auxiliary_weight=weight)
    assert float(loss) == pytest.approx(brute_force(*case, temperature, weight), rel=1e-5)


def test_separated_embeddings_have_much_smaller_loss_than_random_ones():
    identities = torch.arange(4)
    basis = 5 * torch.eye(4)  # one orthogonal direction per identity, scaled large
    separated = contrastive_embedding_loss(basis, identities, basis.flip(0), identities.flip(0))
    keys, _, references, _ = random_case(2, 4, 4)
    random = contrastive_embedding_loss(keys, identities, references, identities)
    assert float(separated) < 1e-6 < 0.01 * float(random)


def test_keys_without_positives_are_ignored():
    keys, key_ids, references, reference_ids = random_case(4)
    key_ids = key_ids.clone()
    key_ids[0] = 99
    full = contrastive_embedding_loss(keys, key_ids, references, reference_ids, auxiliary_weight=0)
    part = contrastive_embedding_loss(
        keys[1:], key_ids[1:], references, reference_ids, auxiliary_weight=0
    )
    assert torch.allclose(full, part)


def test_without_any_positive_only_the_auxiliary_loss_remains():
    keys = torch.randn(3, 4, requires_grad=True)
    references = torch.randn(2, 4, requires_grad=True)
    key_ids, reference_ids = torch.tensor([0, 1, 2]), torch.tensor([5, 6])
    loss = contrastive_embedding_loss(keys, key_ids, references, reference_ids, auxiliary_weight=0)
    assert loss.item() == 0
    loss.backward()
    assert keys.grad is not None and references.grad is not None
    with_auxiliary = contrastive_embedding_loss(keys, key_ids, references, reference_ids)
    assert with_auxiliary.item() == pytest.approx(
        brute_force(keys.detach(), key_ids, references.detach(), reference_ids, 1.0, 1.0), rel=1e-5
    )


@pytest.mark.parametrize(("keys", "references"), [(0, 3), (3, 0), (0, 0)])
def test_empty_inputs_give_zero_that_backpropagates(keys, references):
    key_embeddings = torch.randn(keys, 4, requires_grad=True)
    reference_embeddings = torch.randn(references, 4, requires_grad=True)
    loss = contrastive_embedding_loss(
        key_embeddings,
        torch.zeros(keys, dtype=torch.int64),
        reference_embeddings,
        torch.zeros(references, dtype=torch.int64),
    )
    assert loss.item() == 0
    loss.backward()
    assert key_embeddings.grad is not None and reference_embeddings.grad is not None


def test_gradients_are_finite_when_a_key_has_no_negative():
    keys = torch.randn(2, 3, requires_grad=True)
    references = (30 * torch.randn(3, 3)).requires_grad_()
    loss = contrastive_embedding_loss(
        keys, torch.tensor([1, 2]), references, torch.tensor([1, 1, 1])
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(keys.grad).all()
    assert torch.isfinite(references.grad).all()


def test_large_embeddings_stay_finite():
    keys, key_ids, references, reference_ids = random_case(5)
    keys, references = 8 * keys, 8 * references
    loss = contrastive_embedding_loss(keys, key_ids, references, reference_ids)
    # Some exponents exceed float32's range (~88), which a direct float32 sum would overflow.
    assert float(loss) > 88
    expected = brute_force(keys, key_ids, references, reference_ids, 1.0, 1.0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((5,), (5,), (7, 4), (7,)), "key_embeddings"),
        (((5, 4), (4,), (7, 4), (7,)), "key_ids"),
        (((5, 4), (5,), (7, 4, 1), (7,)), "reference_embeddings"),
        (((5, 4), (5,), (7, 4), (7, 1)), "reference_ids"),
        (((5, 4), (5,), (7, 3), (7,)), "reference_embeddings"),
    ],
)
def test_bad_shapes_raise(shapes, match):
    keys, key_ids, references, reference_ids = shapes
    with pytest.raises(ValueError, match=match):
        contrastive_embedding_loss(
            torch.zeros(keys),
            torch.zeros(key_ids, dtype=torch.int64),
            torch.zeros(references),
            torch.zeros(reference_ids, dtype=torch.int64),
        )


def test_bad_temperature_raises():
    with pytest.raises(ValueError, match="temperature"):
        contrastive_embedding_loss(*random_case(0), temperature=0.0)
