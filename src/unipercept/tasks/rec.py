"""Referring expression comprehension and segmentation: a sentence in, the one object out."""

from __future__ import annotations

from typing import ClassVar

from unipercept.modeling.outputs import DecoderOutput
from unipercept.structures import ExpressionPrompt, ImageBatch, Instances
from unipercept.tasks.base import (
    ImageTask,
    boxes_in_original,
    check_fraction,
    combined_scores,
    masks_in_original,
)


class ReferringTask(ImageTask):
    """The top-1 query for the expression: exactly one box per image.

    Args:
        quality_weight: confidence is match probability^(1-w) * predicted IoU^w.
    """

    name: ClassVar[str] = "rec"
    prompt_kind: ClassVar[str] = "expression"
    with_masks: ClassVar[bool] = False

    def __init__(self, *, quality_weight: float = 0.5) -> None:
        self.quality_weight = check_fraction("quality_weight", quality_weight)

    def make_prompt(self, text: str) -> ExpressionPrompt:
        return ExpressionPrompt(text)

    def postprocess(self, output: DecoderOutput, images: ImageBatch) -> list[Instances]:
        scores = combined_scores(output, self.quality_weight)[..., 0]  # (B, Q): one prompt row
        results = []
        for index in range(scores.shape[0]):
            best = scores[index].argmax().view(1)
            fields = {
                "boxes": boxes_in_original(output, images, index, best),
                "scores": scores[index, best],
                "labels": best.new_zeros(1),
            }
            if self.with_masks:
                fields["masks"] = masks_in_original(output, images, index, best)
            results.append(Instances(images.original_sizes[index], **fields))
        return results


class ReferringSegmentationTask(ReferringTask):
    """The top-1 query's mask for the expression."""

    name: ClassVar[str] = "res"
    with_masks: ClassVar[bool] = True
