"""The one interface every tracker implements: detections of a frame in, tracked objects out."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from unipercept.structures import Instances


class Tracker(ABC):
    """Associates each frame's detections with the tracks of earlier frames.

    A tracker is fed frame after frame through :meth:`update` and keeps only a bounded state
    (live tracks and a few recently lost ones), so it can run over videos of any length.
    Track ids are positive integers, unique within a video and never reused.
    """

    @abstractmethod
    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        """Tracks one frame.

        Args:
            detections: this frame's detections in image pixels: ``boxes``, ``scores``,
                ``labels``, and, as the tracker needs them, ``embeddings`` (appearance) and
                ``masks`` (dense bool or RLE).
            image: (3, H, W) uint8 frame, for trackers that look at pixels (optical flow).

        Returns:
            the objects reported for this frame, each with its ``track_ids``; fields as in
            ``detections`` (a tracker may also report objects it carries over a missed
            detection, e.g. a warped mask).
        """

    @abstractmethod
    def reset(self) -> None:
        """Forgets every track (a new video starts)."""

    @property
    @abstractmethod
    def num_tracks(self) -> int:
        """Tracks currently held in the tracker's state (live plus lost-but-remembered)."""
