"""Object detection and instance segmentation: category names in, every match out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from unipercept.modeling.outputs import DecoderOutput
from unipercept.structures import CategoryPrompt, ImageBatch, Instances
from unipercept.tasks.base import (
    ImageTask,
    boxes_in_original,
    check_count,
    check_fraction,
    combined_scores,
    masks_in_original,
)
from unipercept.tasks.suppression import BoxNMS, Suppression

# The image tasks' default: one box per object, under its best-scored name. On the held-out
# generated world it takes the bundled model's box AP from 0.716 to 0.721 (AP50 0.851 to
# 0.863) and its answers on the sample image from 16 to 9 (python scripts/
# evaluate_bundled_model.py --tasks det). The tracking tasks (mot, mots, vis) apply it to each
# frame's detections too (tasks/video.py).
ONE_NAME_PER_OBJECT = BoxNMS(iou_threshold=0.9, across_labels=True)


class DetectionTask(ImageTask):
    """Boxes of every object of the asked categories.

    Args:
        score_threshold: results below this confidence are dropped.
        top_k: at most this many results per image (best over all query-category pairs).
        quality_weight: confidence is class probability^(1-w) * predicted IoU^w.
        suppression: duplicate removal (:class:`BoxNMS`, :class:`MaskNMS`,
            :class:`MatrixNMS`, or None). By default one answer per object: a box overlapping
            a better-scored one by IoU above 0.9 is dropped whatever its name
            (:data:`ONE_NAME_PER_OBJECT`), since a query that scores high for two names answers
            the same object twice.
    """

    name: ClassVar[str] = "det"
    prompt_kind: ClassVar[str] = "category"
    with_masks: ClassVar[bool] = False

    def __init__(
        self,
        *,
        score_threshold: float = 0.3,
        top_k: int = 100,
        quality_weight: float = 0.5,
        suppression: Suppression | None = ONE_NAME_PER_OBJECT,
    ) -> None:
        self.score_threshold = check_fraction("score_threshold", score_threshold)
        self.top_k = check_count("top_k", top_k)
        self.quality_weight = check_fraction("quality_weight", quality_weight)
        self.suppression = suppression

    def make_prompt(self, names: str | Sequence[str]) -> CategoryPrompt:
        """``"cat. dog"`` or ``["cat", "dog"]`` -> a category prompt (any names work)."""
        return (
            CategoryPrompt.parse(names) if isinstance(names, str) else CategoryPrompt(tuple(names))
        )

    def detections(
        self, output: DecoderOutput, images: ImageBatch, index: int, with_embeddings: bool = False
    ) -> Instances:
        """Image ``index``'s results; ``with_embeddings`` adds each result's association
        embedding (trackers need them)."""
        scores = combined_scores(output, self.quality_weight)[index]  # (Q, K)
        flat = scores.flatten()  # (Q*K,)
        top, position = flat.topk(min(self.top_k, flat.numel()))
        keep = top >= self.score_threshold
        top, position = top[keep], position[keep]
        classes = scores.shape[1]
        queries, labels = position // classes, position % classes
        fields = {
            "boxes": boxes_in_original(output, images, index, queries),
            "scores": top,
            "labels": labels,
        }
        if self.with_masks:
            fields["masks"] = masks_in_original(output, images, index, queries)
        if with_embeddings:
            fields["embeddings"] = output.embeddings[index, queries]
        instances = Instances(images.original_sizes[index], **fields)
        return self.suppression(instances) if self.suppression is not None else instances

    def postprocess(self, output: DecoderOutput, images: ImageBatch) -> list[Instances]:
        return [self.detections(output, images, index) for index in range(len(images))]


class InstanceSegmentationTask(DetectionTask):
    """Detection plus a mask for every result."""

    name: ClassVar[str] = "insseg"
    with_masks: ClassVar[bool] = True
