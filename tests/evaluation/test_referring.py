from __future__ import annotations

import pytest
import torch

from unipercept.evaluation import referring_box_precision, referring_mask_iou


def test_box_precision_by_hand():
    truth = [torch.tensor([0.0, 0.0, 10.0, 10.0])] * 3
    predicted = [
        torch.tensor([0.0, 0.0, 10.0, 10.0]),  # IoU 1
        torch.tensor([0.0, 0.0, 10.0, 5.0]),  # IoU 0.5: counts
        torch.tensor([5.0, 5.0, 15.0, 15.0]),
    ]  # IoU 25 / 175
    result = referring_box_precision(predicted, truth)
    assert result.precision == pytest.approx(2 / 3) and result.count == 3
    assert result.mean_iou == pytest.approx((1 + 0.5 + 25 / 175) / 3)
    assert referring_box_precision(predicted, truth, threshold=0.6).precision == pytest.approx(
        1 / 3
    )


def test_mask_overall_and_mean_iou_by_hand():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True  # 8 pixels
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[:1] = True  # 4 pixels inside a
    empty = torch.zeros(4, 4, dtype=torch.bool)
    result = referring_mask_iou([b, a, empty], [a, a, empty])
    assert result.overall_iou == pytest.approx((4 + 8) / (8 + 8))
    assert result.mean_iou == pytest.approx((0.5 + 1 + 1) / 3)  # both empty: a perfect answer


def test_bad_inputs():
    box = torch.zeros(4)
    with pytest.raises(ValueError, match="1 predictions for 2 expressions"):
        referring_box_precision([box], [box, box])
    with pytest.raises(ValueError, match="no expressions"):
        referring_box_precision([], [])
    with pytest.raises(ValueError, match="differ in size"):
        referring_mask_iou([torch.zeros(2, 2)], [torch.zeros(3, 3)])


def test_perfect_answers_score_one_and_wrong_ones_zero():
    boxes = [torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([20.0, 5.0, 30.0, 25.0])]
    far = [box + 100 for box in boxes]
    assert referring_box_precision(boxes, boxes).precision == 1.0
    assert referring_box_precision(far, boxes).precision == 0.0
    masks = [torch.zeros(6, 6, dtype=torch.bool) for _ in range(2)]
    masks[0][:3] = True
    masks[1][:, 4:] = True
    perfect = referring_mask_iou(masks, masks)
    assert perfect.overall_iou == perfect.mean_iou == 1.0
    wrong = referring_mask_iou([~m for m in masks], masks)
    assert wrong.overall_iou == wrong.mean_iou == 0.0
