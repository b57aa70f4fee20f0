from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipercept.structures import (
    Boxes,
    box_area,
    box_convert,
    box_iou,
    boxes_to_masks,
    clip_boxes,
    denormalize_boxes,
    generalized_box_iou,
    normalize_boxes,
)


def random_boxes(num: int, seed: int, scale: float = 100.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(num, 2, generator=generator, dtype=torch.float64) * scale
    size = torch.rand(num, 2, generator=generator, dtype=torch.float64) * scale / 2
    return torch.cat((corner, corner + size), dim=1)


def brute_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_giou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(finite, finite, st.floats(0, 500), st.floats(0, 500)), min_size=1))
def test_conversions_round_trip(rows):
    xywh = torch.tensor(rows, dtype=torch.float64)
    for fmt in ("xyxy", "cxcywh"):
        there = box_convert(xywh, "xywh", fmt)
        back = box_convert(there, fmt, "xywh")
        torch.testing.assert_close(back, xywh, atol=1e-9, rtol=1e-9)
    xyxy = box_convert(xywh, "xywh", "xyxy")
    torch.testing.assert_close(xyxy[:, 2:] - xyxy[:, :2], xywh[:, 2:])


def test_conversion_values():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert box_convert(xyxy, "xyxy", "xyxy") is not xyxy
    with pytest.raises(ValueError, match="out_fmt"):
        box_convert(xyxy, "xyxy", "yxyx")
    with pytest.raises(ValueError, match="floating-point"):
        box_convert(torch.tensor([[1, 2, 3, 4]]), "xyxy", "xywh")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        box_convert(torch.zeros(3, 5), "xyxy", "xywh")


def test_iou_matches_brute_force_and_pycocotools():
    boxes1, boxes2 = random_boxes(17, 0), random_boxes(11, 1)
    ours = box_iou(boxes1, boxes2)
    brute = torch.tensor(
        [[brute_iou(a, b) for b in boxes2.tolist()] for a in boxes1.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(ours, brute)
    xywh1 = box_convert(boxes1, "xyxy", "xywh").numpy()
    xywh2 = box_convert(boxes2, "xyxy", "xywh").numpy()
    coco = mask_utils.iou(xywh1, xywh2, [0] * len(xywh2))
    np.testing.assert_allclose(ours.numpy(), coco, atol=1e-12)


def test_iou_of_empty_boxes_is_zero_not_nan():
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(point, point).item() == 0.0
    assert box_iou(torch.zeros(0, 4), point).shape == (0, 1)


def test_giou_matches_brute_force():
    boxes1, boxes2 = random_boxes(9, 2), random_boxes(13, 3)
    ours = generalized_box_iou(boxes1, boxes2)
    brute = torch.tensor(
        [[brute_giou(a, b) for b in boxes2.tolist()] for a in boxes1.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(ours, brute)
    assert bool((ours <= 1).all() and (ours >= -1).all())
    torch.testing.assert_close(
        torch.diag(generalized_box_iou(boxes1, boxes1)), torch.ones(9, dtype=torch.float64)
    )


def test_giou_rejects_inverted_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[2.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="boxes2 has boxes with x2 < x1"):
        generalized_box_iou(good, bad)


def test_area_and_clip():
    boxes = torch.tensor([[-5.0, -5.0, 10.0, 10.0], [5.0, 5.0, 50.0, 40.0], [3.0, 3.0, 1.0, 4.0]])
    assert box_area(boxes).tolist() == [225.0, 1575.0, 0.0]
    clipped = clip_boxes(boxes, (30, 20))
    assert clipped.tolist() == [[0, 0, 10, 10], [5, 5, 20, 30], [3, 3, 1, 4]]


def test_boxes_to_masks_matches_pycocotools_rasterisation():
    boxes = torch.tensor([[0.0, 0.0, 7.0, 5.0], [3.0, 2.0, 19.0, 13.0], [12.0, 8.0, 20.0, 15.0]])
    height, width = 15, 20
    ours = boxes_to_masks(boxes, (height, width))
    coco_rles = mask_utils.frPyObjects(
        box_convert(boxes, "xyxy", "xywh").double().numpy(), height, width
    )
    coco = torch.from_numpy(mask_utils.decode(coco_rles)).permute(2, 0, 1).bool()
    assert torch.equal(ours, coco)
    assert ours.sum(dim=(1, 2)).tolist() == box_area(boxes).tolist()


def test_boxes_class():
    boxes = Boxes.from_format(torch.tensor([[5.0, 5.0, 10.0, 4.0], [0.0, 0.0, 0.0, 2.0]]), "cxcywh")
    assert len(boxes) == 2
    assert boxes.tensor.tolist() == [[0.0, 3.0, 10.0, 7.0], [0.0, -1.0, 0.0, 1.0]]
    assert boxes.nonempty().tolist() == [True, False]
    assert boxes[boxes.nonempty()].tensor.shape == (1, 4)
    assert boxes[1].tensor.shape == (1, 4)
    assert Boxes.cat([boxes, boxes[0]]).tensor.shape == (3, 4)
    assert boxes.clip((6, 8)).tensor.tolist() == [[0.0, 3.0, 8.0, 6.0], [0.0, 0.0, 0.0, 1.0]]
    torch.testing.assert_close(boxes.convert("cxcywh")[0], torch.tensor([5.0, 5.0, 10.0, 4.0]))
    assert Boxes(torch.zeros(0)).tensor.shape == (0, 4)
    assert boxes.to("cpu").device.type == "cpu"


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.zeros(4), r"shape \(N, 4\)"),
        (torch.zeros(2, 3), r"shape \(\.\.\., 4\)"),
        (torch.zeros(2, 4, dtype=torch.int64), "floating-point"),
        (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), "non-finite"),
    ],
)
def test_boxes_rejects_bad_tensors(tensor, message):
    with pytest.raises(ValueError, match=message):
        Boxes(tensor)
    with pytest.raises(ValueError, match="Boxes.cat needs"):
        Boxes.cat([])


def test_normalize_and_denormalize_boxes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 100.0, 50.0]])
    normalized = normalize_boxes(boxes, (50, 100))
    torch.testing.assert_close(
        normalized, torch.tensor([[0.2, 0.8, 0.2, 0.8], [0.5, 0.5, 1.0, 1.0]])
    )
    torch.testing.assert_close(denormalize_boxes(normalized, (50, 100)), boxes)
