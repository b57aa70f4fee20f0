"""UNINEXT's prompt-encoded-once video sessions: MOT/MOTS and VIS (detections associated by
their re-id embeddings) and R-VOS (the expression's top-1 object in every frame).

Per frame, MOT/MOTS (``inference_mot``, ``uninext_vid.py:1199-1291``) and VIS
(``inference_vis``, ``:1359-1469``) keep the queries whose best class score is above 0.1, after
NMS within each best class (IoU 0.7 for MOT, 0.9 for VIS), the best query when none is, and pass
them to the tracker; the tracked ones are reported in original pixels. The IoU branch is off in
UNINEXT's MOT and VIS evaluation (score ``sigmoid(cls)``); R-VOS keeps it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from unipercept.modeling.uninext.model import Uninext
from unipercept.modeling.uninext.postprocess import query_scores
from unipercept.modeling.uninext.preprocess import UninextPreprocessor
from unipercept.structures import Instances, clip_boxes
from unipercept.tasks.session import VideoSession, VideoSummary
from unipercept.tasks.uninext.common import (
    UninextText,
    boxes_to_original,
    class_logits,
    masks_to_original,
    run_model,
    select_for_tracking,
)
from unipercept.tasks.uninext.trackers import UninextIdolTracker, UninextQuasiDenseTracker

# UNINEXT's VIS drops a track as noise, after frame 8, when it was missed in the last two frames
# and seen fewer than 3 times (``uninext_vid.py:1455-1462``).
_NOISE_AFTER_FRAME = 8
_NOISE_MIN_FRAMES = 3


class _CategorySession(VideoSession):
    """The shared per-frame detection of MOT and VIS sessions."""

    def __init__(
        self,
        *,
        model: Uninext,
        preprocess: UninextPreprocessor,
        text: UninextText,
        with_masks: bool,
        score_threshold: float,
        nms_iou: float,
        with_iou: bool,
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        self.text = text
        self.with_masks = with_masks
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.with_iou = with_iou

    def _detect(self, frame: Tensor):
        """The frame's selected queries: (batch, output, queries (N,), scores (N, K))."""
        batch = self.preprocess([frame], self.device)
        output = run_model(
            self.model,
            batch,
            self.text.hidden,
            self.text.mask,
            pooled=False,
            with_masks=False,  # kept queries only: model.query_mask_logits
            with_embeddings=True,
        )
        if output.embeddings is None:
            raise ValueError(
                "this UNINEXT checkpoint has no re-id head (an image-stage model); MOT, MOTS "
                "and VIS need a video (stage-3) checkpoint"
            )
        logits = class_logits(output, self.text)[0]  # (Q, K)
        scores = query_scores(logits, output.iou_logits[0] if self.with_iou else None)  # (Q, K)
        queries = select_for_tracking(
            scores, output.boxes[0], threshold=self.score_threshold, nms_iou=self.nms_iou
        )  # (N,)
        return batch, output, queries, scores[queries]

    def _masks(self, batch, output, queries: Tensor, size: tuple[int, int]) -> Tensor:
        return masks_to_original(
            self.model.query_mask_logits(output, 0, queries),
            image_size=batch.image_sizes[0],
            orig_size=size,
        ).cpu()


