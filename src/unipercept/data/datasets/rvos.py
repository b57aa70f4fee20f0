"""Referring video object segmentation: Ref-YouTube-VOS and Ref-DAVIS17.

On disk, Ref-YouTube-VOS is YouTube-VOS (see :mod:`unipercept.data.datasets.ytvos`) plus::

    root/meta_expressions/<split>/meta_expressions.json
        {"videos": {video: {"expressions": {"0": {"exp": str, "obj_id": "1"}, ...},
                            "frames": ["00000", ...]}}}

Its ``valid`` and ``test`` splits have neither ``meta.json`` nor masks: their videos are read
from the expression file's ``frames`` (in natural order), without instances
(``annotated=False``), and their expressions name no object (``target_ids == ()``).

Ref-DAVIS17 is DAVIS 2017 (see :mod:`unipercept.data.datasets.davis`) plus::

    root/davis_text_annotations/Davis17_annot<n>[_full_video].txt
        one expression a line: <video> <obj_id> "<expression>"

``annot1`` files are UTF-8 and ``annot2`` files Latin-1, so a file that is not UTF-8 is read
as Latin-1. The files misspell three video names, which are mapped to DAVIS's own.

Both readers yield one :class:`Sample` per video with its expressions, each naming one track.
An expression whose object no frame annotates is reported (kind ``"expression"``) and, when
skipping, left out; a malformed expression file raises whatever ``on_error`` says.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.datasets.davis import DavisReader, no_instances
from unipercept.data.datasets.ytvos import YouTubeVosReader
from unipercept.data.io import image_size, load_json
from unipercept.data.types import Expression, Frame, Sample
from unipercept.data.video import natural_key

# Video names as the Ref-DAVIS17 text files spell them -> DAVIS folder names.
_DAVIS_ALIASES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
_DAVIS_LINE = re.compile(r"^(\S+)\s+(\d+)\s+(.*\S)\s*$")


def _with_expressions(
    reader: DatasetReader,
    sample: Sample,
    candidates: list[tuple[str, str, int | None]],
    path: Path,
) -> Sample:
    """``sample`` with the candidate (record, text, object id) expressions whose object some
    frame annotates; the others are reported to ``reader``."""
    known = {
        int(i)
        for frame in sample.frames
        if frame.instances.track_ids is not None
        for i in frame.instances.track_ids.tolist()
    }
    expressions = []
    for record, text, object_id in candidates:
        if object_id is not None and object_id not in known:
            problem = f"object {object_id} is in no annotated frame"
            reader.problem(path, record, problem, "expression")
            continue
        expressions.append(Expression(text, (object_id,) if object_id is not None else ()))
    return dataclasses.replace(sample, expressions=tuple(expressions))


class RefYouTubeVosReader(DatasetReader):
    """Reads one Ref-YouTube-VOS split: YouTube-VOS videos with their expressions.

    Videos are those of the expression file, sorted. Problems of the videos are reported as
    :class:`YouTubeVosReader` reports them, counted in this reader's :attr:`skipped`.

    Args:
        root: the folder holding ``<split>/`` and ``meta_expressions/``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        all_frames: also list frames without masks (see :class:`YouTubeVosReader`).
    """

    def __init__(
        self,
        *,
        root: Path,
        split: str = "train",
        name: str = "refytvos",
        on_error: OnError = "raise",
        all_frames: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        self.name = name
        self.videos = YouTubeVosReader(
            root=root, split=split, name=name, on_error=on_error, all_frames=all_frames
        )
        self.expressions_path = Path(root) / "meta_expressions" / split / "meta_expressions.json"

    def _read(self) -> Iterator[Sample]:
        # The composed reader reports into this reader's counters, so one summary is logged.
        self.share_counters(self.videos)
        data = load_json(self.expressions_path)
        if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
            raise DatasetError(self.expressions_path, "videos", 'expected {"videos": {...}}')
        annotated = self.videos.meta_path.is_file()
        for video_id in sorted(data["videos"]):
            entry = data["videos"][video_id]
            candidates = self._candidates(video_id, entry)
            if candidates is None:
                continue
            if annotated:
                sample = self.videos.read_video(video_id)
            else:
                sample = self._unannotated(video_id, entry)
                candidates = [(record, text, None) for record, text, _ in candidates]
            if sample is not None:
                yield _with_expressions(self, sample, candidates, self.expressions_path)

    def _candidates(self, video_id: str, entry: Any) -> list[tuple[str, str, int | None]] | None:
        """(record, text, object id) of the video's expressions; None when malformed."""
        record = f"video {video_id}"
        expressions = entry.get("expressions") if isinstance(entry, dict) else None
        if not isinstance(expressions, dict):
            self.problem(self.expressions_path, record, "expected expressions", "video")
            return None
        candidates = []
        for key, expression in expressions.items():
            exp_record = f"{record} expression {key}"
            text = expression.get("exp") if isinstance(expression, dict) else None
            object_id = expression.get("obj_id") if isinstance(expression, dict) else None
            if not isinstance(text, str) or not (object_id is None or str(object_id).isdigit()):
                problem = f"expected {{'exp': str, 'obj_id': id}}, got {expression!r}"
                self.problem(self.expressions_path, exp_record, problem, "expression")
                continue
            candidates.append((exp_record, text, None if object_id is None else int(object_id)))
        return candidates

    def _unannotated(self, video_id: str, entry: dict[str, Any]) -> Sample | None:
        """A video of a split without masks, framed by the expression file's frame list."""
        record = f"video {video_id}"
        names = entry.get("frames")
        if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.problem(self.expressions_path, record, "expected a list of frames", "video")
            return None
        folder = self.videos.root / self.videos.split / "JPEGImages" / video_id
        images = [folder / f"{name}.jpg" for name in sorted(names, key=natural_key)]
        try:
            size = image_size(images[0])
        except DatasetError as error:
            self.problem(error.path, record, error.problem, "video")
            return None
        frames = tuple(Frame(image, no_instances(size), annotated=False) for image in images)
        return Sample(self.name, video_id, frames)


