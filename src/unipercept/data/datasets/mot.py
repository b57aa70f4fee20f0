"""MOTChallenge multi-object tracking (MOT15/16/17/20): one folder per sequence.

On-disk format::

    <root>/<seq>/seqinfo.ini     [Sequence] seqLength=, imWidth=, imHeight=, imExt=, imDir=
    <root>/<seq>/img1/000001.jpg ...  (frame i at <imDir>/{i:06d}<imExt>, i from 1)
    <root>/<seq>/gt/gt.txt       frame,id,x,y,w,h,conf,class,visibility  (one box per line)
    <root>/<seq>/det/det.txt     frame,-1,x,y,w,h,score[,...]            (public detections)

Boxes are ``x, y, w, h`` in pixels, read without a 1-based shift. People at the border
overhang the image: like every reader's, such boxes are clipped to the image and counted (see
:mod:`unipercept.data.datasets.base`; TrackEval scores the boxes as written, which this reader
does not feed). In MOT16/17/20 ground truth, ``conf`` 0 marks a box that is not evaluated and
``class`` says what the box is (:data:`MOT_CLASSES`: 1 pedestrian, 2 person on vehicle, 7
static person, 8 distractor, 12 reflection, ...; 13 crowd in MOT20). MOT15 ground truth has 10
columns whose 8th to 10th are unused world coordinates (-1): read it with
``classes={-1: "pedestrian"}``. Sequences without ``gt/gt.txt`` (test splits)
read as unannotated frames (``Frame.annotated`` False).
"""

from __future__ import annotations

import configparser
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.io import image_size
from unipercept.data.types import Frame, Sample
from unipercept.structures import Instances

_SEQINFO_KEYS = ("seqLength", "imWidth", "imHeight", "imExt")

# The class ids of MOT16/17/20 ground truth (8th column), named as TrackEval names them
# (trackeval/datasets/mot_challenge_2d_box.py); 1..12 are the MOT16 paper's, MOT20 adds 13.
MOT_CLASSES: dict[int, str] = {
    1: "pedestrian",
    2: "person_on_vehicle",
    3: "car",
    4: "bicycle",
    5: "motorbike",
    6: "non_mot_vehicle",
    7: "static_person",
    8: "distractor",
    9: "occluder",
    10: "occluder_on_ground",
    11: "occluder_full",
    12: "reflection",
    13: "crowd",
}


class _SeqInfo(NamedTuple):
    folder: Path
    length: int
    size: tuple[int, int]
    image_dir: Path
    ext: str

    def image(self, frame: int) -> Path:
        return self.image_dir / f"{frame:06d}{self.ext}"


def _row(line: str, columns: int, length: int) -> tuple[list[float], str | None]:
    """The first ``columns`` values of a gt (9) or det (7) line, or why it is malformed."""
    fields = line.split(",")
    if not columns <= len(fields) <= 10:
        return [], f"expected {columns} to 10 comma-separated columns, got {len(fields)}"
    try:
        values = [float(field) for field in fields][:columns]
    except ValueError:
        return [], f"non-numeric value in {line.strip()!r}"
    frame, track, _, _, width, height = values[:6]
    if not all(math.isfinite(v) for v in values):
        return [], f"non-finite value in {line.strip()!r}"
    if not (frame.is_integer() and 1 <= frame <= length):
        return [], f"frame {frame:g} is outside 1..{length} (seqLength)"
    if width <= 0 or height <= 0:
        return [], f"box width {width:g} or height {height:g} is not positive"
    if columns == 9 and not track.is_integer():
        return [], f"id {track:g} is not an integer"
    return values, None


def _class_names(classes: Mapping[int, str] | Sequence[int] | None) -> dict[int, str]:
    """The category name of each class id to keep (see :class:`MotChallengeReader`)."""
    if classes is None:
        return dict(MOT_CLASSES)
    if isinstance(classes, Mapping):
        return {int(key): str(name) for key, name in classes.items()}
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValueError(f"classes must be class ids, {{id: name}} or None, got {classes!r}")
    unknown = [c for c in classes if isinstance(c, bool) or c not in MOT_CLASSES]
    if unknown:
        raise ValueError(
            f"classes {unknown} are not MOTChallenge class ids {sorted(MOT_CLASSES)}; "
            "name other ids with a mapping {id: name}"
        )
    return {int(c): MOT_CLASSES[int(c)] for c in classes}


