"""Post-processing maps predictions back to the user's image exactly; suppression options."""

from __future__ import annotations

import pytest
import torch

from unipercept.modeling.mask_head import dynamic_mask_params
from unipercept.modeling.outputs import DecoderOutput
from unipercept.structures import ImageBatch, Instances, boxes_to_masks
from unipercept.tasks import (
    TASKS,
    BoxNMS,
    DetectionTask,
    InstanceSegmentationTask,
    MaskNMS,
    MatrixNMS,
    ReferringSegmentationTask,
    ReferringTask,
)

MASK_DIM = 8


def right_of_centre_kernel() -> torch.Tensor:
    """Dynamic-conv parameters whose mask is 'x to the right of the box centre'."""
    hidden = 8
    w1 = torch.zeros(hidden, MASK_DIM + 2)
    w1[0, MASK_DIM] = 100.0  # relative x, scaled up
    w2 = torch.zeros(hidden, hidden)
    w2[0, 0] = 1.0
    w3 = torch.zeros(1, hidden)
    w3[0, 0] = 1.0
    b1, b2, b3 = torch.zeros(hidden), torch.zeros(hidden), torch.tensor([-0.5])
    kernel = torch.cat([w1.flatten(), w2.flatten(), w3.flatten(), b1, b2, b3])
    assert kernel.numel() == dynamic_mask_params(MASK_DIM)
    return kernel


def synthetic_output(
    logits: torch.Tensor, boxes: torch.Tensor, images: ImageBatch
) -> DecoderOutput:
    """One decoder layer; logits (B, Q, K), boxes (B, Q, 4) normalised cxcywh."""
    batch, queries, classes = logits.shape
    height, width = images.tensor.shape[-2:]
    return DecoderOutput(
        logits=logits[None],
        boxes=boxes[None],
        quality=torch.zeros(1, batch, queries),
        mask_kernels=right_of_centre_kernel().expand(1, batch, queries, -1),
        mask_features=torch.zeros(batch, MASK_DIM, height // 4, width // 4),
        mask_stride=4,
        embeddings=torch.zeros(batch, queries, 4),
        hidden_states=torch.zeros(1, batch, queries, 8),
        class_valid=torch.ones(batch, classes, dtype=torch.bool),
        image_sizes=torch.tensor(images.image_sizes),
    )


def resized_batch() -> ImageBatch:
    """One 80x120 input image that the user gave at 160x240 (twice the size)."""
    return ImageBatch.from_images([torch.zeros(3, 80, 120)], original_sizes=[(160, 240)])


def test_detection_keeps_the_top_scores_and_maps_boxes_to_the_original_image():
    images = resized_batch()
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 0, 1] = 3.0  # query 0 -> class 1, p = 0.95
    logits[0, 2, 0] = 1.0  # query 2 -> class 0, p = 0.73
    logits[0, 1, 0] = -1.0  # p = 0.27: below the threshold
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.2]]])
    results = DetectionTask(score_threshold=0.5, quality_weight=0.0).postprocess(
        synthetic_output(logits, boxes, images), images
    )
    (result,) = results
    assert result.image_size == (160, 240)
    assert result.labels.tolist() == [1, 0]
    torch.testing.assert_close(result.scores, torch.sigmoid(torch.tensor([3.0, 1.0])))
    # (0.5, 0.5, 0.5, 0.5) of a 120x80 input is x 30..90, y 20..60; doubled for the original.
    torch.testing.assert_close(result.boxes[0], torch.tensor([60.0, 40.0, 180.0, 120.0]))
    # The third box reaches outside the image and is clipped to it.
    torch.testing.assert_close(result.boxes[1], torch.tensor([0.0, 0.0, 120.0, 160.0]))
    assert result.masks is None


def test_top_k_limits_results():
    images = resized_batch()
    logits = torch.zeros(1, 5, 3)
    boxes = torch.full((1, 5, 4), 0.5)
    (result,) = DetectionTask(score_threshold=0.0, top_k=4, suppression=None).postprocess(
        synthetic_output(logits, boxes, images), images
    )
    assert len(result) == 4


