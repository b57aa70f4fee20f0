"""ByteTrack: association by box overlap alone, in two rounds, so that low-score detections
(often occluded objects) continue tracks instead of being thrown away.

Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box", ECCV 2022.
As in the paper, each track's box moves by a constant-velocity Kalman filter over ``(cx, cy,
aspect, height)`` (:mod:`unipercept.tracking.kalman`), predicted every frame, lost tracks
included, and corrected by each matched detection; detections are matched to the predicted
boxes. The paper's score fusion, unconfirmed tracks and duplicate-track removal are left out;
a new track is reported from its first frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unipercept.structures import Instances, box_iou
from unipercept.tracking.base import Tracker
from unipercept.tracking.kalman import BoxKalmanFilter, xyah_to_xyxy, xyxy_to_xyah
from unipercept.tracking.matching import check_detections, check_fraction, hungarian_match

MOTIONS = ("kalman", "constant_velocity", "none")
# The tensors, one row per track, that make the tracker's state (saved in session snapshots).
_STATE = ("_ids", "_labels", "_lost", "_boxes", "_velocity", "_mean", "_covariance")
_STATE_DTYPE = torch.float64  # Kalman covariances stay well conditioned over long predictions


class ByteTrack(Tracker):
    """Two-threshold IoU tracker (ByteTrack).

    Per frame, with each track's box predicted at this frame: (1) detections scoring at least
    ``high_threshold`` are matched to all remembered tracks (live and lost) by IoU, by the
    Hungarian algorithm; (2) detections scoring in ``[low_threshold, high_threshold)`` are
    matched the same way to the tracks matched in the previous frame that (1) left over.
    IoU between different labels counts as 0. Unmatched high-score detections scoring above
    ``new_track_threshold`` start tracks; other unmatched detections are dropped. A track
    missing for more than ``max_lost`` frames is forgotten.

    The state lives on the host in float64 whatever the detections' device: association is a
    Hungarian matching on the host anyway, and a handful of boxes moves in no time.

    Args:
        high_threshold: score from which a detection is matched in the first round.
        low_threshold: detections scoring below this are ignored.
        new_track_threshold: an unmatched high-score detection starts a track only above this.
        match_iou: IoU a pair needs (at least) in the first round.
        second_match_iou: IoU a pair needs (at least) in the second round.
        max_lost: frames a track is remembered without a match.
        motion: how a track's box is predicted at a new frame: ``"kalman"`` (ByteTrack's
            Kalman filter; a lost track keeps moving at its estimated velocity, its height
            velocity stopped, as in ByteTrack), ``"constant_velocity"`` (the displacement per
            frame between its last two matched boxes, extrapolated over the frames since its
            last match) or ``"none"`` (its last matched box).
        kalman_filter: the filter for ``motion="kalman"`` (default: ByteTrack's noise).
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
        motion: str = "kalman",
        kalman_filter: BoxKalmanFilter | None = None,
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
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.new_track_threshold = new_track_threshold
        self.match_iou = match_iou
        self.second_match_iou = second_match_iou
        self.max_lost = max_lost
        self.motion = motion
        self.kalman_filter = kalman_filter if kalman_filter is not None else BoxKalmanFilter()
        self.reset()

    def reset(self) -> None:
        self._next_id = 1
        self._ids = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._labels = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._lost = torch.zeros(0, dtype=torch.int64)  # (T,) frames since the last match
        self._boxes = torch.zeros(0, 4, dtype=_STATE_DTYPE)  # (T, 4) last matched box, xyxy
        self._velocity = torch.zeros(0, 4, dtype=_STATE_DTYPE)  # (T, 4) box change per frame
        self._mean = torch.zeros(0, 8, dtype=_STATE_DTYPE)  # (T, 8) Kalman state, xyah + rates
        self._covariance = torch.zeros(0, 8, 8, dtype=_STATE_DTYPE)  # (T, 8, 8)

    @property
    def num_tracks(self) -> int:
        return len(self._ids)

    def _predict(self) -> Tensor:
        """Moves every track to this frame; returns the (T, 4) xyxy predicted boxes."""
        if self.motion == "kalman":
            mean = self._mean.clone()
            # A lost track stops growing or shrinking (ByteTrack's multi_predict).
            mean[self._lost > 1, 7] = 0.0
            self._mean, self._covariance = self.kalman_filter.predict(mean, self._covariance)
            return xyah_to_xyxy(self._mean[:, :4])
        if self.motion == "constant_velocity":
            return self._boxes + self._velocity * self._lost[:, None]
        return self._boxes

    def _correct(self, tracks: Tensor, boxes: Tensor) -> None:
        """Moves ``tracks`` onto their matched (P, 4) xyxy ``boxes``."""
        if self.motion == "kalman":
            self._mean[tracks], self._covariance[tracks] = self.kalman_filter.update(
                self._mean[tracks], self._covariance[tracks], xyxy_to_xyah(boxes)
            )
        self._velocity[tracks] = (boxes - self._boxes[tracks]) / self._lost[tracks, None]
        self._boxes[tracks] = boxes
        self._lost[tracks] = 0

    def _match(
        self,
        predicted: Tensor,
        tracks: Tensor,
        boxes: Tensor,
        labels: Tensor,
        rows: Tensor,
        iou: float,
    ) -> tuple[Tensor, Tensor]:
        """Detections ``rows`` against ``tracks``; returns matched (detection, track) indices."""
        overlap = box_iou(boxes[rows], predicted[tracks])  # (R, C)
        same_label = labels[rows][:, None] == self._labels[tracks][None, :]  # (R, C)
        overlap = torch.where(same_label, overlap, 0.0)
        matched_rows, matched_columns = hungarian_match(overlap, same_label & (overlap >= iou))
        return rows[matched_rows], tracks[matched_columns]

    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        check_detections(detections, ("boxes", "scores", "labels"), "ByteTrack")
        # A restored session snapshot may have put the state on the model's device.
        for name in _STATE:
            setattr(self, name, getattr(self, name).cpu())
        self._lost += 1  # 1 now for the tracks matched in the previous frame
        predicted = self._predict()  # (T, 4), every frame: a lost track moves on too
        device = detections.boxes.device if detections.boxes is not None else None
        if len(detections) == 0:
            self._forget()
            return detections.replace(track_ids=self._ids.new_zeros(0, device=device))
        boxes = detections.boxes.detach().cpu().to(_STATE_DTYPE)  # (N, 4)
        scores = detections.scores.detach().cpu()  # (N,)
        labels = detections.labels.cpu()  # (N,)

        high = torch.nonzero(scores >= self.high_threshold).flatten()  # (H,)
        low = torch.nonzero((scores >= self.low_threshold) & (scores < self.high_threshold))
        low = low.flatten()  # (L,)
        track_of = torch.full((len(detections),), -1, dtype=torch.int64)  # (N,)
        everyone = torch.arange(self.num_tracks)  # (T,)
        rows, tracks = self._match(predicted, everyone, boxes, labels, high, self.match_iou)
        track_of[rows] = tracks
        # Only tracks seen in the previous frame may take a low-score detection: a long-lost
        # track's prediction is too uncertain to trust a weak detection near it.
        free = torch.ones(self.num_tracks, dtype=torch.bool)  # (T,)
        free[tracks] = False
        live = torch.nonzero(free & (self._lost == 1)).flatten()
        rows, tracks = self._match(predicted, live, boxes, labels, low, self.second_match_iou)
        track_of[rows] = tracks

        matched = track_of >= 0  # (N,)
        new = ~matched & (scores >= self.high_threshold) & (scores > self.new_track_threshold)
        self._correct(track_of[matched], boxes[matched])
        track_of[new] = self._start(boxes[new], labels[new])

        reported = matched | new  # (N,)
        track_ids = self._ids[track_of[reported]].to(device)  # (R,)
        self._forget()
        return detections[reported].replace(track_ids=track_ids)

    def _start(self, boxes: Tensor, labels: Tensor) -> Tensor:
        """Starts a track at each of the (n, 4) xyxy ``boxes``; returns their (n,) rows."""
        num_new = len(boxes)
        rows = torch.arange(self.num_tracks, self.num_tracks + num_new)  # (n,)
        mean, covariance = self.kalman_filter.initiate(xyxy_to_xyah(boxes))  # (n, 8), (n, 8, 8)
        self._ids = torch.cat((self._ids, torch.arange(self._next_id, self._next_id + num_new)))
        self._next_id += num_new
        self._labels = torch.cat((self._labels, labels))
        self._lost = torch.cat((self._lost, self._lost.new_zeros(num_new)))
        self._boxes = torch.cat((self._boxes, boxes))
        self._velocity = torch.cat((self._velocity, self._velocity.new_zeros(num_new, 4)))
        self._mean = torch.cat((self._mean, mean))
        self._covariance = torch.cat((self._covariance, covariance))
        return rows

    def _forget(self) -> None:
        """Drops the tracks missing for more than ``max_lost`` frames."""
        remembered = self._lost <= self.max_lost  # (T,)
        for name in _STATE:
            setattr(self, name, getattr(self, name)[remembered])
