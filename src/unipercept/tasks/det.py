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
from unipercept.tasks.suppression import Suppression


class DetectionTask(ImageTask):
    """Boxes of every object of the asked categories.

    Args:
        score_threshold: results below this confidence are dropped.
        top_k: at most this many results per image (best over all query-category pairs).
        quality_weight: confidence is class probability^(1-w) * predicted IoU^w.
        suppression: optional duplicate removal (:class:`BoxNMS`, :class:`MaskNMS`,
            :class:`MatrixNMS`); DETR-style models rarely need it.
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
        suppression: Suppression | None = None,
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
