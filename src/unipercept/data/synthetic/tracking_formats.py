"""Writers of the box tracking datasets: LaSOT (single object, with a sentence) and
MOTChallenge (multiple objects of one class, laid out as TrackEval reads it).

Layouts::

    lasot/<category>/<category>-<n>/img/00000001.jpg
    lasot/<category>/<category>-<n>/{groundtruth,full_occlusion,out_of_view,nlp}.txt
    lasot/{training,testing}_set.txt
    mot/MOTSynth-{train,val}/<seq>/img1/000001.jpg
    mot/MOTSynth-{train,val}/<seq>/gt/gt.txt
    mot/MOTSynth-{train,val}/<seq>/det/det.txt
    mot/MOTSynth-{train,val}/<seq>/seqinfo.ini
    mot/seqmaps/MOTSynth-{train,val}.txt
    mots/MOTSynth-{train,val}/<seq>/gt/gt.txt    (the same sequences' masks, MOTS txt)

TrackEval's ``MotChallenge2DBox`` reads ``mot/`` with ``GT_FOLDER=mot``, ``BENCHMARK="MOTSynth"``
and ``SPLIT_TO_EVAL="train"`` (or ``"val"``); its seqmaps default to ``GT_FOLDER/seqmaps``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .video_formats import EncodedVideo, write_bytes
from .world import CATEGORIES, MIN_VISIBLE_PIXELS

Split = Literal["train", "val"]
MOT_BENCHMARK = "MOTSynth"
MOT_FRAME_RATE = 30
# The shape that plays MOT17's class 1 ("pedestrian"); the other shapes take the next class
# numbers (2..6) and, as MOT17 does for non-pedestrians, are flagged 0 (not evaluated).
PEDESTRIAN = "circle"
MOT_CLASSES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [PEDESTRIAN, *(name for name in CATEGORIES if name != PEDESTRIAN)], start=1
    )
}


@dataclass
class LasotWriter:
    """LaSOT: one sequence per video, tracking an object that is visible in the first frame.

    ``groundtruth.txt`` holds the full box of that object clipped to the image, also where it
    is occluded; where it is entirely out of the image the last box is repeated.
    ``out_of_view.txt`` marks frames where less of the shape than an annotation needs lies
    inside the image; ``full_occlusion.txt`` marks frames where enough of it lies inside the
    image but other objects leave too little of it visible."""

    root: Path
    _sequences: dict[str, list[str]] = field(default_factory=dict)
    _per_category: Counter[str] = field(default_factory=Counter)

    def add(self, split: Split, video: EncodedVideo) -> bool:
        """Writes the video as a LaSOT sequence.

        Returns:
            False (and writes nothing) when no object is visible in the first frame.
        """
        candidates = [track for track in video.sample.tracks if track.present[0]]
        if not candidates:
            return False
        # Of the objects visible in at least half the frames, the one that is hidden (occluded
        # or out of view) most often: LaSOT is about following a target through both.
        target = max(
            candidates,
            key=lambda track: (
                track.present.mean() >= 0.5,
                int((~track.present).sum()),
                -track.track_id,
            ),
        )
        category = target.shape.category
        self._per_category[category] += 1
        name = f"{category}-{self._per_category[category]}"
        folder = self.root / category / name
        for index, jpeg in enumerate(video.jpegs, start=1):
            write_bytes(folder / "img" / f"{index:08d}.jpg", jpeg)
        lines = []
        box = target.view_boxes[0]
        for in_view, view_box in zip(target.in_view, target.view_boxes, strict=True):
            if in_view:
                box = view_box
            lines.append(",".join(str(int(value)) for value in box))
        out_of_view = target.view_areas < MIN_VISIBLE_PIXELS
        full_occlusion = ~out_of_view & ~target.present
        (folder / "groundtruth.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for file_name, flags in (
            ("full_occlusion.txt", full_occlusion),
            ("out_of_view.txt", out_of_view),
        ):
            text = ",".join(str(int(flag)) for flag in flags) + "\n"
            (folder / file_name).write_text(text, encoding="utf-8")
        (folder / "nlp.txt").write_text(target.description + "\n", encoding="utf-8")
        self._sequences.setdefault(split, []).append(name)
        return True

    def finish(self) -> None:
        """Writes ``training_set.txt`` and ``testing_set.txt``."""
        for split, names in self._sequences.items():
            file_name = "training_set.txt" if split == "train" else "testing_set.txt"
            text = "".join(f"{name}\n" for name in names)
            (self.root / file_name).write_text(text, encoding="utf-8")


def _number(value: float) -> str:
    """MOTChallenge's short decimals: ``1``, ``0.86173``."""
    return f"{value:.5f}".rstrip("0").rstrip(".")


