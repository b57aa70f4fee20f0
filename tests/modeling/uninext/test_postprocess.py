"""UNINEXT's post-processing reproduced from the fixture's recorded raw outputs (``out.*``):
NMS, top-k, boxes and masks at input and original size (det, grounding, SOT), and VOS's soft
aggregation and template update. Plus synthetic checks of the IoU-off score and of the
aggregation of several objects."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tests.modeling.uninext.conftest import unpack_masks
from unipercept.modeling.uninext.postprocess import (
    UninextDetections,
    binary_masks,
    mask_probabilities,
    nms_per_best_class,
    od_logits,
    query_scores,
    rescale_detections,
    select_detections,
    top_k_over_classes,
)
from unipercept.modeling.uninext.postprocess_video import (
    mask_bounding_box,
    probabilities_to_original,
    soft_aggregate,
    track_box,
    unscale_box,
    vos_template_update,
)

# The README: 1-2 mask bits may flip between runs where a logit is ~1e-6 from the cut.
MAX_DIFFERENT_MASK_PIXELS = 4


def _sizes(case, index: int) -> tuple[tuple[int, int], tuple[int, int]]:
    image_size = tuple(case["input.image_sizes"][index].tolist())
    orig_size = tuple(case["input.orig_sizes"][index].tolist())
    return image_size, orig_size


def _positive_map(case) -> torch.Tensor:
    if "input.positive_map" in case.tensors:
        return case["input.positive_map"]
    # Pooled prompts (grounding, SOT, VOS): one class whose single "token" is the pooled logit.
    return torch.ones(1, 1, dtype=torch.int64)


def _recorded_masks(case, prefix: str) -> torch.Tensor:
    """The fixture's per-detection masks: unique rows expanded by ``mask_index``."""
    height, width = case[f"{prefix}.mask_hw"].tolist()
    unique = unpack_masks(case[f"{prefix}.masks_packed_unique"], height, width)
    return unique[case[f"{prefix}.mask_index"]]


def _assert_masks_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert int((ours != ref).sum()) <= MAX_DIFFERENT_MASK_PIXELS


def _assert_same_detections(ours: UninextDetections, case, prefix: str) -> None:
    """Scores, boxes and classes compared by position (the inputs are the recorded raw
    outputs, so the order is reproducible; the (query, class) set check is separate)."""
    ref_boxes = case[f"{prefix}.boxes_xyxy"]
    ref_scores = case[f"{prefix}.scores"]
    assert len(ours) == ref_scores.shape[0]
    assert_close(ours.scores, ref_scores, rtol=0, atol=1e-5)
    atol_boxes = 1e-5 * float(ref_boxes.abs().max())
    assert_close(ours.boxes_xyxy, ref_boxes, rtol=0, atol=atol_boxes)
    assert torch.equal(ours.labels, case[f"{prefix}.classes"])


@pytest.mark.parametrize("name", ["det", "grounding"])
def test_image_selection_intermediates(uninext_case, name: str) -> None:
    case = uninext_case(name)
    logits = od_logits(case["out.pred_logits"], _positive_map(case))  # (B, Q, K)
    for i in range(logits.shape[0]):
        assert_close(logits[i], case[f"post.od_logits.img{i}"][0], rtol=0, atol=1e-5)
        scores = query_scores(logits[i], case["out.pred_iou_logits"][i])
        best, labels = scores.max(dim=-1)
        assert_close(best, case[f"post.nms_scores.img{i}"], rtol=0, atol=1e-6)
        assert torch.equal(labels, case[f"post.nms_labels.img{i}"])
        keep = nms_per_best_class(scores, case["out.pred_boxes_cxcywh"][i], 0.7)
        assert torch.equal(keep, case[f"post.nms_keep.img{i}"])
        top_k = case[f"post.topk_values.img{i}"].shape[0]
        values, indexes = top_k_over_classes(scores[keep], top_k)
        assert_close(values, case[f"post.topk_values.img{i}"], rtol=0, atol=1e-6)
        assert torch.equal(indexes, case[f"post.topk_indexes.img{i}"])


