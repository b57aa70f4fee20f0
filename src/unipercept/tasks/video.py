"""Video tasks: SOT, VOS, MOT, MOTS, VIS and R-VOS. Each builds its prompt and starts a
:class:`~unipercept.tasks.session.VideoSession` that is fed one frame at a time."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from torch import Tensor

from unipercept.data.preprocess import ImagePreprocessor
from unipercept.modeling.unipercept import UniPercept
from unipercept.structures import AnnotationPrompt, CategoryPrompt, ExpressionPrompt, Prompt
from unipercept.tasks.base import Task, check_count, check_fraction, check_positive
from unipercept.tasks.det import ONE_NAME_PER_OBJECT, DetectionTask, InstanceSegmentationTask
from unipercept.tasks.session import (
    AnnotationSession,
    ReferringSession,
    TrackingSession,
    VideoSession,
)
from unipercept.tasks.suppression import Suppression
from unipercept.tracking.base import Tracker

TrackerFactory = Callable[[], Tracker]


class VideoTask(Task):
    """A task answered online, frame after frame, within a session."""

    @abstractmethod
    def start(
        self, model: UniPercept, prompt: Prompt | Sequence[Prompt], preprocess: ImagePreprocessor
    ) -> VideoSession:
        """A new session for one video."""


class SingleObjectTrackingTask(VideoTask):
    """SOT: the box of one target, given in the first frame, in every frame.

    Args:
        score_threshold: below this the target is reported absent for the frame.
        update_interval, update_threshold: template update (every ``update_interval`` frames,
            when found with at least ``update_threshold``).
        motion_weight, motion_sigma, motion_threshold: the motion prior that chooses among the
            queries (:class:`~unipercept.tasks.session.AnnotationSession`); a weight of 0
            chooses by score alone (the default; a model may set its own, see
            :mod:`unipercept.tasks.settings`).
    """

    name: ClassVar[str] = "sot"
    prompt_kind: ClassVar[str] = "annotation"

    def __init__(
        self,
        *,
        score_threshold: float = 0.5,
        update_interval: int = 10,
        update_threshold: float = 0.6,
        motion_weight: float = 0.0,
        motion_sigma: float = 1.0,
        motion_threshold: float = 0.0,
    ) -> None:
        self.score_threshold = check_fraction("score_threshold", score_threshold)
        self.update_interval = check_count("update_interval", update_interval)
        self.update_threshold = check_fraction("update_threshold", update_threshold)
        self.motion_weight = check_fraction("motion_weight", motion_weight)
        self.motion_sigma = check_positive("motion_sigma", motion_sigma)
        self.motion_threshold = check_fraction("motion_threshold", motion_threshold)

    def make_prompt(
        self, frame: Tensor, box: Tensor | Sequence[float] | None = None, mask: Tensor | None = None
    ) -> AnnotationPrompt:
        return AnnotationPrompt(frame, box=box, mask=mask)

    def start(
        self, model: UniPercept, prompt: Prompt | Sequence[Prompt], preprocess: ImagePreprocessor
    ) -> AnnotationSession:
        prompts = [prompt] if isinstance(prompt, AnnotationPrompt) else list(prompt)
        if not all(isinstance(p, AnnotationPrompt) for p in prompts):
            raise ValueError(
                f"{self.name} needs AnnotationPrompt(s): a box or mask in the first frame"
            )
        if not self.with_masks and len(prompts) != 1:
            raise ValueError(f"sot follows one target, got {len(prompts)} annotations (use vos)")
        return AnnotationSession(
            model=model,
            preprocess=preprocess,
            prompts=prompts,
            with_masks=self.with_masks,
            score_threshold=self.score_threshold,
            update_interval=self.update_interval,
            update_threshold=self.update_threshold,
            motion_weight=self.motion_weight,
            motion_sigma=self.motion_sigma,
            motion_threshold=self.motion_threshold,
        )


class VideoObjectSegmentationTask(SingleObjectTrackingTask):
    """VOS: the masks of one or several objects given in the first frame."""

    name: ClassVar[str] = "vos"
    with_masks: ClassVar[bool] = True


def _default_tracker() -> Tracker:
    from unipercept.tracking.qdtrack import QDTrack

    return QDTrack()


class MultiObjectTrackingTask(VideoTask):
    """MOT: every object of the named categories, with identities across frames.

    Args:
        tracker: makes a fresh tracker for each video (``conf/tracker/*``).
        score_threshold, top_k, quality_weight, suppression: per-frame detection, as in
            :class:`~unipercept.tasks.det.DetectionTask`. By default one answer per object
            per frame, as for images (:data:`~unipercept.tasks.det.ONE_NAME_PER_OBJECT`):
            a tracker that keeps labels apart (QDTrack) would otherwise follow an object
            answered under two names as two tracks, and start new ones as its best name
            flickers (47 tracks for 2 shapes on the sample video prompted with its six names;
            3 with it).
    """

    name: ClassVar[str] = "mot"
    prompt_kind: ClassVar[str] = "category"
    summarize_tracks: ClassVar[bool] = False

    def __init__(
        self,
        *,
        tracker: TrackerFactory = _default_tracker,
        score_threshold: float = 0.1,
        top_k: int = 100,
        quality_weight: float = 0.5,
        suppression: Suppression | None = ONE_NAME_PER_OBJECT,
    ) -> None:
        self.tracker = tracker
        detector = InstanceSegmentationTask if self.with_masks else DetectionTask
        self.detector = detector(
            score_threshold=score_threshold,
            top_k=top_k,
            quality_weight=quality_weight,
            suppression=suppression,
        )

    def make_prompt(self, names: str | Sequence[str]) -> CategoryPrompt:
        return self.detector.make_prompt(names)

    def start(
        self, model: UniPercept, prompt: Prompt | Sequence[Prompt], preprocess: ImagePreprocessor
    ) -> TrackingSession:
        if not isinstance(prompt, CategoryPrompt):
            raise ValueError(f"{self.name} needs a CategoryPrompt, got {type(prompt).__name__}")
        embedding = model.encode_prompts([prompt])  # once per video
        return TrackingSession(
            model=model,
            preprocess=preprocess,
            prompt=embedding,
            detector=self.detector,
            tracker=self.tracker(),
            summarize_tracks=self.summarize_tracks,
        )


class MultiObjectTrackingSegmentationTask(MultiObjectTrackingTask):
    """MOTS: MOT with a mask for every tracked object."""

    name: ClassVar[str] = "mots"
    with_masks: ClassVar[bool] = True


def _idol_tracker() -> Tracker:
    from unipercept.tracking.idol import IdolTracker

    return IdolTracker()


class VideoInstanceSegmentationTask(MultiObjectTrackingTask):
    """VIS: masks with identities; each track gets one category and score for the video
    (``session.close().track_labels``). IDOL's memory-bank tracker by default."""

    name: ClassVar[str] = "vis"
    with_masks: ClassVar[bool] = True
    summarize_tracks: ClassVar[bool] = True

    def __init__(self, *, tracker: TrackerFactory = _idol_tracker, **kwargs) -> None:
        super().__init__(tracker=tracker, **kwargs)


class ReferringVideoTask(VideoTask):
    """R-VOS: the object an expression names, in every frame.

    Args:
        vote: also follow the top candidates as trajectories, so that ``close()`` votes for
            the best one over the whole video and ``replay`` gives its masks (ReferFormer's
            offline mode); without it the answer is the online top-1 per frame.
        candidates: top candidates followed per frame for the vote.
        tracker: the trajectory tracker for the vote.
    """

    name: ClassVar[str] = "rvos"
    prompt_kind: ClassVar[str] = "expression"
    with_masks: ClassVar[bool] = True

    def __init__(
        self, *, vote: bool = False, candidates: int = 5, tracker: TrackerFactory = _default_tracker
    ) -> None:
        self.vote = vote
        self.candidates = candidates
        self.tracker = tracker

    def make_prompt(self, text: str) -> ExpressionPrompt:
        return ExpressionPrompt(text)

    def start(
        self, model: UniPercept, prompt: Prompt | Sequence[Prompt], preprocess: ImagePreprocessor
    ) -> ReferringSession:
        if not isinstance(prompt, ExpressionPrompt):
            raise ValueError(f"rvos needs an ExpressionPrompt, got {type(prompt).__name__}")
        return ReferringSession(
            model=model,
            preprocess=preprocess,
            prompt=model.encode_prompts([prompt]),
            with_masks=self.with_masks,
            candidates=self.candidates,
            tracker_factory=self.tracker if self.vote else None,
        )