@dataclass
class MotWriter:
    """MOTChallenge (MOT17-like) sequences with ground truth and noisy public detections.

    ``gt.txt``: ``frame,id,x,y,w,h,flag,class,visibility`` for every frame where the object is
    (partly) inside the image, sorted by id then frame; boxes are the full (amodal) boxes in
    0-based pixels and may extend past the image; ``flag`` is 1 for the pedestrian class and 0
    for the others; ``visibility`` is the visible share of the full shape. ``det.txt``:
    ``frame,-1,x,y,w,h,score,-1,-1,-1`` of jittered boxes of the pedestrian-class objects, with
    misses (more where occluded), confusions with other shapes and false positives.
    """

    root: Path
    _sequences: dict[str, list[str]] = field(default_factory=dict)

    def add(self, split: Split, video: EncodedVideo, rng: np.random.Generator) -> str:
        """Writes the video as a MOT sequence; ``rng`` draws the detections' noise.

        Returns:
            The sequence name.
        """
        name = f"{MOT_BENCHMARK}-{sum(map(len, self._sequences.values())) + 1:02d}"
        folder = self.root / f"{MOT_BENCHMARK}-{split}" / name
        for index, jpeg in enumerate(video.jpegs, start=1):
            write_bytes(folder / "img1" / f"{index:06d}.jpg", jpeg)
        length, height, width = video.sample.labels.shape
        gt_lines = []
        for track in video.sample.tracks:
            number = MOT_CLASSES[track.shape.category]
            flag = int(number == 1)
            for frame in np.flatnonzero(track.in_view):
                x, y, w, h = (int(value) for value in track.amodal_boxes[frame])
                visibility = min(1.0, track.visible_pixels[frame] / track.amodal_areas[frame])
                gt_lines.append(
                    f"{frame + 1},{track.track_id},{x},{y},{w},{h},{flag},{number},"
                    f"{_number(visibility)}"
                )
        write_bytes(folder / "gt" / "gt.txt", "".join(f"{line}\n" for line in gt_lines).encode())
        mots = self.root.parent / "mots" / f"{MOT_BENCHMARK}-{split}" / name / "gt" / "gt.txt"
        write_bytes(mots, _mots_lines(video).encode())
        det_lines = [
            f"{frame + 1},-1,{x:.2f},{y:.2f},{w:.2f},{h:.2f},{score:.3f},-1,-1,-1"
            for frame in range(length)
            for x, y, w, h, score in self._detections(rng, video, frame, height, width)
        ]
        write_bytes(folder / "det" / "det.txt", "".join(f"{line}\n" for line in det_lines).encode())
        seqinfo = (
            "[Sequence]\n"
            f"name={name}\n"
            "imDir=img1\n"
            f"frameRate={MOT_FRAME_RATE}\n"
            f"seqLength={length}\n"
            f"imWidth={width}\n"
            f"imHeight={height}\n"
            "imExt=.jpg\n"
        )
        write_bytes(folder / "seqinfo.ini", seqinfo.encode())
        self._sequences.setdefault(split, []).append(name)
        return name

    @staticmethod
    def _detections(
        rng: np.random.Generator, video: EncodedVideo, frame: int, height: int, width: int
    ) -> list[tuple[float, float, float, float, float]]:
        """``(x, y, w, h, score)`` detections of one frame."""
        detections = []
        for track in video.sample.tracks:
            if not track.in_view[frame]:
                continue
            visibility = track.visible_pixels[frame] / track.amodal_areas[frame]
            if MOT_CLASSES[track.shape.category] == 1:
                chance = 0.95 if visibility > 0.5 else (0.7 if visibility > 0.2 else 0.1)
                score = float(np.clip(0.5 + 0.5 * visibility + rng.normal(0.0, 0.1), 0.05, 1.0))
            else:
                chance, score = 0.1, float(rng.uniform(0.2, 0.5))
            if rng.uniform() >= chance:
                continue
            x, y, w, h = track.amodal_boxes[frame].astype(float)
            jitter = rng.normal(0.0, 0.05, size=4) * np.array([w, h, w, h])
            detections.append((x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3], score))
        for _ in range(int(rng.poisson(0.2))):
            w, h = rng.uniform(0.05, 0.2, size=2) * min(height, width)
            x, y = rng.uniform(0.0, width - w), rng.uniform(0.0, height - h)
            detections.append((x, y, w, h, float(rng.uniform(0.05, 0.4))))
        return detections

    def finish(self) -> None:
        """Writes the seqmaps TrackEval reads: a ``name`` header, then one sequence a line."""
        for split, names in self._sequences.items():
            path = self.root / "seqmaps" / f"{MOT_BENCHMARK}-{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("name\n" + "".join(f"{name}\n" for name in names), encoding="utf-8")


def _mots_lines(video: EncodedVideo) -> str:
    """MOTS txt ground truth (``frame id class height width rle``, frames from 1): the
    pedestrian-class tracks' visible masks as class 2 (id 2000 + track id), and the other
    shapes together as the frame's ignore region (class 10, id 10000), as MOTSChallenge marks
    what is not evaluated."""
    from pycocotools import mask as mask_utils

    labels = video.sample.labels
    pedestrians = {t.track_id for t in video.sample.tracks if t.shape.category == PEDESTRIAN}
    others = [t.track_id for t in video.sample.tracks if t.track_id not in pedestrians]
    height, width = labels.shape[1:]
    lines = []
    for frame in range(labels.shape[0]):
        regions = [
            (2000 + track_id, 2, labels[frame] == track_id) for track_id in sorted(pedestrians)
        ]
        regions.append((10000, 10, np.isin(labels[frame], others)))
        for object_id, class_id, mask in regions:
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            counts = rle["counts"].decode("ascii")
            lines.append(f"{frame + 1} {object_id} {class_id} {height} {width} {counts}\n")
    return "".join(lines)
