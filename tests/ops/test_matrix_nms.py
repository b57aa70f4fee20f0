from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from unipercept.ops.matrix_nms import mask_nms, matrix_nms

# unipercept.ops re-exports the function under the module's name; reach the module itself.
matrix_nms_module = importlib.import_module("unipercept.ops.matrix_nms")


def clustered_masks(
    num: int, seed: int, height: int = 24, width: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and ellipses jittered around a few centres, so that masks overlap a lot, plus an
    exact duplicate and an empty mask: the cases where the formulas divide by 1 - 1 or 0."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(4, 2, generator=generator) * torch.tensor([width, height])
    pick = torch.randint(0, 4, (num,), generator=generator)
    centre = centres[pick] + torch.randn(num, 2, generator=generator) * 2  # (num, 2) as (x, y)
    half = 3 + torch.rand(num, 2, generator=generator) * 6  # (num, 2)
    x = (torch.arange(width) + 0.5 - centre[:, 0, None, None]) / half[:, 0, None, None]
    y = (torch.arange(height)[:, None] + 0.5 - centre[:, 1, None, None]) / half[:, 1, None, None]
    ellipse = torch.rand(num, 1, 1, generator=generator) < 0.5
    masks = torch.where(ellipse, x**2 + y**2 <= 1, (x.abs() <= 1) & (y.abs() <= 1))  # (num, H, W)
    if num >= 3:
        masks[1] = masks[0]
        masks[2] = False
    return masks, torch.rand(num, generator=generator)


def pair_iou(masks: np.ndarray, labels: np.ndarray | None, a: int, b: int) -> float:
    if labels is not None and labels[a] != labels[b]:
        return 0.0
    union = np.logical_or(masks[a], masks[b]).sum()
    return float(np.logical_and(masks[a], masks[b]).sum() / union) if union else 0.0


def loop_matrix_nms(masks, scores, labels, kernel: str, sigma: float) -> np.ndarray:
    """The paper's formula, pair by pair in float64."""
    flat = masks.numpy().astype(bool).reshape(len(masks), -1)
    values = scores.double().numpy()
    labels = None if labels is None else labels.numpy()
    rank = sorted(range(len(values)), key=lambda i: (-values[i], i))

    def f(iou: float) -> float:
        return math.exp(-sigma * iou * iou) if kernel == "gaussian" else 1.0 - iou

    iou_star = {}
    for position, i in enumerate(rank):
        iou_star[i] = max((pair_iou(flat, labels, k, i) for k in rank[:position]), default=0.0)
    out = values.copy()
    for position, j in enumerate(rank):
        # A mask with f(iou_star) = 0 is decayed to 0 itself and suppresses nothing.
        ratios = [
            f(pair_iou(flat, labels, i, j)) / f(iou_star[i])
            for i in rank[:position]
            if f(iou_star[i]) > 0
        ]
        out[j] *= min(ratios, default=1.0)
    return out


def loop_mask_nms(masks, scores, labels, threshold: float) -> list[int]:
    flat = masks.numpy().astype(bool).reshape(len(masks), -1)
    labels = None if labels is None else labels.numpy()
    kept: list[int] = []
    for index in sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i)):
        if all(pair_iou(flat, labels, index, k) <= threshold for k in kept):
            kept.append(index)
    return kept


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize(("num", "seed"), [(2, 0), (7, 1), (30, 2), (60, 3)])
def test_matrix_nms_matches_loop_over_pairs(kernel, with_labels, num, seed):
    masks, scores = clustered_masks(num, seed)
    labels = torch.randint(0, 3, (num,), generator=torch.Generator().manual_seed(seed))
    labels = labels if with_labels else None
    sigma = 2.0 if seed % 2 else 0.5
    out = matrix_nms(masks, scores, labels, kernel=kernel, sigma=sigma)
    assert out.dtype == scores.dtype and out.shape == scores.shape
    expected = loop_matrix_nms(masks, scores, labels, kernel, sigma)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=1e-6)
    assert bool((out <= scores).all()) and bool((out >= 0).all())


def test_top_mask_keeps_its_score_and_a_duplicate_is_decayed_by_the_kernel():
    masks, _ = clustered_masks(5, 4)
    masks[3] = masks[4]  # a second copy of mask 4, scored lower
    scores = torch.tensor([0.2, 0.3, 0.1, 0.5, 0.9])
    gaussian = matrix_nms(masks, scores, sigma=2.0)
    assert gaussian[4] == scores[4]
    assert gaussian[3].item() == pytest.approx(0.5 * math.exp(-2.0), rel=1e-6)
    assert matrix_nms(masks, scores, kernel="linear")[3] == 0


def test_linear_kernel_with_triplicates_is_finite():
    masks, _ = clustered_masks(3, 5)
    masks[:] = masks[0]  # three copies: the second one's own iou_star is 1
    out = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.7]), kernel="linear")
    assert out.tolist() == pytest.approx([0.9, 0.0, 0.0])


def test_disjoint_masks_are_not_decayed():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    for i in range(4):
        masks[i, 2 * i : 2 * i + 2, :] = True
    scores = torch.tensor([0.4, 0.9, 0.1, 0.6])
    for kernel in ("gaussian", "linear"):
        assert torch.equal(matrix_nms(masks, scores, kernel=kernel), scores)


