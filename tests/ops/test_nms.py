from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipercept.ops import batched_nms, nms
from unipercept.structures import box_iou

onnx_reference = pytest.importorskip("onnx.reference", reason="onnx is a dev dependency")
from onnx import helper  # noqa: E402


def onnx_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float):
    """ONNX NonMaxSuppression per class; boxes of other classes get a score below the cut."""
    num_classes = int(labels.max()) + 1
    class_scores = np.full((1, num_classes, len(boxes)), -1.0, dtype=np.float32)
    class_scores[0, labels.numpy(), np.arange(len(boxes))] = scores.numpy()
    node = helper.make_node(
        "NonMaxSuppression", ["boxes", "scores", "max", "iou", "score"], ["selected"]
    )
    evaluator = onnx_reference.ReferenceEvaluator(node)
    yxyx = boxes[:, [1, 0, 3, 2]].numpy()[None].astype(np.float32)
    (selected,) = evaluator.run(
        None,
        {
            "boxes": yxyx,
            "scores": class_scores,
            "max": np.array([len(boxes)], dtype=np.int64),
            "iou": np.array([threshold], dtype=np.float32),
            "score": np.array([-0.5], dtype=np.float32),
        },
    )
    return set(selected[:, 2].tolist())


def brute_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    iou = box_iou(boxes.double(), boxes.double())
    kept: list[int] = []
    for index in sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i)):
        if all(float(iou[index, k]) <= threshold for k in kept):
            kept.append(index)
    return kept


def clustered_boxes(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes jittered around a few centres, so that suppression really happens."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(5, 2, generator=generator) * 200
    pick = torch.randint(0, 5, (num,), generator=generator)
    centre = centres[pick] + torch.randn(num, 2, generator=generator) * 8
    size = 20 + torch.rand(num, 2, generator=generator) * 30
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    return boxes, torch.rand(num, generator=generator)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_onnx_reference_and_brute_force(threshold, seed):
    boxes, scores = clustered_boxes(120, seed)
    kept = nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64
    assert 0 < len(kept) < len(boxes)
    assert bool((scores[kept][:-1] >= scores[kept][1:]).all()), "not sorted by score"
    assert kept.tolist() == brute_nms(boxes, scores, threshold)
    assert set(kept.tolist()) == onnx_nms(
        boxes, scores, torch.zeros(120, dtype=torch.int64), threshold
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_batched_nms_matches_onnx_per_class(seed):
    boxes, scores = clustered_boxes(150, seed)
    labels = torch.randint(0, 4, (150,), generator=torch.Generator().manual_seed(seed))
    kept = batched_nms(boxes, scores, labels, 0.5)
    assert set(kept.tolist()) == onnx_nms(boxes, scores, labels, 0.5)
    assert bool((scores[kept][:-1] >= scores[kept][1:]).all())
    per_class = set()
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        per_class |= set(members[nms(boxes[members], scores[members], 0.5)].tolist())
    assert set(kept.tolist()) == per_class


def test_batched_nms_keeps_identical_boxes_of_different_labels():
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_ties_and_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    scores = torch.tensor([0.5, 0.5, 0.9])
    # Equal scores keep the lower index; a zero-area box suppresses nothing and is kept.
    assert nms(boxes, scores, 0.5).tolist() == [2, 0]
    assert nms(boxes, scores, 1.0).tolist() == [2, 0, 1]


def test_empty_input():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_nms_property_kept_boxes_do_not_overlap(num, threshold, seed):
    boxes, scores = clustered_boxes(num, seed)
    kept = nms(boxes, scores, threshold)
    iou = box_iou(boxes[kept], boxes[kept])
    off_diagonal = iou[~torch.eye(len(kept), dtype=torch.bool)]
    assert bool((off_diagonal <= threshold + 1e-6).all())
    # Every dropped box overlaps some kept box with a higher (or equal, earlier) score.
    dropped = sorted(set(range(num)) - set(kept.tolist()))
    for index in dropped:
        assert bool((box_iou(boxes[index : index + 1], boxes[kept]) > threshold).any())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(3, 4), torch.zeros(2), 0.5), r"scores must have shape \(3,\)"),
        ((torch.zeros(3, 5), torch.zeros(3), 0.5), r"shape \(\.\.\., 4\)"),
        ((torch.zeros(3, 4), torch.zeros(3), 1.5), r"iou_threshold must be in \[0, 1\]"),
        ((torch.full((1, 4), float("nan")), torch.zeros(1), 0.5), "must be finite"),
        ((torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5), "floating-point"),
    ],
)
def test_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        nms(*args)


def test_batched_nms_bad_labels():
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), 0.5)
