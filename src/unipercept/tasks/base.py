"""What every task has: which prompt it builds, and how it turns model outputs into results."""

from __future__ import annotations

from abc import ABC, abstractmethod
from numbers import Real
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.modeling.outputs import DecoderOutput
from unipercept.structures import ImageBatch, Instances, Prompt, clip_boxes, denormalize_boxes


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float in [0, 1] (a score threshold, a weight).

    Raises:
        ValueError: anything but a finite real number in [0, 1] (a string, NaN, 5), naming it.
    """
    # NaN fails the range test too.
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_count(name: str, value: object) -> int:
    """``value`` as an integer >= 1 (top-k, an update interval).

    Raises:
        ValueError: a bool, a float, a string or a number below 1, naming it.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be >= 1 (an integer), got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0 (a width, a scale).

    Raises:
        ValueError: a bool, a string, NaN, infinity or a number <= 0, naming it.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Task(ABC):
    """A task builds its prompt from user input and reads the model's predictions.

    The model never sees the task: a task only decides which prompt to build and how to read
    the predictions (no task string reaches ``forward``). Image tasks post-process one batch;
    video tasks (:mod:`unipercept.tasks.video`) start a session that is fed frame by frame.
    """

    name: ClassVar[str]
    prompt_kind: ClassVar[str]
    with_masks: ClassVar[bool] = False

    @abstractmethod
    def make_prompt(self, *args, **kwargs) -> Prompt:
        """The prompt this task gives the model."""


class ImageTask(Task):
    """A task answered image by image."""

    @abstractmethod
    def postprocess(self, output: DecoderOutput, images: ImageBatch) -> list[Instances]:
        """Per image, the results in the coordinates of the image as the user gave it."""


def combined_scores(output: DecoderOutput, quality_weight: float) -> Tensor:
    """(B, Q, K) confidence: class probability^(1 - w) * predicted IoU^w of the last layer."""
    probability = output.logits[-1].sigmoid()  # (B, Q, K); padded rows are 0
    if quality_weight <= 0:
        return probability
    quality = output.quality[-1].sigmoid()[..., None]  # (B, Q, 1)
    return probability ** (1 - quality_weight) * quality**quality_weight


def boxes_in_original(
    output: DecoderOutput, images: ImageBatch, index: int, queries: Tensor
) -> Tensor:
    """(N, 4) xyxy boxes of ``queries`` of image ``index``, in its original pixels."""
    input_size = images.image_sizes[index]
    original = images.original_sizes[index]
    boxes = denormalize_boxes(output.boxes[-1][index, queries], input_size)  # input pixels
    scale = boxes.new_tensor([original[1] / input_size[1], original[0] / input_size[0]] * 2)
    return clip_boxes(boxes * scale, original)


def masks_in_original(
    output: DecoderOutput, images: ImageBatch, index: int, queries: Tensor, threshold: float = 0.5
) -> Tensor:
    """(N, H, W) bool masks of ``queries`` of image ``index`` at its original size."""
    batch_index = torch.full_like(queries, index)
    logits = output.mask_logits(-1, batch_index, queries)  # (N, h, w) on the padded grid
    height, width = images.image_sizes[index]
    original = images.original_sizes[index]
    if logits.shape[0] == 0:
        return torch.zeros((0, *original), dtype=torch.bool, device=logits.device)
    padded = F.interpolate(
        logits[:, None], scale_factor=output.mask_stride, mode="bilinear", align_corners=False
    )[:, :, :height, :width]  # (N, 1, h_in, w_in)
    resized = F.interpolate(padded, size=original, mode="bilinear", align_corners=False)[:, 0]
    return resized.sigmoid() >= threshold