@pytest.mark.parametrize("name", ["det", "grounding"])
def test_image_detections_and_masks(uninext_case, name: str) -> None:
    case = uninext_case(name)
    logits = od_logits(case["out.pred_logits"], _positive_map(case))
    for i in range(logits.shape[0]):
        image_size, orig_size = _sizes(case, i)
        top_k = case[f"post.img{i}.query_index"].shape[0]
        dets = select_detections(
            logits[i],
            case["out.pred_iou_logits"][i],
            case["out.pred_boxes_cxcywh"][i],
            image_size=image_size,
            top_k=top_k,
        )
        assert torch.equal(dets.query_index, case[f"post.img{i}.query_index"])
        _assert_same_detections(dets, case, f"post.img{i}.input_res")
        mask_logits = case["out.pred_mask_logits"][i][dets.query_index]  # (N, 1, h4, w4)
        masks = binary_masks(mask_logits, image_size=image_size)
        _assert_masks_close(masks, _recorded_masks(case, f"post.img{i}.input_res"))

        final = rescale_detections(dets.with_masks(masks), orig_size=orig_size)
        assert final.image_size == orig_size
        _assert_same_detections(final, case, f"final.img{i}")
        _assert_masks_close(final.masks, _recorded_masks(case, f"final.img{i}"))


def test_detections_match_as_query_class_sets(uninext_case) -> None:
    """The (query, class) pairs of the final top-100 equal the recorded ones as a set, with the
    same score per pair (robust to swaps of nearly tied scores)."""
    case = uninext_case("det")
    logits = od_logits(case["out.pred_logits"], case["input.positive_map"])
    for i in range(logits.shape[0]):
        image_size, _ = _sizes(case, i)
        dets = select_detections(
            logits[i],
            case["out.pred_iou_logits"][i],
            case["out.pred_boxes_cxcywh"][i],
            image_size=image_size,
        )
        ours = {
            (int(q), int(c)): float(s)
            for q, c, s in zip(dets.query_index, dets.labels, dets.scores, strict=True)
        }
        ref = {
            (int(q), int(c)): float(s)
            for q, c, s in zip(
                case[f"post.img{i}.query_index"],
                case[f"post.img{i}.input_res.classes"],
                case[f"post.img{i}.input_res.scores"],
                strict=True,
            )
        }
        assert ours.keys() == ref.keys()
        assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-5


@pytest.mark.parametrize("prefix", ["search_online", "search_single"])
def test_sot_search_result(uninext_case, prefix: str) -> None:
    case = uninext_case("sot")
    image_size = tuple(case.meta["image_size"])
    orig_size = tuple(case.meta["orig_size"])
    logits = od_logits(case[f"{prefix}.out.pred_logits"], _positive_map(case))[0]
    scores = query_scores(logits, case[f"{prefix}.out.pred_iou_logits"][0])
    keep = nms_per_best_class(scores, case[f"{prefix}.out.pred_boxes_cxcywh"][0])
    assert torch.equal(keep, case[f"{prefix}.post.nms_keep.img0"])

    dets = select_detections(
        logits,
        case[f"{prefix}.out.pred_iou_logits"][0],
        case[f"{prefix}.out.pred_boxes_cxcywh"][0],
        image_size=image_size,
        top_k=1,
    )
    _assert_same_detections(dets, case, f"{prefix}.post.input_res")
    if f"{prefix}.out.pred_mask_logits" in case.tensors:
        mask_logits = case[f"{prefix}.out.pred_mask_logits"][0][dets.query_index]
        masks = binary_masks(mask_logits, image_size=image_size)
        _assert_masks_close(masks, _recorded_masks(case, f"{prefix}.post.input_res"))

    tracked = track_box(dets, orig_size=orig_size)
    assert_close(tracked.box_xyxy, case[f"{prefix}.final.box_xyxy"], rtol=0, atol=1e-4)
    assert_close(tracked.box_xywh, case[f"{prefix}.final.box_xywh"], rtol=0, atol=1e-4)
    assert tracked.score == pytest.approx(float(case[f"{prefix}.final.score"]), abs=1e-6)
    # The template update's box: the clipped original box mapped back (here the scale is 2).
    back = unscale_box(tracked.box_xyxy, image_size=image_size, orig_size=orig_size)
    assert_close(back, case[f"{prefix}.final.box_xyxy"] / 2, rtol=0, atol=1e-4)


