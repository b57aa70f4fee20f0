"""UNINEXT's image tasks: detection and instance segmentation over category names, referring
expression comprehension and segmentation.

Each follows ``UNINEXT_IMG.inference`` (``uninext_img.py:367-485``) and
``segmentation_postprocess`` (``models/ddetrs_dn.py:1278-1324``): class logits as the mean of
each category's token logits (or the pooled expression logit), scores
``sqrt(sigmoid(cls) * sigmoid(iou))``, NMS at IoU 0.7 within each query's best class, top-100
(detection) or top-1 (grounding); boxes scaled and clipped to the original image, masks upsampled,
cut at 0.5 and nearest-resized to it.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import Tensor

from unipercept.modeling.uninext.model import Uninext, UninextOutput
from unipercept.modeling.uninext.postprocess import (
    UninextDetections,
    binary_masks,
    rescale_boxes,
    rescale_detections,
    select_detections,
)
from unipercept.structures import ImageBatch, Instances, Prompt
from unipercept.tasks.base import Task, check_count, check_fraction
from unipercept.tasks.det import DetectionTask
from unipercept.tasks.rec import ReferringTask
from unipercept.tasks.uninext.common import (
    UninextText,
    class_logits,
    encode_category_text,
    encode_expression_text,
    masks_to_original,
    run_model,
)


class UninextImageTask(Task):
    """A UNINEXT task answered image by image: its prompt is encoded once (:meth:`encode`) and
    a batch is answered by :meth:`predict` (``unipercept.api.Predictor`` calls both).

    Attributes:
        shared_options: the options a project task of the same name passes on when it is given
            for a UNINEXT model (see :func:`unipercept.tasks.uninext.uninext_task`).
    """

    shared_options: ClassVar[tuple[str, ...]] = ()
    nms_iou: ClassVar[float] = 0.7  # UNINEXT's NMS within each query's best class
    top_k: int = 1  # (query, class) pairs kept: 1 for grounding

    @abstractmethod
    def encode(self, model: Uninext, prompt: Prompt) -> UninextText:
        """The prompt encoded by the model's text encoder."""

    def predict(
        self, model: Uninext, images: ImageBatch, prompt: Prompt | UninextText
    ) -> list[Instances]:
        """Per image, the results in its original pixels.

        Args:
            model: the UNINEXT model (in eval mode, under ``torch.no_grad``).
            images: the preprocessed batch.
            prompt: the task's prompt, or one already encoded by :meth:`encode`.
        """
        text = prompt if isinstance(prompt, UninextText) else self.encode(model, prompt)
        if text.pooled != (self.prompt_kind == "expression"):
            raise ValueError(f"{self.name} needs a {self.prompt_kind} prompt, got another kind")
        output = run_model(
            model,
            images,
            text.hidden,
            text.mask,
            pooled=text.pooled,
            # Masks are computed for the kept queries only (model.query_mask_logits).
            with_masks=False,
        )
        logits = class_logits(output, text)  # (B, Q, K)
        results = []
        for index in range(len(images)):
            image_size = images.image_sizes[index]
            detections = select_detections(
                logits[index],
                output.iou_logits[index],
                output.boxes[index],
                image_size=image_size,
                nms_iou=self.nms_iou,
                top_k=self.top_k,
            )
            results.append(
                self._answer(model, output, index, detections, images.original_sizes[index])
            )
        return results

    @abstractmethod
    def _answer(
        self,
        model: Uninext,
        output: UninextOutput,
        index: int,
        detections: UninextDetections,
        orig_size: tuple[int, int],
    ) -> Instances:
        """Image ``index``'s detections (at input size) as results in original pixels."""


class UninextDetectionTask(UninextImageTask):
    """Boxes of every object of the asked categories, UNINEXT's way.

    Args:
        score_threshold: results below this score are dropped (after the top-k). UNINEXT's COCO
            evaluation keeps all ``top_k`` (0.0); 0.3 is the project's default for display, as
            :class:`~unipercept.tasks.det.DetectionTask`.
        top_k: (query, category) pairs kept after NMS (UNINEXT: 100).
    """

    name: ClassVar[str] = "det"
    prompt_kind: ClassVar[str] = "category"
    with_masks: ClassVar[bool] = False
    shared_options: ClassVar[tuple[str, ...]] = ("score_threshold", "top_k")

    def __init__(self, *, score_threshold: float = 0.3, top_k: int = 100) -> None:
        self.score_threshold = check_fraction("score_threshold", score_threshold)
        self.top_k = check_count("top_k", top_k)

    # ``"cat. dog"`` or ``["cat", "dog"]`` -> a category prompt, as the project's task builds it.
    make_prompt = DetectionTask.make_prompt

    def encode(self, model: Uninext, prompt: Prompt) -> UninextText:
        return encode_category_text(model, prompt)

    def _answer(
        self,
        model: Uninext,
        output: UninextOutput,
        index: int,
        detections: UninextDetections,
        orig_size: tuple[int, int],
    ) -> Instances:
        if self.with_masks:
            logits = model.query_mask_logits(
                output, index, detections.query_index
            )  # (N, 1, H/4, W/4)
            masks = binary_masks(logits, image_size=detections.image_size)  # (N, h, w)
            detections = detections.with_masks(masks)
        final = rescale_detections(detections, orig_size=orig_size)
        keep = final.scores >= self.score_threshold  # (N,)
        fields = {
            "boxes": final.boxes_xyxy[keep],
            "scores": final.scores[keep],
            "labels": final.labels[keep],
        }
        if final.masks is not None:
            fields["masks"] = final.masks[keep]
        return Instances(orig_size, **fields)


class UninextInstanceSegmentationTask(UninextDetectionTask):
    """Detection plus a mask for every result."""

    name: ClassVar[str] = "insseg"
    with_masks: ClassVar[bool] = True


class UninextReferringTask(UninextImageTask):
    """The top-1 object for a referring expression: exactly one result per image.

    UNINEXT's ``segmentation_postprocess`` would drop the answer if its clipped box were empty
    (a zero-width box); it is kept here, so that every image has its answer.
    """

    name: ClassVar[str] = "rec"
    prompt_kind: ClassVar[str] = "expression"
    with_masks: ClassVar[bool] = False

    make_prompt = ReferringTask.make_prompt

    def encode(self, model: Uninext, prompt: Prompt) -> UninextText:
        return encode_expression_text(model, prompt)

    def _answer(
        self,
        model: Uninext,
        output: UninextOutput,
        index: int,
        detections: UninextDetections,
        orig_size: tuple[int, int],
    ) -> Instances:
        image_size = detections.image_size
        fields: dict[str, Tensor] = {
            "boxes": rescale_boxes(
                detections.boxes_xyxy, image_size=image_size, orig_size=orig_size
            ),
            "scores": detections.scores,
            "labels": detections.labels,
        }
        if self.with_masks:
            logits = model.query_mask_logits(
                output, index, detections.query_index
            )  # (1, 1, H/4, W/4)
            fields["masks"] = masks_to_original(logits, image_size=image_size, orig_size=orig_size)
        return Instances(orig_size, **fields)


class UninextReferringSegmentationTask(UninextReferringTask):
    """The top-1 object's mask for a referring expression."""

    name: ClassVar[str] = "res"
    with_masks: ClassVar[bool] = True
