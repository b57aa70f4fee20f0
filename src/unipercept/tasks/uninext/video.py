"""UNINEXT's video tasks: each builds its prompt as the project's task of the same name (its
``make_prompt``) and starts a UNINEXT session (:mod:`~unipercept.tasks.uninext.templates`,
:mod:`~unipercept.tasks.uninext.tracking`), fed one frame at a time.

The defaults are UNINEXT's evaluation settings; the input resolution is the preprocessor's
(``Uninext.default_preprocess(video=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from unipercept.modeling.uninext.model import Uninext
from unipercept.modeling.uninext.preprocess import UninextPreprocessor
from unipercept.structures import AnnotationPrompt, CategoryPrompt, ExpressionPrompt, Prompt
from unipercept.tasks.base import check_count, check_fraction
from unipercept.tasks.det import DetectionTask
from unipercept.tasks.uninext.common import encode_category_text, encode_expression_text
from unipercept.tasks.uninext.templates import UninextSotSession, UninextVosSession
from unipercept.tasks.uninext.trackers import UninextIdolTracker, UninextQuasiDenseTracker
from unipercept.tasks.uninext.tracking import (
    UninextMotSession,
    UninextReferringVideoSession,
    UninextVisSession,
)
from unipercept.tasks.video import ReferringVideoTask, SingleObjectTrackingTask, VideoTask


def _annotations(name: str, prompt: Prompt | Sequence[Prompt]) -> list[AnnotationPrompt]:
    prompts = [prompt] if isinstance(prompt, AnnotationPrompt) else list(prompt)
    if not prompts or not all(isinstance(p, AnnotationPrompt) for p in prompts):
        raise ValueError(f"{name} needs AnnotationPrompt(s): a box or mask in the first frame")
    return prompts


class UninextSingleObjectTrackingTask(VideoTask):
    """SOT as UNINEXT evaluates it (see :class:`UninextSotSession`).

    Args:
        score_threshold: below this the target is reported absent (UNINEXT: 0.0, always
            reported).
        online_update: the first and latest templates together (UNINEXT: on).
        update_interval, update_threshold: the latest template's refresh (UNINEXT: every 200
            frames, when the score is above 0.7).
    """

    name: ClassVar[str] = "sot"
    prompt_kind: ClassVar[str] = "annotation"
    shared_options: ClassVar[tuple[str, ...]] = ("score_threshold",)

    def __init__(
        self,
        *,
        score_threshold: float = 0.0,
        online_update: bool = True,
        update_interval: int = 200,
        update_threshold: float = 0.7,
    ) -> None:
        self.score_threshold = check_fraction("score_threshold", score_threshold)
        self.online_update = online_update
        self.update_interval = check_count("update_interval", update_interval)
        self.update_threshold = check_fraction("update_threshold", update_threshold)

    make_prompt = SingleObjectTrackingTask.make_prompt

    def start(
        self, model: Uninext, prompt: Prompt | Sequence[Prompt], preprocess: UninextPreprocessor
    ) -> UninextSotSession:
        prompts = _annotations(self.name, prompt)
        if len(prompts) != 1:
            raise ValueError(f"sot follows one target, got {len(prompts)} annotations (use vos)")
        return UninextSotSession(
            model=model,
            preprocess=preprocess,
            prompt=prompts[0],
            score_threshold=self.score_threshold,
            online_update=self.online_update,
            update_interval=self.update_interval,
            update_threshold=self.update_threshold,
        )


class UninextVideoObjectSegmentationTask(VideoTask):
    """VOS as UNINEXT evaluates it (see :class:`UninextVosSession`).

    Args:
        score_threshold: objects scoring below this are left out of the frame's merge
            (UNINEXT: 0.0; 0.5 on YouTube-VOS 2018).
        update_threshold: score for a new previous template (UNINEXT: 0.7).
        update_padded_frames: also update templates on padded frames (see
            :class:`UninextVosSession`; UNINEXT does not).
    """

    name: ClassVar[str] = "vos"
    prompt_kind: ClassVar[str] = "annotation"
    with_masks: ClassVar[bool] = True
    shared_options: ClassVar[tuple[str, ...]] = ("score_threshold",)

    def __init__(
        self,
        *,
        score_threshold: float = 0.0,
        update_threshold: float = 0.7,
        update_padded_frames: bool = False,
    ) -> None:
        self.score_threshold = check_fraction("score_threshold", score_threshold)
        self.update_threshold = check_fraction("update_threshold", update_threshold)
        self.update_padded_frames = bool(update_padded_frames)

    make_prompt = SingleObjectTrackingTask.make_prompt

    def start(
        self, model: Uninext, prompt: Prompt | Sequence[Prompt], preprocess: UninextPreprocessor
    ) -> UninextVosSession:
        return UninextVosSession(
            model=model,
            preprocess=preprocess,
            prompts=_annotations(self.name, prompt),
            score_threshold=self.score_threshold,
            update_threshold=self.update_threshold,
            update_padded_frames=self.update_padded_frames,
        )


class UninextMultiObjectTrackingTask(VideoTask):
    """MOT as UNINEXT evaluates it on BDD100K (see :class:`UninextMotSession`).

    Args:
        score_threshold: queries whose best score is not above this are not tracked
            (UNINEXT's ``INFERENCE_SELECT_THRES``, 0.1).
        nms_iou: per-class NMS before the tracker (0.7).
        with_iou: score with the IoU branch (off in UNINEXT's evaluation).
        tracker: makes the association for each video.
    """

    name: ClassVar[str] = "mot"
    prompt_kind: ClassVar[str] = "category"
    with_masks: ClassVar[bool] = False
    shared_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        score_threshold: float = 0.1,
        nms_iou: float = 0.7,
        with_iou: bool = False,
        tracker: Callable[[], UninextQuasiDenseTracker] = UninextQuasiDenseTracker,
    ) -> None:
        self.score_threshold = check_fraction("score_threshold", score_threshold)
        self.nms_iou = check_fraction("nms_iou", nms_iou)
        self.with_iou = with_iou
        self.tracker = tracker

    make_prompt = DetectionTask.make_prompt

    def _session_options(self, model: Uninext, prompt: Prompt | Sequence[Prompt]) -> dict:
        if not isinstance(prompt, CategoryPrompt):
            raise ValueError(f"{self.name} needs a CategoryPrompt, got {type(prompt).__name__}")
        with torch.no_grad():
            text = encode_category_text(model, prompt)  # once per video
        return {
            "model": model,
            "text": text,
            "with_masks": self.with_masks,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "with_iou": self.with_iou,
            "tracker": self.tracker(),
        }

    def start(
        self, model: Uninext, prompt: Prompt | Sequence[Prompt], preprocess: UninextPreprocessor
    ) -> UninextMotSession:
        return UninextMotSession(preprocess=preprocess, **self._session_options(model, prompt))


class UninextMultiObjectTrackingSegmentationTask(UninextMultiObjectTrackingTask):
    """MOTS: MOT with a mask for every tracked object."""

    name: ClassVar[str] = "mots"
    with_masks: ClassVar[bool] = True


class UninextVideoInstanceSegmentationTask(UninextMultiObjectTrackingTask):
    """VIS as UNINEXT evaluates it (see :class:`UninextVisSession`); each track's category and
    score for the video come from ``session.close().track_labels``.

    Args:
        score_threshold, with_iou: as :class:`UninextMultiObjectTrackingTask`.
        nms_iou: per-class NMS before the tracker (VIS: 0.9).
        tracker: makes the association for each video (IDOL's).
    """

    name: ClassVar[str] = "vis"
    with_masks: ClassVar[bool] = True

    def __init__(
        self,
        *,
        score_threshold: float = 0.1,
        nms_iou: float = 0.9,
        with_iou: bool = False,
        tracker: Callable[[], UninextIdolTracker] = UninextIdolTracker,
    ) -> None:
        super().__init__(
            score_threshold=score_threshold, nms_iou=nms_iou, with_iou=with_iou, tracker=tracker
        )

    def start(
        self, model: Uninext, prompt: Prompt | Sequence[Prompt], preprocess: UninextPreprocessor
    ) -> UninextVisSession:
        return UninextVisSession(preprocess=preprocess, **self._session_options(model, prompt))


class UninextReferringVideoTask(VideoTask):
    """R-VOS as UNINEXT evaluates Ref-YouTube-VOS: the expression's top-1 mask per frame,
    online (see :class:`UninextReferringVideoSession`). Ref-DAVIS's merge of all of a video's
    expressions into one label map is left to the caller."""

    name: ClassVar[str] = "rvos"
    prompt_kind: ClassVar[str] = "expression"
    with_masks: ClassVar[bool] = True
    shared_options: ClassVar[tuple[str, ...]] = ()

    make_prompt = ReferringVideoTask.make_prompt

    def start(
        self, model: Uninext, prompt: Prompt | Sequence[Prompt], preprocess: UninextPreprocessor
    ) -> UninextReferringVideoSession:
        if not isinstance(prompt, ExpressionPrompt):
            raise ValueError(f"rvos needs an ExpressionPrompt, got {type(prompt).__name__}")
        with torch.no_grad():
            text = encode_expression_text(model, prompt)  # once per video
        return UninextReferringVideoSession(model=model, preprocess=preprocess, text=text)
