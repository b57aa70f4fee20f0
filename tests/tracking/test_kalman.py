"""The box Kalman filter against the textbook equations (numpy, one track at a time, explicit
inverse) and against filterpy's KalmanFilter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unipercept.tracking.kalman import MIN_HEIGHT, BoxKalmanFilter, xyah_to_xyxy, xyxy_to_xyah

WEIGHT_POSITION, WEIGHT_VELOCITY = 1.0 / 20, 1.0 / 160


def _motion() -> np.ndarray:
    motion = np.eye(8)
    motion[:4, 4:] = np.eye(4)
    return motion


def _process_noise(height: float) -> np.ndarray:
    position, velocity = WEIGHT_POSITION * height, WEIGHT_VELOCITY * height
    std = [position, position, 1e-2, position, velocity, velocity, 1e-5, velocity]
    return np.diag(np.square(std))


def _measurement_noise(height: float) -> np.ndarray:
    position = WEIGHT_POSITION * height
    return np.diag(np.square([position, position, 1e-1, position]))


class ReferenceFilter:
    """One track, written from the standard equations (DeepSORT's noise model)."""

    def __init__(self, measurement: np.ndarray) -> None:
        height = measurement[3]
        position, velocity = 2 * WEIGHT_POSITION * height, 10 * WEIGHT_VELOCITY * height
        std = [position, position, 1e-2, position, velocity, velocity, 1e-5, velocity]
        self.x = np.concatenate((measurement, np.zeros(4)))
        self.P = np.diag(np.square(std))

    def predict(self) -> None:
        F = _motion()
        Q = _process_noise(self.x[3])
        self.x = F @ self.x
        self.P = F @ self.P @ F.T + Q

    def update(self, z: np.ndarray) -> None:
        H = np.eye(4, 8)
        S = H @ self.P @ H.T + _measurement_noise(self.x[3])
        K = self.P @ H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - H @ self.x)
        self.P = self.P - K @ S @ K.T


def _trajectories(num_tracks: int, num_frames: int, seed: int) -> np.ndarray:
    """(F, T, 4) noisy xyah boxes moving at constant velocity."""
    rng = np.random.default_rng(seed)
    start = np.stack(
        (
            rng.uniform(50, 600, num_tracks),
            rng.uniform(50, 400, num_tracks),
            rng.uniform(0.3, 1.0, num_tracks),
            rng.uniform(30, 200, num_tracks),
        ),
        axis=1,
    )  # (T, 4)
    velocity = rng.normal(0, [5, 5, 0.005, 1], (num_tracks, 4))
    frames = start + velocity * np.arange(num_frames)[:, None, None]  # (F, T, 4)
    return frames + rng.normal(0, [2, 2, 0.01, 2], frames.shape)


def test_batched_filter_follows_the_textbook_equations():
    measurements = _trajectories(num_tracks=5, num_frames=30, seed=0)
    # Some tracks miss some frames: prediction only, the covariance grows.
    detected = np.random.default_rng(1).random(measurements.shape[:2]) > 0.25  # (F, T)
    kalman = BoxKalmanFilter()
    mean, covariance = kalman.initiate(torch.as_tensor(measurements[0]))
    references = [ReferenceFilter(m) for m in measurements[0]]
    for frame, seen in zip(measurements[1:], detected[1:], strict=True):
        mean, covariance = kalman.predict(mean, covariance)
        rows = torch.as_tensor(np.flatnonzero(seen))
        mean[rows], covariance[rows] = kalman.update(
            mean[rows], covariance[rows], torch.as_tensor(frame[seen])
        )
        for track, reference in enumerate(references):
            reference.predict()
            if seen[track]:
                reference.update(frame[track])
        np.testing.assert_allclose(mean.numpy(), [r.x for r in references], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            covariance.numpy(), [r.P for r in references], rtol=1e-9, atol=1e-9
        )


def test_project_adds_the_measurement_noise():
    kalman = BoxKalmanFilter()
    mean, covariance = kalman.initiate(
        torch.tensor([[100.0, 50.0, 0.5, 80.0]], dtype=torch.float64)
    )
    projected_mean, projected = kalman.project(mean, covariance)
    expected = covariance[0, :4, :4].numpy() + _measurement_noise(80.0)
    np.testing.assert_allclose(projected[0].numpy(), expected)
    assert projected_mean.tolist() == [[100.0, 50.0, 0.5, 80.0]]


def test_filter_agrees_with_filterpy():
    filterpy = pytest.importorskip(
        "filterpy.kalman", reason="the cross-check needs filterpy (pip install filterpy)"
    )
    measurements = _trajectories(num_tracks=1, num_frames=40, seed=3)[:, 0]  # (F, 4)
    kalman = BoxKalmanFilter()
    mean, covariance = kalman.initiate(torch.as_tensor(measurements[:1]))
    reference = filterpy.KalmanFilter(dim_x=8, dim_z=4)
    reference.x, reference.P = mean[0].numpy().copy(), covariance[0].numpy().copy()
    reference.F, reference.H = _motion(), np.eye(4, 8)
    for t, measurement in enumerate(measurements[1:], start=1):
        reference.Q = _process_noise(reference.x[3])
        reference.predict()
        mean, covariance = kalman.predict(mean, covariance)
        if t % 7 != 0:  # every 7th frame missed
            reference.update(measurement, R=_measurement_noise(reference.x[3]))
            mean, covariance = kalman.update(mean, covariance, torch.as_tensor(measurement[None]))
        np.testing.assert_allclose(mean[0].numpy(), reference.x, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(covariance[0].numpy(), reference.P, rtol=1e-8, atol=1e-8)


def test_constant_velocity_is_learnt_from_exact_boxes():
    kalman = BoxKalmanFilter()
    velocity = torch.tensor([6.0, -3.0, 0.0, 0.5], dtype=torch.float64)
    start = torch.tensor([100.0, 300.0, 0.4, 90.0], dtype=torch.float64)
    mean, covariance = kalman.initiate(start[None])
    for t in range(1, 40):
        mean, covariance = kalman.predict(mean, covariance)
        mean, covariance = kalman.update(mean, covariance, (start + t * velocity)[None])
    mean, _ = kalman.predict(mean, covariance)
    torch.testing.assert_close(mean[0, :4], start + 40 * velocity, atol=0.05, rtol=0)
    torch.testing.assert_close(mean[0, 4:], velocity, atol=0.01, rtol=0)


def test_box_conversions_round_trip():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 120.0], [0.0, 0.0, 8.0, 2.0]], dtype=torch.float64)
    xyah = xyxy_to_xyah(boxes)
    torch.testing.assert_close(xyah[0], torch.tensor([30.0, 70.0, 0.4, 100.0], dtype=torch.float64))
    torch.testing.assert_close(xyah_to_xyxy(xyah), boxes)
    # No height: the aspect ratio is taken over MIN_HEIGHT instead of dividing by zero; a
    # tenth of a pixel (an untrained model's boxes) is kept as it is.
    flat = xyxy_to_xyah(torch.tensor([[0.0, 5.0, 4.0, 5.0], [0.0, 5.0, 0.2, 5.1]]))
    assert torch.isfinite(flat).all() and flat[0, 3] == MIN_HEIGHT
    torch.testing.assert_close(flat[1, 2:], torch.tensor([2.0, 0.1]))


@pytest.mark.parametrize("argument", ["std_weight_position", "std_weight_velocity"])
def test_invalid_noise_weights_are_named(argument):
    with pytest.raises(ValueError, match=argument):
        BoxKalmanFilter(**{argument: 0.0})
