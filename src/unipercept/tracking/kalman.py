"""The constant-velocity Kalman filter over boxes of SORT, DeepSORT and ByteTrack.

A box is tracked as ``(cx, cy, a, h)``, its centre, aspect ratio (width / height) and height,
with their velocities: the 8-dim state ``(cx, cy, a, h, vcx, vcy, va, vh)``. Each frame moves a
box by its velocity (:meth:`BoxKalmanFilter.predict`); a matched detection corrects position,
shape and velocity by the Kalman gain (:meth:`BoxKalmanFilter.update`). The noise is DeepSORT's
and ByteTrack's: standard deviations proportional to the box's height (1/20 of it for positions,
1/160 for velocities), fixed ones for the aspect ratio.

Wojke et al., "Simple Online and Realtime Tracking with a Deep Association Metric", ICIP 2017;
Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box", ECCV 2022.
Every method works on a batch of tracks at once: a frame's update is a few tensor operations,
whatever the number of tracks.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A box of no height has no aspect ratio: heights are taken to be at least this, in pixels. Far
# below a pixel: an untrained model's boxes may be a tenth of one, and must still match.
MIN_HEIGHT = 1e-4


def xyxy_to_xyah(boxes: Tensor) -> Tensor:
    """(N, 4) xyxy boxes as (N, 4) ``(cx, cy, width / height, height)``; heights below
    :data:`MIN_HEIGHT` count as :data:`MIN_HEIGHT`."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    height = (y1 - y0).clamp(min=MIN_HEIGHT)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / height, height), dim=-1)


def xyah_to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) ``(cx, cy, width / height, height)`` boxes as (N, 4) xyxy (a negative height or
    width, which a prediction may reach, becomes 0)."""
    cx, cy, aspect, height = boxes.unbind(-1)
    height = height.clamp(min=0.0)
    width = (aspect * height).clamp(min=0.0)
    return torch.stack((cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2), dim=-1)


class BoxKalmanFilter:
    """Constant-velocity Kalman filter over ``(cx, cy, a, h)`` boxes, for a batch of tracks.

    The filter holds no tracks: the caller keeps each track's mean and covariance and passes
    them in, as ByteTrack's ``KalmanFilter`` does. All tensors must share a floating dtype
    (float64 keeps the covariances well conditioned over long predictions).

    Args:
        std_weight_position: standard deviation of position and height noise, as a fraction
            of the box's height.
        std_weight_velocity: the same for their velocities, per frame.
    """

    STATE_DIM = 8
    MEASUREMENT_DIM = 4

    def __init__(
        self, *, std_weight_position: float = 1.0 / 20, std_weight_velocity: float = 1.0 / 160
    ) -> None:
        for name, value in (
            ("std_weight_position", std_weight_position),
            ("std_weight_velocity", std_weight_velocity),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.std_weight_position = std_weight_position
        self.std_weight_velocity = std_weight_velocity

    def initiate(self, measurements: Tensor) -> tuple[Tensor, Tensor]:
        """Starts tracks at their first boxes, at rest and uncertain about their velocity.

        Args:
            measurements: (N, 4) ``(cx, cy, a, h)`` boxes.

        Returns:
            ``(mean, covariance)``: (N, 8) states and (N, 8, 8) diagonal covariances.
        """
        height = measurements[:, 3]  # (N,)
        std = _state_std(
            height, 2 * self.std_weight_position * height, 10 * self.std_weight_velocity * height
        )  # (N, 8)
        mean = torch.cat((measurements, torch.zeros_like(measurements)), dim=1)  # (N, 8)
        return mean, torch.diag_embed(std.square())

    def predict(self, mean: Tensor, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """Moves the tracks one frame ahead.

        Args:
            mean: (N, 8) states.
            covariance: (N, 8, 8) their covariances.

        Returns:
            ``(mean, covariance)`` a frame later: ``F x`` and ``F P F^T + Q``, with the process
            noise ``Q`` scaled by each box's height before the step.
        """
        height = mean[:, 3]  # (N,)
        std = _state_std(
            height, self.std_weight_position * height, self.std_weight_velocity * height
        )  # (N, 8)
        motion = self._motion(mean)  # (8, 8)
        mean = mean @ motion.T
        covariance = motion @ covariance @ motion.T + torch.diag_embed(std.square())
        return mean, covariance

    def project(self, mean: Tensor, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """The distribution of the boxes a detector would see.

        Args:
            mean: (N, 8) states.
            covariance: (N, 8, 8) their covariances.

        Returns:
            ``(mean, covariance)`` in measurement space: (N, 4) boxes and (N, 4, 4) ``H P H^T +
            R``, the measurement noise ``R`` scaled by each box's height.
        """
        height = mean[:, 3]  # (N,)
        position = self.std_weight_position * height
        std = torch.stack((position, position, torch.full_like(height, 1e-1), position), dim=1)
        measured = self.MEASUREMENT_DIM
        projected = covariance[:, :measured, :measured] + torch.diag_embed(std.square())
        return mean[:, :measured], projected

    def update(
        self, mean: Tensor, covariance: Tensor, measurements: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Corrects the tracks with their matched boxes.

        Args:
            mean: (N, 8) predicted states.
            covariance: (N, 8, 8) their covariances.
            measurements: (N, 4) ``(cx, cy, a, h)`` boxes matched to them.

        Returns:
            ``(mean, covariance)`` after the correction: ``x + K (z - H x)`` and
            ``P - K S K^T`` with the gain ``K = P H^T S^-1`` and ``S`` from :meth:`project`.
        """
        projected_mean, projected_covariance = self.project(mean, covariance)
        measured = self.MEASUREMENT_DIM
        # K^T = S^-1 (P H^T)^T, solved through S's Cholesky factor (S is symmetric positive
        # definite), as ByteTrack's scipy cho_solve does.
        factor = torch.linalg.cholesky(projected_covariance)  # (N, 4, 4)
        gain = torch.cholesky_solve(covariance[:, :measured, :], factor).transpose(1, 2)
        innovation = measurements - projected_mean  # (N, 4)
        mean = mean + (gain @ innovation[:, :, None])[:, :, 0]
        covariance = covariance - gain @ projected_covariance @ gain.transpose(1, 2)
        return mean, covariance

    def _motion(self, like: Tensor) -> Tensor:
        """The (8, 8) constant-velocity transition ``F``: position += velocity."""
        motion = torch.eye(self.STATE_DIM, dtype=like.dtype, device=like.device)
        measured = self.MEASUREMENT_DIM
        motion[:measured, measured:] = torch.eye(measured, dtype=like.dtype, device=like.device)
        return motion


def _state_std(height: Tensor, position: Tensor, velocity: Tensor) -> Tensor:
    """(N, 8) standard deviations of (cx, cy, aspect, h) and their velocities: ``position`` and
    ``velocity`` (each (N,), scaled by the box height) for the box terms, fixed small ones for
    the aspect ratio and its velocity (as DeepSORT and ByteTrack)."""
    aspect, aspect_velocity = torch.full_like(height, 1e-2), torch.full_like(height, 1e-5)
    columns = (position, position, aspect, position, velocity, velocity, aspect_velocity, velocity)
    return torch.stack(columns, dim=1)