class MotChallengeReader(DatasetReader):
    """Reads MOTChallenge sequences, one :class:`Sample` per sequence.

    Frame ``i`` of the sample (from 0) is MOT frame ``i + 1`` (unless frames were skipped,
    see below). Ground-truth rows whose class is one of ``classes`` become instances labelled
    with the index of their name in :attr:`categories` (the distinct names of ``classes``, in
    order), ``track_ids`` the MOT ids; rows with ``conf`` 0 stay as instances flagged in
    ``Frame.ignore``. Rows of other classes are left out, counted per class in
    :attr:`changed` (``"row of class 7 (static_person) left out"``) and logged once; so
    TrackEval's distractor handling (removing predictions that match a distractor) is not
    reproduced. With ``min_visibility > 0`` rows less visible are left out (counted as
    ``"row below min_visibility left out"``). Boxes overhanging the image are clipped (counted
    as ``"clipped box"``). Image sizes come from ``seqinfo.ini``, checked against the first
    frame's image header.

    Bad records are reported through :meth:`DatasetReader.problem`: a gt line with a column count
    other than 9 or 10, a non-numeric or non-finite value, a frame outside ``1..seqLength``, a box
    with no area or wholly outside the image, or an id repeated in a frame (kind ``"row"``, the line
    is skipped); a missing image file (kind ``"frame"``, the frame is left out of the sample, so
    frames may then be missing); a missing or incomplete ``seqinfo.ini`` or a frame size that
    disagrees with it (kind ``"sequence"``, the sequence is skipped).

    Args:
        root: folder holding the sequence folders.
        sequences: names of the sequences to read; None reads every folder with a
            ``seqinfo.ini``, sorted by name.
        classes: the MOT class ids to keep: a sequence of :data:`MOT_CLASSES` ids (named as
            there; default ``(1,)``, pedestrians), a mapping of ids to category names (any
            ids: MOT15's ``{-1: "pedestrian"}``), or None for every MOTChallenge class.
        min_visibility: rows with a lower visibility (9th column) are dropped; 0 keeps all
            (MOT15's -1 included).
        name: dataset name given to the samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        check_images: check that every frame's image exists and the first one's size.
    """

    def __init__(
        self,
        *,
        root: Path,
        sequences: Sequence[str] | None = None,
        classes: Mapping[int, str] | Sequence[int] | None = (1,),
        min_visibility: float = 0.0,
        name: str = "mot",
        on_error: OnError = "raise",
        check_images: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        self.name = name
        self.root = Path(root)
        if sequences is None:
            sequences = sorted(p.parent.name for p in self.root.glob("*/seqinfo.ini"))
        self.sequences = tuple(sequences)
        self.classes = _class_names(classes)
        self.categories: tuple[str, ...] = tuple(dict.fromkeys(self.classes.values()))
        self._labels = {k: self.categories.index(v) for k, v in self.classes.items()}
        self.min_visibility = min_visibility
        self.check_images = check_images

    def _read(self) -> Iterator[Sample]:
        for sequence in self.sequences:
            info = self._seqinfo(sequence)
            if info is None:
                continue
            if self.check_images and info.image(1).is_file():
                size = image_size(info.image(1))
                if size != info.size:
                    self.problem(
                        info.image(1),
                        "frame 1",
                        f"image is {size[0]}x{size[1]} (HxW), seqinfo.ini says "
                        f"{info.size[0]}x{info.size[1]}",
                        "sequence",
                    )
                    continue
            gt_path = info.folder / "gt" / "gt.txt"
            rows = self._parse(gt_path, info, columns=9) if gt_path.is_file() else None
            frames = []
            for frame in range(1, info.length + 1):
                path = info.image(frame)
                if self.check_images and not path.is_file():
                    self.problem(path, f"frame {frame}", "image file not found", "frame")
                    continue
                frames.append(self._frame(path, info, frame, rows))
            if frames:
                yield Sample(self.name, sequence, tuple(frames), self.categories)

    def _seqinfo(self, sequence: str) -> _SeqInfo | None:
        path = self.root / sequence / "seqinfo.ini"
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # the keys are camelCase
        try:
            parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
        except (OSError, configparser.Error) as error:
            self.problem(path, "[Sequence]", f"cannot be read ({error})", "sequence")
            return None
        section = parser["Sequence"] if parser.has_section("Sequence") else {}
        missing = [key for key in _SEQINFO_KEYS if key not in section]
        if missing:
            self.problem(path, "[Sequence]", f"missing keys {missing}", "sequence")
            return None
        try:
            length, width, height = (int(section[k]) for k in ("seqLength", "imWidth", "imHeight"))
        except ValueError as error:
            self.problem(path, "[Sequence]", f"non-integer value ({error})", "sequence")
            return None
        if min(length, width, height) <= 0:
            self.problem(path, "[Sequence]", "seqLength and image size must be > 0", "sequence")
            return None
        image_dir = path.parent / section.get("imDir", "img1")
        return _SeqInfo(path.parent, length, (height, width), image_dir, section["imExt"])

    def _parse(self, path: Path, info: _SeqInfo, columns: int) -> dict[int, list[list[float]]]:
        """Rows of a gt (9 columns used) or det (7) file by frame, cut to the columns used,
        with the box (columns 2 to 5) as clipped ``x1, y1, x2, y2``. Ground-truth ids must be
        unique within a frame; ground-truth rows of classes not kept are left out."""
        rows: dict[int, list[list[float]]] = {}
        ids: set[tuple[float, float]] = set()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            values, why = _row(line, columns, info.length)
            if why is None and columns == 9 and (values[0], values[1]) in ids:
                why = f"id {values[1]:g} appears twice in frame {values[0]:g}"
            if why is not None:
                self.problem(path, f"line {number}", why, "row")
                continue
            ids.add((values[0], values[1]))
            if columns == 9 and not self._kept(values):
                continue
            # Last: a clipped box is counted only when its row is kept.
            x, y, width, height = values[2:6]
            box, why = self.clip_box((x, y, x + width, y + height), info.size)
            if why is not None:
                self.problem(path, f"line {number}", why, "row")
                continue
            values[2:6] = box
            rows.setdefault(int(values[0]), []).append(values)
        return rows

    def _kept(self, values: list[float]) -> bool:
        """Whether a valid gt row is of a class kept and visible enough; counts it if not."""
        class_id = int(values[7])
        if class_id not in self._labels:
            name = MOT_CLASSES.get(class_id)
            self.changed[f"row of class {class_id}{f' ({name})' if name else ''} left out"] += 1
            return False
        if self.min_visibility > 0 and values[8] < self.min_visibility:
            self.changed["row below min_visibility left out"] += 1
            return False
        return True

    def _frame(
        self,
        path: Path,
        info: _SeqInfo,
        frame: int,
        rows: dict[int, list[list[float]]] | None,
    ) -> Frame:
        kept = (rows or {}).get(frame, [])
        table = torch.tensor(kept, dtype=torch.float64).reshape(-1, 9)
        instances = Instances(
            info.size,
            boxes=table[:, 2:6].float(),
            labels=torch.tensor([self._labels[int(r[7])] for r in kept], dtype=torch.int64),
            track_ids=table[:, 1].long(),
        )
        return Frame(path, instances, ignore=table[:, 6] == 0, annotated=rows is not None)

    def read_detections(self, sequence: str) -> dict[int, tuple[Tensor, Tensor]]:
        """The public detections of a sequence, from ``<seq>/det/det.txt``.

        Bad lines are reported as in ground truth (kind ``"row"``), and boxes are clipped to
        the image as there; when skipping, they are counted in :attr:`skipped` (clipped boxes
        in :attr:`changed`) without the summary log of iteration.

        Args:
            sequence: name of the sequence folder.

        Returns:
            For every MOT frame number ``1..seqLength`` (frame ``i`` of the sample is
            ``i + 1``), the (N, 4) float xyxy boxes and (N,) float scores of its detections.

        Raises:
            DatasetError: ``seqinfo.ini`` or ``det/det.txt`` is missing or unreadable.
        """
        info = self._seqinfo(sequence)
        path = self.root / sequence / "det" / "det.txt"
        if info is None or not path.is_file():
            raise DatasetError(path, sequence, "no seqinfo.ini or det/det.txt to read")
        rows = self._parse(path, info, columns=7)
        detections = {}
        for frame in range(1, info.length + 1):
            table = torch.tensor(rows.get(frame, []), dtype=torch.float64).reshape(-1, 7)
            detections[frame] = (table[:, 2:6].float(), table[:, 6].float())
        return detections
