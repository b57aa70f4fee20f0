"""QDTrack's association: appearance embeddings compared with a bi-directional softmax.

Pang et al., "Quasi-Dense Similarity Learning for Multiple Object Tracking", CVPR 2021; the
tracker UNINEXT uses for MOT. Each track keeps one embedding, a moving average of the
embeddings of its matched detections. A detection and a track are similar when each is the
other's best candidate: the softmax of their dot product over all tracks (the detection's
view) and over all detections (the track's view) are averaged.

QDTrack's "backdrops" (low-score detections kept one frame as extra negatives) are left out:
low-score detections are dropped, as the tracker's output needs no more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.ops.nms import batched_nms
from unipercept.structures import Instances
from unipercept.tracking.base import Tracker
from unipercept.tracking.matching import (
    bisoftmax_similarity,
    check_detections,
    check_fraction,
    greedy_match,
)


class QDTrack(Tracker):
    """Quasi-dense similarity tracker (QDTrack).

    Per frame: detections scoring below ``match_score_threshold`` are dropped; duplicates are
    removed by class-aware NMS; the rest, by decreasing score, each take the free track of the
    same label with the highest bi-softmax similarity above ``match_threshold``. Unmatched
    detections scoring above ``init_score_threshold`` start tracks, the others are dropped.
    A track missing for more than ``max_lost`` frames is forgotten.

    Args:
        init_score_threshold: a detection starts a new track only when its score is above this.
        match_score_threshold: detections scoring below this are dropped before matching.
        match_threshold: similarity a detection needs (strictly above) to continue a track.
        memory_momentum: weight of a matched detection's embedding in its track's moving
            average (``memory = (1 - m) * memory + m * embedding``, as QDTrack).
        max_lost: frames a track is remembered without a match.
        nms_iou: detections of one label overlapping a higher-scoring one by IoU above this
            are dropped as duplicates.
        with_cosine: average the bi-softmax with the cosine similarity (QDTrack's TAO setting);
            this keeps unrelated embeddings apart when there are few tracks or detections,
            where the softmaxes alone are close to 1 whatever the embeddings.
    """

    def __init__(
        self,
        *,
        init_score_threshold: float = 0.5,
        match_score_threshold: float = 0.3,
        match_threshold: float = 0.5,
        memory_momentum: float = 0.8,
        max_lost: int = 10,
        nms_iou: float = 0.7,
        with_cosine: bool = False,
    ) -> None:
        for name, value in (
            ("init_score_threshold", init_score_threshold),
            ("match_score_threshold", match_score_threshold),
            ("match_threshold", match_threshold),
            ("memory_momentum", memory_momentum),
            ("nms_iou", nms_iou),
        ):
            check_fraction(name, value)
        if max_lost < 0:
            raise ValueError(f"max_lost must be >= 0, got {max_lost}")
        self.init_score_threshold = init_score_threshold
        self.match_score_threshold = match_score_threshold
        self.match_threshold = match_threshold
        self.memory_momentum = memory_momentum
        self.max_lost = max_lost
        self.nms_iou = nms_iou
        self.with_cosine = with_cosine
        self.reset()

    def reset(self) -> None:
        self._next_id = 1
        self._ids = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._labels = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._memory: Tensor | None = None  # (T, D), once the first track exists
        self._lost = torch.zeros(0, dtype=torch.int64)  # (T,) frames since the last match

    @property
    def num_tracks(self) -> int:
        return len(self._ids)

    def _match(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(K,) index of the track each candidate (by decreasing score) continues, -1 for none."""
        track_of = torch.full((len(labels),), -1, dtype=torch.int64, device=labels.device)
        if not (len(labels) and self.num_tracks):
            return track_of
        similarity = bisoftmax_similarity(embeddings, self._memory)  # (K, T)
        if self.with_cosine:
            cosine = F.normalize(embeddings, dim=1) @ F.normalize(self._memory, dim=1).T
            similarity = (similarity + cosine) / 2  # (K, T)
        # Labels mask the similarity after the softmaxes, as in QDTrack: tracks of other
        # labels still compete for a detection's softmax mass.
        similarity = torch.where(labels[:, None] == self._labels[None, :], similarity, 0.0)
        return greedy_match(similarity, self.match_threshold)

    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        check_detections(detections, ("boxes", "scores", "labels", "embeddings"), "QDTrack")
        self._lost += 1
        if len(detections) == 0:
            self._forget()
            return detections.replace(track_ids=self._ids.new_zeros(0))
        device = detections.boxes.device
        self._ids, self._labels, self._lost = (
            t.to(device) for t in (self._ids, self._labels, self._lost)
        )
        confident = torch.nonzero(detections.scores >= self.match_score_threshold).flatten()
        kept = batched_nms(
            detections.boxes[confident],
            detections.scores[confident],
            detections.labels[confident],
            self.nms_iou,
        )
        order = confident[kept]  # (K,) by decreasing score, as greedy matching needs
        # Stored in the memory: detached, so no caller's autograd graph outlives its frame.
        embeddings = detections.embeddings[order].detach()  # (K, D)
        labels = detections.labels[order]  # (K,)
        track_of = self._match(embeddings, labels)  # (K,)
        matched = track_of >= 0  # (K,)
        new = ~matched & (detections.scores[order] > self.init_score_threshold)  # (K,)

        tracks = track_of[matched]
        if len(tracks):
            m = self.memory_momentum
            self._memory[tracks] = (1 - m) * self._memory[tracks] + m * embeddings[matched]
            self._lost[tracks] = 0
        num_new = int(new.sum())
        new_ids = torch.arange(self._next_id, self._next_id + num_new, device=device)  # (n,)
        self._next_id += num_new
        track_ids = torch.zeros(len(order), dtype=torch.int64, device=device)  # (K,)
        track_ids[matched] = self._ids[tracks]
        track_ids[new] = new_ids
        if num_new:
            self._ids = torch.cat((self._ids, new_ids))
            self._labels = torch.cat((self._labels, labels[new]))
            self._lost = torch.cat((self._lost, torch.zeros_like(new_ids)))
            fresh = embeddings[new]
            self._memory = fresh if self._memory is None else torch.cat((self._memory, fresh))
        self._forget()

        reported = matched | new  # (K,)
        # Reported in the detections' own order, which callers may rely on.
        positions, perm = order[reported].sort()
        return detections[positions].replace(track_ids=track_ids[reported][perm])

    def _forget(self) -> None:
        """Drops the tracks missing for more than ``max_lost`` frames."""
        remembered = self._lost <= self.max_lost  # (T,)
        self._ids, self._labels, self._lost = (
            t[remembered] for t in (self._ids, self._labels, self._lost)
        )
        if self._memory is not None:
            self._memory = self._memory[remembered]