def test_different_labels_do_not_interact():
    masks, scores = clustered_masks(40, 6)
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(6))
    out = matrix_nms(masks, scores, labels)
    for label in range(3):
        group = labels == label
        torch.testing.assert_close(out[group], matrix_nms(masks[group], scores[group]))
    twins = torch.stack([masks[0], masks[0]])  # identical masks, different labels
    pair = torch.tensor([0.9, 0.8])
    assert torch.equal(matrix_nms(twins, pair, torch.tensor([0, 1])), pair)


def test_output_follows_the_input_order():
    masks, scores = clustered_masks(25, 7)
    permutation = torch.randperm(25, generator=torch.Generator().manual_seed(7))
    out = matrix_nms(masks, scores)
    torch.testing.assert_close(
        matrix_nms(masks[permutation], scores[permutation]), out[permutation]
    )


def test_equal_scores_rank_the_lower_index_first():
    masks, _ = clustered_masks(3, 8)
    masks[2] = masks[0]
    out = matrix_nms(masks[[0, 2]], torch.tensor([0.5, 0.5]))
    assert out.tolist() == pytest.approx([0.5, 0.5 * math.exp(-2.0)])


def test_zero_and_one_mask():
    empty = matrix_nms(torch.zeros(0, 5, 6, dtype=torch.bool), torch.zeros(0, dtype=torch.float64))
    assert empty.shape == (0,) and empty.dtype == torch.float64
    one = matrix_nms(torch.ones(1, 5, 6), torch.tensor([0.3]))
    assert one.tolist() == pytest.approx([0.3])


def test_mask_dtypes_layouts_and_score_dtypes_agree():
    masks, scores = clustered_masks(20, 9)
    out = matrix_nms(masks, scores)
    for other in (masks.float(), masks.to(torch.uint8), masks.double(), masks.transpose(1, 2)):
        torch.testing.assert_close(matrix_nms(other, scores), out, rtol=0, atol=0)
    torch.testing.assert_close(matrix_nms(masks, scores.double()).float(), out)
    half = matrix_nms(masks, scores.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), out, rtol=1e-3, atol=1e-3)


def test_float_gemm_used_off_cpu_agrees_with_int8_gemm(monkeypatch):
    masks, scores = clustered_masks(30, 11)
    labels = torch.randint(0, 2, (30,), generator=torch.Generator().manual_seed(11))
    expected = (matrix_nms(masks, scores, labels), mask_nms(masks, scores, labels))
    monkeypatch.setattr(
        matrix_nms_module, "_flatten_masks", lambda m: m.reshape(len(m), -1).to(torch.float32)
    )
    torch.testing.assert_close(matrix_nms(masks, scores, labels), expected[0])
    assert torch.equal(mask_nms(masks, scores, labels), expected[1])


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize(("num", "seed"), [(1, 0), (12, 1), (60, 2)])
def test_mask_nms_matches_brute_force(threshold, with_labels, num, seed):
    masks, scores = clustered_masks(num, seed)
    labels = torch.randint(0, 3, (num,), generator=torch.Generator().manual_seed(seed))
    labels = labels if with_labels else None
    kept = mask_nms(masks, scores, labels, iou_threshold=threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == loop_mask_nms(masks, scores, labels, threshold)
    flat = masks.numpy().reshape(num, -1)
    label_array = None if labels is None else labels.numpy()
    for a in kept.tolist():
        for b in kept.tolist():
            if a != b:
                assert pair_iou(flat, label_array, a, b) <= threshold


def test_mask_nms_respects_labels_ties_and_empty_input():
    masks, _ = clustered_masks(3, 10)
    masks[:] = masks[0]
    scores = torch.tensor([0.5, 0.5, 0.9])
    assert mask_nms(masks, scores).tolist() == [2]
    assert mask_nms(masks, scores, torch.tensor([0, 1, 1])).tolist() == [2, 0]
    assert mask_nms(masks, scores, torch.tensor([0, 0, 1])).tolist() == [2, 0]
    empty = mask_nms(torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0))
    assert empty.shape == (0,) and empty.dtype == torch.int64


MASKS = torch.zeros(3, 4, 4, dtype=torch.bool)
SCORES = torch.tensor([0.1, 0.2, 0.3])


@pytest.mark.parametrize("fn", [matrix_nms, mask_nms])
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("masks", (MASKS[0], SCORES)),
        ("masks", (MASKS.float() + 0.5, SCORES)),
        ("masks", ([[0]], SCORES)),
        ("scores", (MASKS, SCORES[:2])),
        ("scores", (MASKS, [0.1, 0.2, 0.3])),
        ("scores", (MASKS, torch.tensor([1, 2, 3]))),
        ("scores", (MASKS, torch.tensor([0.1, math.nan, 0.3]))),
        ("labels", (MASKS, SCORES, torch.tensor([0, 1]))),
        ("labels", (MASKS, SCORES, torch.tensor([0.0, 1.0, 2.0]))),
    ],
)
def test_bad_inputs_name_the_argument(fn, name, args):
    with pytest.raises(ValueError, match=name):
        fn(*args)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("kernel", {"kernel": "cosine"}),
        ("sigma", {"sigma": 0.0}),
        ("sigma", {"sigma": -1.0}),
        ("sigma", {"sigma": math.nan}),
    ],
)
def test_bad_matrix_nms_options_name_the_argument(name, kwargs):
    with pytest.raises(ValueError, match=name):
        matrix_nms(MASKS, SCORES, **kwargs)


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_bad_iou_threshold_names_the_argument(threshold):
    with pytest.raises(ValueError, match="iou_threshold"):
        mask_nms(MASKS, SCORES, iou_threshold=threshold)
