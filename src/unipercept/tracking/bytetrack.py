"""ByteTrack: association by box overlap alone, in two rounds, so that low-score detections
(often occluded objects) continue tracks instead of being thrown away.

Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box", ECCV 2022.
In place of ByteTrack's Kalman filter each track moves at constant velocity: the per-frame
displacement between its last two matched boxes (over the frames between them), extrapolated
over the frames since its last match. The paper's score fusion, unconfirmed tracks and
duplicate-track removal are left out; a new track is reported from its first frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unipercept.structures import Instances, box_iou
from unipercept.tracking.base import Tracker
from unipercept.tracking.matching import check_detections, check_fraction, hungarian_match


class ByteTrack(Tracker):
    """Two-threshold IoU tracker (ByteTrack).

    Per frame, with each track's box predicted at this frame: (1) detections scoring at least
    ``high_threshold`` are matched to all remembered tracks (live and lost) by IoU, by the
    Hungarian algorithm; (2) detections scoring in ``[low_threshold, high_threshold)`` are
    matched the same way to the tracks matched in the previous frame that (1) left over.
    IoU between different labels counts as 0. Unmatched high-score detections scoring above
    ``new_track_threshold`` start tracks; other unmatched detections are dropped. A track
    missing for more than ``max_lost`` frames is forgotten.

    Args:
        high_threshold: score from which a detection is matched in the first round.
        low_threshold: detections scoring below this are ignored.
        new_track_threshold: an unmatched high-score detection starts a track only above this.
        match_iou: IoU a pair needs (at least) in the first round.
        second_match_iou: IoU a pair needs (at least) in the second round.
        max_lost: frames a track is remembered without a match.
        use_motion: predict each track's box at constant velocity; otherwise its last box.
    """

    def __init__(
        self,
        *,
        high_threshold: float = 0.6,
        low_threshold: float = 0.1,
        new_track_threshold: float = 0.7,
        match_iou: float = 0.2,
        second_match_iou: float = 0.5,
        max_lost: int = 30,
        use_motion: bool = True,
    ) -> None:
        for name, value in (
            ("high_threshold", high_threshold),
            ("low_threshold", low_threshold),
            ("new_track_threshold", new_track_threshold),
            ("match_iou", match_iou),
            ("second_match_iou", second_match_iou),
        ):
            check_fraction(name, value)
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})"
            )
        if max_lost < 0:
            raise ValueError(f"max_lost must be >= 0, got {max_lost}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.new_track_threshold = new_track_threshold
        self.match_iou = match_iou
        self.second_match_iou = second_match_iou
        self.max_lost = max_lost
        self.use_motion = use_motion
        self.reset()

    def reset(self) -> None:
        self._next_id = 1
        self._ids = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._labels = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._boxes = torch.zeros(0, 4)  # (T, 4) last matched box
        self._velocity = torch.zeros(0, 4)  # (T, 4) box change per frame
        self._lost = torch.zeros(0, dtype=torch.int64)  # (T,) frames since the last match

    @property
    def num_tracks(self) -> int:
        return len(self._ids)

    def _state(self) -> tuple[Tensor, ...]:
        return self._ids, self._labels, self._boxes, self._velocity, self._lost

    def _match(
        self, predicted: Tensor, tracks: Tensor, detections: Instances, rows: Tensor, iou: float
    ) -> tuple[Tensor, Tensor]:
        """Detections ``rows`` against ``tracks``; returns matched (detection, track) indices."""
        overlap = box_iou(detections.boxes[rows], predicted[tracks])  # (R, C)
        same_label = detections.labels[rows][:, None] == self._labels[tracks][None, :]  # (R, C)
        overlap = torch.where(same_label, overlap, 0.0)
        matched_rows, matched_columns = hungarian_match(overlap, same_label & (overlap >= iou))
        return rows[matched_rows], tracks[matched_columns]

    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        check_detections(detections, ("boxes", "scores", "labels"), "ByteTrack")
        self._lost += 1  # 1 now for the tracks matched in the previous frame
        if len(detections) == 0:
            self._forget()
            return detections.replace(track_ids=self._ids.new_zeros(0))
        device = detections.boxes.device
        self._ids, self._labels, self._boxes, self._velocity, self._lost = (
            t.to(device) for t in self._state()
        )
        predicted = self._boxes  # (T, 4)
        if self.use_motion:
            predicted = self._boxes + self._velocity * self._lost[:, None]  # (T, 4)

        scores = detections.scores
        high = torch.nonzero(scores >= self.high_threshold).flatten()  # (H,)
        low = torch.nonzero((scores >= self.low_threshold) & (scores < self.high_threshold))
        low = low.flatten()  # (L,)
        track_of = torch.full((len(detections),), -1, dtype=torch.int64, device=device)  # (N,)
        everyone = torch.arange(self.num_tracks, device=device)  # (T,)
        rows, tracks = self._match(predicted, everyone, detections, high, self.match_iou)
        track_of[rows] = tracks
        # Only tracks seen in the previous frame may take a low-score detection: a long-lost
        # track's prediction is too uncertain to trust a weak detection near it.
        free = torch.ones(self.num_tracks, dtype=torch.bool, device=device)  # (T,)
        free[tracks] = False
        live = torch.nonzero(free & (self._lost == 1)).flatten()
        rows, tracks = self._match(predicted, live, detections, low, self.second_match_iou)
        track_of[rows] = tracks

        matched = track_of >= 0  # (N,)
        new = ~matched & (scores >= self.high_threshold) & (scores > self.new_track_threshold)
        tracks = track_of[matched]
        boxes = detections.boxes[matched].detach().to(self._boxes.dtype)  # (P, 4)
        self._velocity[tracks] = (boxes - self._boxes[tracks]) / self._lost[tracks, None]
        self._boxes[tracks] = boxes
        self._lost[tracks] = 0

        num_new = int(new.sum())
        new_ids = torch.arange(self._next_id, self._next_id + num_new, device=device)  # (n,)
        self._next_id += num_new
        track_of[new] = torch.arange(self.num_tracks, self.num_tracks + num_new, device=device)
        self._ids = torch.cat((self._ids, new_ids))
        self._labels = torch.cat((self._labels, detections.labels[new]))
        self._boxes = torch.cat((self._boxes, detections.boxes[new].detach().to(boxes.dtype)))
        self._velocity = torch.cat((self._velocity, self._velocity.new_zeros(num_new, 4)))
        self._lost = torch.cat((self._lost, torch.zeros_like(new_ids)))

        reported = matched | new  # (N,)
        track_ids = self._ids[track_of[reported]]  # (R,)
        self._forget()
        return detections[reported].replace(track_ids=track_ids)

    def _forget(self) -> None:
        """Drops the tracks missing for more than ``max_lost`` frames."""
        remembered = self._lost <= self.max_lost  # (T,)
        self._ids, self._labels, self._boxes, self._velocity, self._lost = (
            t[remembered] for t in self._state()
        )
