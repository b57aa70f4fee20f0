"""The trackers of Roboflow's ``trackers`` package (ByteTrack, OC-SORT, BoT-SORT, SORT, C-BIoU)
behind this library's :class:`~unipercept.tracking.Tracker` interface.

Optional: the package is imported when an :class:`ExternalTracker` is built, never at import
time. It declares ``opencv-python``, which would clash with the ``opencv-python-headless`` this
library installs (both are ``cv2``), so it goes in without its declared requirements::

    pip install supervision rich && pip install --no-deps trackers

Each frame's detections go in as a ``supervision.Detections`` (boxes, scores, labels and the
detection's row); the rows the package reports with a confirmed track come back as the given
detections, every field kept, with this library's track ids. The package numbers tracks from 0
and may hold a new track back until it has been seen for a few frames
(``minimum_consecutive_frames``): detections without a confirmed track are not reported.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipercept.structures import Instances
from unipercept.tracking.base import Tracker
from unipercept.tracking.matching import check_detections

# ``name`` -> the package's class. BoT-SORT (and McByte, left out: it is built around masks
# from a segmentation model) uses the frame for camera-motion compensation; the others only boxes.
EXTERNAL_TRACKERS = {
    "bytetrack": "ByteTrackTracker",
    "ocsort": "OCSORTTracker",
    "botsort": "BoTSORTTracker",
    "sort": "SORTTracker",
    "cbiou": "CBIoUTracker",
}
INSTALL_HINT = "pip install supervision rich && pip install --no-deps trackers"


def import_trackers() -> Any:
    """The ``trackers`` module; ``ImportError`` with the install command when it is absent."""
    try:
        return importlib.import_module("trackers")
    except ImportError as error:
        raise ImportError(
            f"ExternalTracker needs Roboflow's `trackers` package and `supervision` ({error}); "
            f"install them with: {INSTALL_HINT}"
        ) from error


class ExternalTracker(Tracker):
    """A tracker of the ``trackers`` package, fed and read through :class:`Instances`.

    The package's trackers ignore labels: with ``per_label`` each label gets its own tracker
    (every one of them updated each frame, so that their lost tracks age alike), as this
    library's trackers never match across labels. Their track ids are mapped to this library's:
    positive, unique within the video, never reused.

    A session snapshot does not keep the package's tracker state (it is not plain data): a
    restored session starts its tracks anew, with fresh ids.

    Args:
        name: the package's tracker, one of :data:`EXTERNAL_TRACKERS`.
        per_label: one tracker per label; otherwise one for all, which may follow an object
            whose label changes from frame to frame.
        **options: keyword arguments of the package's class, e.g. ``lost_track_buffer``,
            ``frame_rate``, ``minimum_consecutive_frames``, ``high_conf_det_threshold``.

    Raises:
        ImportError: the package is not installed (the message names the pip command).
        ValueError: an unknown ``name`` or option.
    """

    def __init__(self, name: str = "bytetrack", *, per_label: bool = True, **options: Any) -> None:
        if name not in EXTERNAL_TRACKERS:
            raise ValueError(
                f"ExternalTracker name must be one of {', '.join(EXTERNAL_TRACKERS)}, got {name!r}"
            )
        module = import_trackers()
        class_name = EXTERNAL_TRACKERS[name]
        tracker_class = getattr(module, class_name, None)
        if tracker_class is None:
            version = getattr(module, "__version__", "of unknown version")
            raise ValueError(
                f"ExternalTracker({name!r}): the installed trackers package ({version}) has no "
                f"{class_name}; upgrade it with: pip install --no-deps -U trackers"
            )
        accepted = [p for p in inspect.signature(tracker_class.__init__).parameters if p != "self"]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"ExternalTracker({name!r}): unknown option(s) {', '.join(unknown)}; "
                f"{class_name} takes {', '.join(accepted)}"
            )
        self.name = name
        self.per_label = per_label
        self.options = dict(options)
        self._tracker_class = tracker_class
        self._supervision = importlib.import_module("supervision")
        tracker_class(**options)  # the package checks the values: fail here, not mid-video
        self.reset()

    def reset(self) -> None:
        self._trackers: dict[int, Any] = {}  # label (-1 for all, without per_label) -> tracker
        self._ids: dict[tuple[int, int], int] = {}  # (label, the package's id) -> track id
        self._next_id = 1

    @property
    def num_tracks(self) -> int:
        return sum(len(tracker.tracks) for tracker in self._trackers.values())

    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        check_detections(detections, ("boxes", "scores", "labels"), "ExternalTracker")
        if len(detections) == 0:
            boxes, scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
            labels = np.zeros(0, np.int64)
        else:
            boxes = detections.boxes.detach().float().cpu().numpy()  # (N, 4)
            scores = detections.scores.detach().float().cpu().numpy()  # (N,)
            labels = detections.labels.cpu().numpy()  # (N,)
        keys = labels if self.per_label else np.full_like(labels, -1)  # (N,)
        for key in np.unique(keys).tolist():
            if key not in self._trackers:
                self._trackers[key] = self._tracker_class(**self.options)
        frame = None
        rows: list[int] = []
        track_ids: list[int] = []
        for key, tracker in self._trackers.items():
            chosen = np.flatnonzero(keys == key)  # (n,) this tracker's detections
            given = self._supervision.Detections(
                xyxy=boxes[chosen],
                confidence=scores[chosen],
                class_id=labels[chosen],
                data={"row": chosen},
            )
            if image is not None and getattr(tracker, "enable_cmc", False):
                # Camera-motion compensation estimates the motion between frames: the frame
                # goes in as OpenCV's (H, W, 3) uint8 BGR.
                if frame is None:
                    frame = np.ascontiguousarray(image.permute(1, 2, 0).flip(-1).cpu().numpy())
                tracked = tracker.update(given, frame=frame)
            else:
                tracked = tracker.update(given)
            if len(tracked) == 0:
                continue
            for row, external in zip(
                tracked.data["row"].tolist(), tracked.tracker_id.tolist(), strict=True
            ):
                if external < 0:  # not (yet) a confirmed track
                    continue
                rows.append(row)
                track_ids.append(self._track_id(key, external))
        self._forget()
        order = np.argsort(rows, kind="stable")  # in the detections' order
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64)[order])  # (R,)
        ids = torch.as_tensor(np.asarray(track_ids, dtype=np.int64)[order])  # (R,)
        device = detections.boxes.device if detections.boxes is not None else ids.device
        return detections[index].replace(track_ids=ids.to(device))

    def _track_id(self, key: int, external: int) -> int:
        """This library's id for the package's track ``external`` of tracker ``key``."""
        if (key, external) not in self._ids:
            self._ids[(key, external)] = self._next_id
            self._next_id += 1
        return self._ids[(key, external)]

    def _forget(self) -> None:
        """Drops the ids of the tracks the package no longer holds (bounded state)."""
        alive = {
            (key, track.tracker_id)
            for key, tracker in self._trackers.items()
            for track in tracker.tracks
        }
        self._ids = {pair: i for pair, i in self._ids.items() if pair in alive}