class RefDavisReader(DatasetReader):
    """Reads one Ref-DAVIS17 split: DAVIS 2017 sequences with one annotator's expressions.

    Sequences are those of the DAVIS split file, each with the expressions the text file gives
    it (none when it gives none); expressions of other sequences are ignored. Problems of the
    sequences are reported as :class:`DavisReader` reports them, counted in this reader's
    :attr:`skipped`.

    Args:
        root: the DAVIS folder.
        split: ``"train"`` or ``"val"``.
        resolution: the DAVIS resolution folder.
        annotator: 1 or 2, which annotator's file to read.
        full_video: read the expressions written watching the whole video
            (``..._full_video.txt``) instead of the first frame only.
        text_root: the folder of the text files; ``root / "davis_text_annotations"`` when None.
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
    """

    def __init__(
        self,
        *,
        root: Path,
        split: str = "train",
        resolution: str = "480p",
        annotator: int = 1,
        full_video: bool = False,
        text_root: Path | None = None,
        name: str = "refdavis",
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(on_error=on_error)
        self.name = name
        self.videos = DavisReader(
            root=root, year="2017", split=split, resolution=resolution, name=name, on_error=on_error
        )
        folder = Path(text_root) if text_root is not None else Path(root) / "davis_text_annotations"
        suffix = "_full_video" if full_video else ""
        self.expressions_path = folder / f"Davis17_annot{annotator}{suffix}.txt"

    def _read(self) -> Iterator[Sample]:
        # The composed reader reports into this reader's counters, so one summary is logged.
        self.share_counters(self.videos)
        candidates = self._candidates()
        for sequence in self.videos.sequences():
            sample = self.videos.read_sequence(sequence)
            if sample is not None:
                yield _with_expressions(
                    self, sample, candidates.get(sequence, []), self.expressions_path
                )

    def _candidates(self) -> dict[str, list[tuple[str, str, int | None]]]:
        """(record, text, object id) of the expressions, by sequence."""
        path = self.expressions_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(path, "file", "not found") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        by_video: dict[str, list[tuple[str, str, int | None]]] = defaultdict(list)
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            match = _DAVIS_LINE.match(line)
            if match is None:
                problem = f'malformed line {line!r}, expected <video> <obj_id> "<expression>"'
                self.problem(path, f"line {number}", problem, "expression")
                continue
            video, object_id, sentence = match.groups()
            video = _DAVIS_ALIASES.get(video, video)
            if len(sentence) >= 2 and sentence[0] == sentence[-1] == '"':
                sentence = sentence[1:-1]
            by_video[video].append((f"line {number} video {video}", sentence, int(object_id)))
        return by_video