def test_sot_mask_probabilities_threshold_to_recorded_masks(uninext_case) -> None:
    """The probability path (VOS) and the binary path (images) share the upsampling: the
    probabilities cut at 0.5 are the recorded binary masks."""
    case = uninext_case("sot")
    image_size = tuple(case.meta["image_size"])
    query = case["search_online.post.topk_indexes.img0"]  # one class: flat index = row
    query = case["search_online.post.nms_keep.img0"][query]
    probs = mask_probabilities(
        case["search_online.out.pred_mask_logits"][0][query], image_size=image_size
    )
    assert probs.shape == (1, *image_size)
    assert float(probs.min()) >= 0 and float(probs.max()) <= 1
    _assert_masks_close(probs > 0.5, _recorded_masks(case, "search_online.post.input_res"))


@pytest.mark.parametrize("frame", ["frame1", "frame2"])
def test_vos_frame(uninext_case, frame: str) -> None:
    case = uninext_case("vos")
    orig_size = tuple(case.meta["orig_size"])
    image_size = tuple(case["input.prompt_mask"].shape)
    logits = od_logits(case[f"{frame}.out.pred_logits"], _positive_map(case))[0]
    dets = select_detections(
        logits,
        case[f"{frame}.out.pred_iou_logits"][0],
        case[f"{frame}.out.pred_boxes_cxcywh"][0],
        image_size=image_size,
        top_k=1,
    )
    assert torch.equal(
        nms_per_best_class(
            query_scores(logits, case[f"{frame}.out.pred_iou_logits"][0]),
            case[f"{frame}.out.pred_boxes_cxcywh"][0],
        ),
        case[f"{frame}.post.nms_keep.img0"],
    )
    _assert_same_detections(dets, case, f"{frame}.post.input_res")
    tracked = track_box(dets, orig_size=orig_size)
    assert_close(tracked.box_xyxy, case[f"{frame}.final.box_xyxy"], rtol=0, atol=1e-4)
    assert tracked.score == pytest.approx(float(case[f"{frame}.final.score"]), abs=1e-6)

    # The fixture records no VOS mask logits: the aggregation starts from its probabilities.
    probs = case[f"{frame}.post.input_res.mask_probs"]  # (1, h, w)
    probs = probabilities_to_original(probs, orig_size=orig_size)
    label_map = soft_aggregate(probs)
    ref_map = case[f"{frame}.final.label_map"].long()
    assert int((label_map != ref_map).sum()) == 0


def test_vos_template_update(uninext_case) -> None:
    case = uninext_case("vos")
    orig_size = tuple(case.meta["orig_size"])
    image_size = tuple(case["input.prompt_mask"].shape)
    label_map = case["frame1.final.label_map"].long()
    assert mask_bounding_box(label_map == 1) == tuple(case.meta["steps"][0]["bounding_box_xywh"])
    update = vos_template_update(
        label_map,
        1,
        image_size=image_size,
        orig_size=orig_size,
        padded_size=tuple(case["input.frame1_image"].shape[-2:]),
    )
    assert update is not None
    assert_close(update.box_xyxy, case["template_update.box_xyxy"], rtol=0, atol=0)
    assert_close(update.prior_mask, case["template_update.prior_mask"], rtol=0, atol=0)
    assert vos_template_update(label_map, 2, image_size=image_size, orig_size=orig_size) is None


def test_template_update_pads_and_boxes_small_region() -> None:
    """A hand-made region: box from the extreme pixels, prior nearest-resized then padded."""
    label_map = torch.zeros(8, 12, dtype=torch.int64)
    label_map[2:6, 4:10] = 1  # rows 2..5, columns 4..9
    assert mask_bounding_box(label_map == 1) == (4, 2, 5, 3)
    update = vos_template_update(
        label_map, 1, image_size=(4, 6), orig_size=(8, 12), padded_size=(5, 8)
    )
    assert update is not None
    assert_close(update.box_xyxy, torch.tensor([[2.0, 1.0, 4.5, 2.5]]), rtol=0, atol=0)
    expected = torch.zeros(1, 5, 8)
    expected[0, 1:3, 2:5] = 1.0  # nearest sampling takes every second pixel of the region
    assert_close(update.prior_mask, expected, rtol=0, atol=0)