def test_instance_masks_follow_the_box_centre_in_original_coordinates():
    images = resized_batch()
    logits = torch.full((1, 2, 1), -10.0)
    logits[0, 0, 0] = 5.0
    boxes = torch.tensor([[[0.25, 0.5, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]])
    (result,) = InstanceSegmentationTask(score_threshold=0.5).postprocess(
        synthetic_output(logits, boxes, images), images
    )
    assert result.masks.shape == (1, 160, 240) and result.masks.dtype == torch.bool
    columns = result.masks[0].any(0).nonzero().flatten()
    # Right of the centre x = 0.25 * 240 = 60 in the original image (within a stride).
    assert abs(int(columns.min()) - 60) <= 8 and int(columns.max()) == 239
    # The kernel reads only the x coordinate, so every row of the mask is the same.
    assert torch.equal(result.masks[0], result.masks[0][:1].expand(160, -1))


def test_referring_tasks_return_exactly_the_top_query():
    images = ImageBatch.from_images([torch.zeros(3, 64, 64), torch.zeros(3, 64, 96)])
    logits = torch.tensor([[[0.0], [2.0], [1.0]], [[3.0], [0.0], [-1.0]]])
    boxes = torch.rand(2, 3, 4) * 0.5 + 0.25
    output = synthetic_output(logits, boxes, images)
    rec = ReferringTask(quality_weight=0.0).postprocess(output, images)
    assert [len(r) for r in rec] == [1, 1]
    torch.testing.assert_close(rec[0].scores, torch.sigmoid(torch.tensor([2.0])))
    res = ReferringSegmentationTask().postprocess(output, images)
    assert res[1].masks.shape == (1, 64, 96)


def test_task_table_and_prompts():
    assert set(TASKS) == {"det", "insseg", "rec", "res", "sot", "vos", "mot", "mots", "vis", "rvos"}
    assert DetectionTask().make_prompt("cat. dog").names == ("cat", "dog")
    assert DetectionTask().make_prompt(["a", "b"]).names == ("a", "b")
    assert ReferringTask().make_prompt("the red one").text == "the red one"
    with pytest.raises(ValueError, match="names is empty"):
        DetectionTask().make_prompt("")
    with pytest.raises(ValueError, match="ExpressionPrompt.text is empty"):
        ReferringTask().make_prompt("  ")
    with pytest.raises(ValueError, match="quality_weight must be in"):
        DetectionTask(quality_weight=2.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        DetectionTask(top_k=0)


def duplicates() -> Instances:
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 50.0],
            [11.0, 11.0, 51.0, 51.0],
            [60.0, 60.0, 90.0, 90.0],
            [10.0, 10.0, 50.0, 50.0],
        ]
    )
    return Instances(
        (100, 100),
        boxes=boxes,
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        labels=torch.tensor([0, 0, 0, 1]),
        masks=boxes_to_masks(boxes, (100, 100)),
    )


@pytest.mark.parametrize("suppression", [BoxNMS(iou_threshold=0.5), MaskNMS(iou_threshold=0.5)])
def test_hard_suppression_drops_same_label_duplicates(suppression):
    kept = suppression(duplicates())
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert kept.labels.tolist() == [0, 0, 1]


def test_matrix_nms_decays_duplicates_and_drops_below_threshold():
    kept = MatrixNMS(score_threshold=0.3)(duplicates())
    assert kept.scores[0].item() == pytest.approx(0.9)
    # The near-duplicate (IoU ~0.9) decays by exp(-2 * IoU^2) and falls below 0.3.
    assert len(kept) == 3 and 0.8 not in [round(s, 2) for s in kept.scores.tolist()]
    assert bool((kept.scores[:-1] >= kept.scores[1:]).all())
    with pytest.raises(ValueError, match="needs instances with masks"):
        MatrixNMS()(duplicates().replace(masks=None))


def test_one_answer_per_object_by_default() -> None:
    """The image tasks drop a box that repeats a better-scored one under another name (IoU
    above 0.9); overlapping but distinct objects and per-name NMS are unchanged."""
    import torch

    from unipercept.structures import Instances
    from unipercept.tasks import BoxNMS, DetectionTask, InstanceSegmentationTask

    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 10], [0.5, 0, 10, 10], [0, 0, 10, 14], [20, 20, 30, 30]]
    )
    found = Instances(
        (40, 40),
        boxes=boxes,
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]),
        labels=torch.tensor([0, 1, 2, 0, 1]),
    )
    for task in (DetectionTask(), InstanceSegmentationTask()):
        kept = task.suppression(found)
        # The same box as "1" and a 0.95-IoU copy as "2" go; the 0.71-IoU box and the far one stay.
        assert kept.scores.tolist() == pytest.approx([0.9, 0.6, 0.5])
    per_name = BoxNMS(iou_threshold=0.9)(found)
    assert len(per_name) == 5
    assert DetectionTask(suppression=None).suppression is None