class UninextMotSession(_CategorySession):
    """MOT and MOTS: every object of the prompt's categories, with identities; boxes are
    UNINEXT's, in original pixels and not clipped.

    Args:
        text: the encoded category prompt (once per video).
        with_masks: MOTS.
        score_threshold: UNINEXT's ``INFERENCE_SELECT_THRES`` (0.1): queries whose best score
            is not above it are not passed to the tracker.
        nms_iou: the per-class NMS before the tracker (0.7).
        with_iou: score with the IoU branch (off in UNINEXT's MOT evaluation).
        tracker: the association (one per video).
    """

    def __init__(self, *, tracker: UninextQuasiDenseTracker, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tracker = tracker

    def _step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        batch, output, queries, scores = self._detect(frame)
        best, labels = scores.max(dim=1)  # (N,), (N,)
        boxes = boxes_to_original(output.boxes[0][queries], size)  # (N, 4)
        positions, ids = self.tracker.match(boxes, best, labels, output.embeddings[0][queries])
        reported = positions[ids > -1]  # (M,)
        fields = {
            "boxes": boxes[reported].cpu(),
            "scores": best[reported].cpu(),
            "labels": labels[reported].cpu(),
            "track_ids": ids[ids > -1].cpu() + 1,
        }
        if self.with_masks:
            fields["masks"] = self._masks(batch, output, queries[reported], size)
        return Instances(size, **fields)


class UninextVisSession(_CategorySession):
    """VIS: masks with identities; :meth:`close` gives every track one category and score.

    A track's category and score come from the mean, over the frames it was reported in, of
    its per-class scores (UNINEXT's ``TEMPORAL_SCORE_TYPE`` "mean"): the best class and its
    mean. UNINEXT's ``MULTI_CLS_ON`` reports a track once per class above 0.05; the summary
    holds one category per track, the best. Tracks UNINEXT drops as noise (missed in the last
    two frames after frame 8, seen fewer than 3 times) cannot be taken back from the frames
    already returned: their summary score is 0, so they rank last; a dropped track seen again
    starts its score over, as UNINEXT starts a new entry.

    Args:
        text, with_masks, score_threshold, with_iou: as :class:`UninextMotSession`.
        nms_iou: the per-class NMS before the tracker (VIS: 0.9).
        tracker: the association (one per video).
    """

    def __init__(self, *, tracker: UninextIdolTracker, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tracker = tracker
        # UNINEXT id -> summed per-class scores, frames reported, last frame reported.
        self.score_sums: dict[int, Tensor] = {}
        self.appearances: dict[int, int] = {}
        self.last_seen: dict[int, int] = {}
        self.dropped: dict[int, int] = {}  # UNINEXT id -> label, for tracks dropped as noise

    def _step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        batch, output, queries, scores = self._detect(frame)
        best, labels = scores.max(dim=1)  # (N,), (N,)
        mask_logits = self.model.query_mask_logits(output, 0, queries)  # (N, 1, H/4, W/4)
        coarse = mask_logits[:, 0].sigmoid() > 0.5  # (N, H/4, W/4)
        positions, ids = self.tracker.match(best, coarse, output.embeddings[0][queries])
        reported = positions[ids > -1]  # (M,)
        ids = ids[ids > -1]
        boxes = clip_boxes(boxes_to_original(output.boxes[0][queries[reported]], size), size)
        result = Instances(
            size,
            boxes=boxes.cpu(),
            scores=best[reported].cpu(),
            labels=labels[reported].cpu(),
            masks=masks_to_original(
                mask_logits[reported], image_size=batch.image_sizes[0], orig_size=size
            ).cpu(),
            track_ids=ids.cpu() + 1,
        )
        self._summarize(ids.tolist(), scores[reported].cpu())
        return result

    def _summarize(self, ids: list[int], scores: Tensor) -> None:
        """Adds one frame's reported tracks and their (M, K) class scores."""
        frame = self.frames_seen
        for track, row in zip(ids, scores, strict=True):
            self.dropped.pop(track, None)
            self.score_sums[track] = self.score_sums.get(track, 0) + row.double()
            self.appearances[track] = self.appearances.get(track, 0) + 1
            self.last_seen[track] = frame
        if frame <= _NOISE_AFTER_FRAME:
            return
        for track in list(self.score_sums):
            if self.last_seen[track] < frame - 1 and self.appearances[track] < _NOISE_MIN_FRAMES:
                self.dropped[track] = int(self.score_sums[track].argmax())
                del self.score_sums[track], self.appearances[track], self.last_seen[track]

    def close(self) -> VideoSummary:
        summary = super().close()
        labels = {track + 1: (label, 0.0) for track, label in self.dropped.items()}
        for track, sums in self.score_sums.items():
            mean = sums / self.appearances[track]  # (K,)
            labels[track + 1] = (int(mean.argmax()), float(mean.max()))
        return dataclasses.replace(summary, track_labels=labels)


class UninextReferringVideoSession(VideoSession):
    """R-VOS: the expression's top-1 object (score ``sqrt(sigmoid(cls) * sigmoid(iou))``) in
    every frame, with its mask (``inference_rvos``, ``uninext_vid.py:1293-1341``).

    Args:
        text: the encoded expression (once per video).
    """

    def __init__(
        self, *, model: Uninext, preprocess: UninextPreprocessor, text: UninextText
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        self.text = text

    def _step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        batch = self.preprocess([frame], self.device)
        output = run_model(
            self.model, batch, self.text.hidden, self.text.mask, pooled=True, with_masks=False
        )
        scores = query_scores(output.logits[0], output.iou_logits[0])[:, 0]  # (Q,)
        query = scores.argmax().view(1)
        boxes = boxes_to_original(output.boxes[0][query], size)  # (1, 4)
        masks = masks_to_original(
            self.model.query_mask_logits(output, 0, query),
            image_size=batch.image_sizes[0],
            orig_size=size,
        )
        return Instances(
            size,
            boxes=clip_boxes(boxes, size).cpu(),
            scores=scores[query].cpu(),
            labels=torch.zeros(1, dtype=torch.int64),
            masks=masks.cpu(),
            track_ids=torch.ones(1, dtype=torch.int64),
        )