def test_scores_without_iou_branch_are_plain_sigmoid() -> None:
    cls_logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    iou_logits = torch.tensor([[1.0], [-2.0]])
    assert_close(query_scores(cls_logits, None), torch.sigmoid(cls_logits), rtol=0, atol=0)
    expected = torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(iou_logits))
    assert_close(query_scores(cls_logits, iou_logits), expected, rtol=0, atol=0)
    dets = select_detections(
        cls_logits,
        None,
        torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]),
        image_size=(10, 20),
        top_k=2,
    )
    # Best pair: query 1, class 1 (sigmoid(3)); then query 0, class 0 (sigmoid(2)).
    assert dets.query_index.tolist() == [1, 0] and dets.labels.tolist() == [1, 0]
    assert_close(dets.scores, torch.sigmoid(torch.tensor([3.0, 2.0])), rtol=0, atol=0)
    assert_close(dets.boxes_xyxy[1], torch.tensor([4.0, 2.0, 8.0, 4.0]), rtol=0, atol=1e-6)


def test_suppressed_queries_leave_top_k_with_all_classes() -> None:
    """NMS on the best class drops the whole query: its second class is not a candidate."""
    cls_logits = torch.tensor([[3.0, 0.0], [2.0, 2.5], [-1.0, -1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]])
    # Query 1's best class is 1, query 0's is 0: different classes, both kept.
    dets = select_detections(cls_logits, None, boxes, image_size=(1, 1), top_k=6)
    assert sorted(dets.query_index.tolist()) == [0, 0, 1, 1, 2, 2]
    # Same best class: query 1 (identical box, lower score) goes, with both its classes.
    cls_logits[1] = torch.tensor([2.5, 2.0])
    dets = select_detections(cls_logits, None, boxes, image_size=(1, 1), top_k=6)
    assert sorted(dets.query_index.tolist()) == [0, 0, 2, 2]


def test_od_logits_mean_of_tokens_and_empty_class() -> None:
    logits = torch.arange(12.0).view(1, 2, 6)
    positive_map = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    expected = torch.tensor([[[1.5, 5.0, 0.0], [7.5, 11.0, 0.0]]])
    assert_close(od_logits(logits, positive_map), expected, rtol=0, atol=0)


def test_soft_aggregate_two_objects_hand_computed() -> None:
    p1 = torch.tensor([[0.9, 0.3, 0.1], [0.6, 0.5, 0.2]])
    p2 = torch.tensor([[0.2, 0.6, 0.1], [0.7, 0.5, 0.25]])
    # background = (1 - p1) * (1 - p2):
    #   [[0.08, 0.28, 0.81], [0.12, 0.25, 0.60]]
    # (0,0): p1 0.9 wins; (0,1): p2 0.6; (0,2): background 0.81; (1,0): p2 0.7 > p1 0.6;
    # (1,1): p1 = p2 = 0.5 > 0.25, the tie goes to the lower label; (1,2): background 0.6.
    expected = torch.tensor([[1, 2, 0], [2, 1, 0]])
    assert torch.equal(soft_aggregate(torch.stack([p1, p2])), expected)
    assert torch.equal(soft_aggregate(torch.zeros(0, 2, 3)), torch.zeros(2, 3, dtype=torch.int64))
    # One object: it wins exactly where p > 1 - p; at p = 0.5 the background wins the tie.
    single = torch.tensor([[0.5, 0.51, 0.49]])
    assert soft_aggregate(single[:, None]).flatten().tolist() == [0, 1, 0]


def test_probabilities_to_original_is_bilinear() -> None:
    probs = torch.tensor([[[0.0, 1.0]]])  # (1, 1, 2)
    resized = probabilities_to_original(probs, orig_size=(1, 4))
    # align_corners False, x2: sample points at -0.25, 0.25, 0.75, 1.25 source pixels.
    assert_close(resized, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]), rtol=0, atol=1e-7)
