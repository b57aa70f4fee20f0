"""Video sessions: the typed state one video keeps between frames.

A session is started by a video task with the model and the prompt, fed frames one at a time
with :meth:`VideoSession.step`, and closed with :meth:`VideoSession.close`. Results are returned
frame by frame and not kept, so the state stays the same size however long the video is: the
encoded prompt (or one template per object), the tracker's live tracks, and a few counters.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unipercept.data.preprocess import ImagePreprocessor
from unipercept.modeling.outputs import DecoderOutput, PromptEmbedding
from unipercept.modeling.prompt import concat_templates, template_embedding
from unipercept.modeling.unipercept import UniPercept
from unipercept.precision import autocast, float32_instances
from unipercept.structures import AnnotationPrompt, ImageBatch, Instances, boxes_to_masks
from unipercept.tasks.base import boxes_in_original, combined_scores, masks_in_original
from unipercept.tasks.det import DetectionTask, InstanceSegmentationTask
from unipercept.tracking.base import Tracker


@dataclass(frozen=True)
class VideoSummary:
    """What a session knows once the video is over.

    Attributes:
        frames: frames processed.
        track_labels: per track id, (label, score): the one category and confidence of each
            track (VIS), from its detections' label scores over the video.
        voted_track: R-VOS whole-video vote: the trajectory with the highest mean score over
            all frames (replay the video with :meth:`ReferringSession.replay` to get its masks).
    """

    frames: int
    track_labels: dict[int, tuple[int, float]] = field(default_factory=dict)
    voted_track: int | None = None


class VideoSession(ABC):
    """One video being processed online. Use as a context manager or call :meth:`close`."""

    def __init__(self, *, model: UniPercept, preprocess: ImagePreprocessor) -> None:
        self.model = model
        self.preprocess = preprocess
        self.frames_seen = 0
        self.frame_size: tuple[int, int] | None = None  # (H, W) of the video's frames
        self.closed = False
        # The precision of each step's forward (set by Predictor(dtype=...)); results are
        # float32 whatever it is.
        self.dtype = torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def step(self, frame: Tensor) -> Instances:
        """Args:
            frame: (3, H, W) uint8 RGB, the next frame of the video.

        Returns:
            this frame's objects, in its pixels, with ``track_ids``.

        Raises:
            ValueError: a frame that is not (3, H, W), or not the size of the video's first
                frame (templates, tracks and masks are in that frame's pixels).
        """
        if self.closed:
            raise RuntimeError("this session is closed; start a new one for another video")
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(f"frame must be (3, H, W) RGB, got {tuple(frame.shape)}")
        size = (int(frame.shape[1]), int(frame.shape[2]))
        if self.frame_size is None:
            self.frame_size = size
        elif size != self.frame_size:
            raise ValueError(
                f"frame {self.frames_seen} is {size[1]}x{size[0]}, the video's frames are "
                f"{self.frame_size[1]}x{self.frame_size[0]}; a session follows one video of "
                "one size (resize the frame, or start a new session)"
            )
        with torch.no_grad(), autocast(self.device, self.dtype):
            result = self._step(frame)
        self.frames_seen += 1
        return float32_instances(result)

    def run(self, frames: Iterable[Tensor]) -> Iterator[Instances]:
        """Steps through ``frames`` (e.g. a :class:`~unipercept.data.video.FrameSource`'s
        frames), yielding each frame's results as it goes."""
        for frame in frames:
            yield self.step(frame[1] if isinstance(frame, tuple) else frame)

    @abstractmethod
    def _step(self, frame: Tensor) -> Instances: ...

    def close(self) -> VideoSummary:
        """Ends the session and returns what is known about the whole video."""
        self.closed = True
        return VideoSummary(frames=self.frames_seen)

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.closed:
            self.close()


class TrackingSession(VideoSession):
    """MOT, MOTS and VIS: the category prompt is encoded once; every frame's detections go to
    the tracker.

    Args:
        summarize_tracks: also sum each track's label scores over the video, so that
            :meth:`close` gives every track one category and score (VIS). This keeps a few
            numbers per track id ever reported: it grows with the number of objects, not of
            frames.
    """

    def __init__(
        self,
        *,
        model: UniPercept,
        preprocess: ImagePreprocessor,
        prompt: PromptEmbedding,
        detector: DetectionTask,
        tracker: Tracker,
        summarize_tracks: bool = False,
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        self.prompt = prompt
        self.detector = detector
        self.tracker = tracker
        self.summarize_tracks = summarize_tracks
        self._label_scores: dict[int, dict[int, float]] = {}
        self._appearances: dict[int, int] = {}

    def _step(self, frame: Tensor) -> Instances:
        batch = self.preprocess([frame], self.device)
        detections = self.detector.detections(
            self.model(batch, self.prompt), batch, 0, with_embeddings=True
        )
        tracked = self.tracker.update(detections, frame)
        if not self.summarize_tracks:
            return tracked
        for track, label, score in zip(
            tracked.track_ids.tolist(),
            tracked.labels.tolist(),
            tracked.scores.tolist(),
            strict=True,
        ):
            scores = self._label_scores.setdefault(track, {})
            scores[label] = scores.get(label, 0.0) + score
            self._appearances[track] = self._appearances.get(track, 0) + 1
        return tracked

    def close(self) -> VideoSummary:
        summary = super().close()
        labels = {}
        for track, scores in self._label_scores.items():
            label = max(scores, key=scores.get)
            labels[track] = (label, scores[label] / self._appearances[track])
        return dataclasses.replace(summary, track_labels=labels)


def proximity(boxes: Tensor, last: Tensor, missed: int, sigma: float) -> Tensor:
    """(N,) how near each of ``boxes`` (N, 4) is to ``last`` (4,), xyxy in the same pixels:
    ``exp(-d^2 / (2 r^2))``, ``d`` the distance between box centres and
    ``r = sigma * sqrt(w * h) * (1 + missed)``, ``w, h`` the last box's size (at least 1 px),
    so that the prior widens with every frame the object was not found."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    centre = (last[:2] + last[2:]) / 2
    size = ((last[2] - last[0]).clamp(min=1) * (last[3] - last[1]).clamp(min=1)).sqrt()
    radius = sigma * size * (1 + missed)
    return torch.exp(-0.5 * ((centres - centre) ** 2).sum(-1) / radius**2)


class AnnotationSession(VideoSession):
    """SOT and VOS: per object, the template of its annotation and its latest template; every
    frame the model looks for each object with both (their tokens joined into one prompt, as
    UNINEXT's online update and VOS's first-plus-previous templates). The first frame stepped
    is the annotated frame and returns the annotations themselves.

    Args:
        prompts: one annotation per object (track ids 1..K in this order).
        with_masks: report masks (VOS) as well as boxes.
        score_threshold: below this the object is reported absent for the frame.
        update_interval, update_threshold: every ``update_interval`` frames, an object found
            with at least ``update_threshold`` gets its latest template from the current frame
            (its mask for VOS, its box for SOT). The first template is never replaced. Until
            the first update the latest template is the first one, which answers exactly as the
            first template alone.
        motion_weight, motion_sigma, motion_threshold: a motion prior on which query is the
            object (as a Siamese tracker's cosine window): each query's score is weighed by
            ``(1 - motion_weight) + motion_weight * g`` to choose the answer, ``g`` (see
            :func:`proximity`) falling off with the distance of its box from the object's last
            box, in units of ``motion_sigma`` times that box's size. An answer scoring at least
            ``motion_threshold`` becomes the last box; below it the object counts as missed and
            the prior widens with every such frame. The reported score, and the
            ``score_threshold`` test, stay the model's own score of the chosen query. A
            ``motion_weight`` of 0 chooses by score alone.
    """

    def __init__(
        self,
        *,
        model: UniPercept,
        preprocess: ImagePreprocessor,
        prompts: list[AnnotationPrompt],
        with_masks: bool,
        score_threshold: float,
        update_interval: int,
        update_threshold: float,
        motion_weight: float = 0.0,
        motion_sigma: float = 1.0,
        motion_threshold: float = 0.0,
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        if not prompts:
            raise ValueError("prompts is empty: give one AnnotationPrompt per object")
        self.first = prompts
        self.with_masks = with_masks
        self.score_threshold = score_threshold
        self.update_interval = update_interval
        self.update_threshold = update_threshold
        self.motion_weight = motion_weight
        self.motion_sigma = motion_sigma
        self.motion_threshold = motion_threshold
        # Per object: its last found box (original pixels) and the frames missed since.
        self.last_boxes = torch.stack([p.box.float() for p in prompts]).cpu()  # (K, 4)
        self.frames_missed = torch.zeros(len(prompts), dtype=torch.int64)  # (K,)
        with torch.no_grad():
            self.first_templates = model.encode_prompts(prompts)
        self.latest_templates = self.first_templates

    @property
    def templates(self) -> PromptEmbedding:
        """The prompt the model searches with: each object's first and latest templates."""
        return concat_templates([self.first_templates, self.latest_templates])

    def _first_frame(self) -> Instances:
        fields = {
            "boxes": torch.stack([p.box for p in self.first]),
            "scores": torch.ones(len(self.first)),
            "labels": torch.zeros(len(self.first), dtype=torch.int64),
            "track_ids": torch.arange(1, len(self.first) + 1),
        }
        if self.with_masks:
            fields["masks"] = torch.stack(
                [
                    p.mask if p.mask is not None else boxes_to_masks(p.box[None], p.image_size)[0]
                    for p in self.first
                ]
            )
        return Instances(self.first[0].image_size, **fields)

    def _step(self, frame: Tensor) -> Instances:
        if self.frames_seen == 0:
            return self._first_frame()
        count = len(self.first)
        batch = self.preprocess([frame] * count, self.device)
        output = self.model(batch, self.templates)
        scores = combined_scores(output, 0.5)[..., 0]  # (K, Q)
        best = self._choose(output, batch, scores)  # (K,)
        found = scores[torch.arange(count), best] >= self.score_threshold  # (K,)
        objects = torch.nonzero(found).flatten().tolist()
        boxes, masks = [], []
        for k in objects:
            query = best[k].view(1)
            boxes.append(boxes_in_original(output, batch, k, query)[0])
            if self.with_masks:
                masks.append(masks_in_original(output, batch, k, query)[0])
        self._remember(output, batch, scores, best)
        size = (frame.shape[1], frame.shape[2])
        fields = {
            "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
            "scores": scores[objects, best[objects]] if objects else torch.zeros(0),
            "labels": torch.zeros(len(objects), dtype=torch.int64),
            "track_ids": torch.tensor([k + 1 for k in objects], dtype=torch.int64),
        }
        if self.with_masks:
            fields["masks"] = (
                torch.stack(masks) if masks else torch.zeros((0, *size), dtype=torch.bool)
            )
        result = Instances(size, **{k: v.cpu() for k, v in fields.items()})
        if self.frames_seen % self.update_interval == 0:
            self._update_templates(frame, result)
        return result

    def _choose(self, output: DecoderOutput, batch: ImageBatch, scores: Tensor) -> Tensor:
        """(K,) each object's answer: its best query by score under the motion prior."""
        if self.motion_weight == 0:
            return scores.argmax(1)
        queries = torch.arange(scores.shape[1], device=scores.device)
        prior = torch.stack(
            [
                proximity(
                    boxes_in_original(output, batch, k, queries).float(),
                    self.last_boxes[k].to(scores.device),
                    int(self.frames_missed[k]),
                    self.motion_sigma,
                )
                for k in range(scores.shape[0])
            ]
        )  # (K, Q)
        weight = self.motion_weight
        return (scores.float() * ((1 - weight) + weight * prior)).argmax(1)

    def _remember(
        self, output: DecoderOutput, batch: ImageBatch, scores: Tensor, best: Tensor
    ) -> None:
        """The motion prior's memory: answers scoring at least ``motion_threshold`` (found or
        not by ``score_threshold``) become their object's last box."""
        # New tensors, not updated in place: a snapshot taken earlier may share the old ones.
        last, missed = self.last_boxes.clone(), self.frames_missed + 1
        for k in range(len(best)):
            if float(scores[k, best[k]]) >= self.motion_threshold:
                last[k] = boxes_in_original(output, batch, k, best[k].view(1))[0].float().cpu()
                missed[k] = 0
        self.last_boxes, self.frames_missed = last, missed

    def _update_templates(self, frame: Tensor, result: Instances) -> None:
        for index in range(len(result)):
            if float(result.scores[index]) < self.update_threshold:
                continue
            box = result.boxes[index]
            if float(box[2] - box[0]) < 1 or float(box[3] - box[1]) < 1:
                continue
            mask = (
                result.masks[index] if self.with_masks and bool(result.masks[index].any()) else None
            )
            prompt = AnnotationPrompt(frame, box=None if mask is not None else box, mask=mask)
            fresh = self.model.encode_prompts([prompt])
            row = int(result.track_ids[index]) - 1
            latest = self.latest_templates
            tokens, valid = latest.tokens.clone(), latest.valid.clone()
            tokens[row], valid[row] = fresh.tokens[0], fresh.valid[0]
            self.latest_templates = template_embedding(tokens, valid)


class ReferringSession(VideoSession):
    """R-VOS: the expression is encoded once and its top-1 object reported every frame.

    With ``tracker_factory`` the session also follows the top candidates as trajectories and
    counts each one's scores, so :meth:`close` can vote for the trajectory with the highest
    mean score over the whole video (ReferFormer's offline mode) and :meth:`replay` can give its
    masks on a second pass, without keeping any frame.
    """

    def __init__(
        self,
        *,
        model: UniPercept,
        preprocess: ImagePreprocessor,
        prompt: PromptEmbedding,
        with_masks: bool,
        candidates: int = 5,
        tracker_factory: Callable[[], Tracker] | None = None,
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        self.prompt = prompt
        detector = InstanceSegmentationTask if with_masks else DetectionTask
        self.detector = detector(score_threshold=0.0, top_k=candidates)
        self.with_masks = with_masks
        self.tracker_factory = tracker_factory
        self.tracker = tracker_factory() if tracker_factory is not None else None
        self._score_sums: dict[int, float] = {}

    def _answer(self, frame: Tensor) -> tuple[Instances, Instances | None]:
        batch = self.preprocess([frame], self.device)
        output = self.model(batch, self.prompt)
        scores = combined_scores(output, 0.5)[0, :, 0]  # (Q,)
        best = scores.argmax().view(1)
        fields = {
            "boxes": boxes_in_original(output, batch, 0, best),
            "scores": scores[best],
            "labels": torch.zeros(1, dtype=torch.int64),
            "track_ids": torch.ones(1, dtype=torch.int64),
        }
        if self.with_masks:
            fields["masks"] = masks_in_original(output, batch, 0, best)
        top1 = Instances(batch.original_sizes[0], **fields)
        tracked = None
        if self.tracker is not None:
            detections = self.detector.detections(output, batch, 0, with_embeddings=True)
            tracked = self.tracker.update(detections, frame)
        return top1, tracked

    def _step(self, frame: Tensor) -> Instances:
        top1, tracked = self._answer(frame)
        if tracked is not None:
            for track, score in zip(
                tracked.track_ids.tolist(), tracked.scores.tolist(), strict=True
            ):
                self._score_sums[track] = self._score_sums.get(track, 0.0) + score
        return top1

    def close(self) -> VideoSummary:
        summary = super().close()
        if not self._score_sums:
            return summary
        # The mean over all frames, so a trajectory seen briefly counts for less.
        voted = max(self._score_sums, key=self._score_sums.get)
        return dataclasses.replace(summary, voted_track=voted)

    def replay(self, frames: Iterable[Tensor], track: int) -> Iterator[Instances]:
        """Second pass: the given trajectory's object in every frame (empty where it is not
        found). The same computations as the first pass rebuild the same trajectories."""
        if self.tracker_factory is None:
            raise ValueError("replay needs a session started with a tracker_factory (vote=True)")
        self.tracker = self.tracker_factory()
        with torch.no_grad():
            for frame in frames:
                image = frame[1] if isinstance(frame, tuple) else frame
                _, tracked = self._answer(image)
                chosen = tracked[tracked.track_ids == track]
                yield chosen.replace(track_ids=torch.ones(len(chosen), dtype=torch.int64))
