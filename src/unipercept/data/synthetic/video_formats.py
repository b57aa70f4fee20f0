"""Writers of the segmentation video datasets: YouTube-VIS 2019, DAVIS 2017 and
Ref-YouTube-VOS. One rendered video is written to all three.

Layouts::

    ytvis/{train,valid}.json
    ytvis/{train,valid}/JPEGImages/<video>/00000.jpg
    davis/JPEGImages/480p/<video>/00000.jpg
    davis/Annotations/480p/<video>/00000.png
    davis/ImageSets/2017/{train,val}.txt
    refytvos/{train,valid}/JPEGImages/<video>/00000.jpg
    refytvos/{train,valid}/Annotations/<video>/00000.png
    refytvos/{train,valid}/meta.json
    refytvos/meta_expressions/{train,valid}/meta_expressions.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .encoding import mask_box, rle_uncompressed
from .image_formats import categories, write_json
from .scenes import VideoSample
from .world import CATEGORIES

Split = Literal["train", "val"]
# YouTube-VIS and YouTube-VOS call their held-out split "valid".
_YOUTUBE_SPLIT = {"train": "train", "val": "valid"}


@dataclass(frozen=True)
class EncodedVideo:
    """A rendered video with its frames encoded once for all writers.

    Attributes:
        name: folder name of the video, unique over both splits.
        sample: the rendered video.
        jpegs: T JPEG frames.
        pngs: T palette PNGs of the track ids (DAVIS colours).
    """

    name: str
    sample: VideoSample
    jpegs: tuple[bytes, ...]
    pngs: tuple[bytes, ...]

    @property
    def frame_names(self) -> list[str]:
        """``["00000", "00001", ...]``: 0-based, five digits, no extension."""
        return [f"{index:05d}" for index in range(len(self.jpegs))]


def write_bytes(path: Path, content: bytes) -> None:
    """Writes a file, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@dataclass
class YtvisWriter:
    """YouTube-VIS 2019: one json per split with videos, per-frame instance annotations and
    categories. ``valid.json`` keeps its annotations (the real one hides them) so evaluation can
    run. Segmentations are uncompressed RLEs, as in the 2019 release; an instance's frames
    where it is not visible hold None."""

    root: Path
    _videos: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _annotations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, split: Split, video: EncodedVideo) -> None:
        """Writes the frames and records the video's annotations."""
        folder = _YOUTUBE_SPLIT[split]
        sample = video.sample
        length, height, width = sample.labels.shape
        for name, jpeg in zip(video.frame_names, video.jpegs, strict=True):
            write_bytes(self.root / folder / "JPEGImages" / video.name / f"{name}.jpg", jpeg)
        videos = self._videos.setdefault(folder, [])
        video_id = len(videos) + 1
        videos.append(
            {
                "id": video_id,
                "width": width,
                "height": height,
                "length": length,
                "file_names": [f"{video.name}/{name}.jpg" for name in video.frame_names],
            }
        )
        annotations = self._annotations.setdefault(folder, [])
        for track in sample.tracks:
            masks = [labels == track.track_id for labels in sample.labels]
            visible = [bool(present) for present in track.present]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": video_id,
                    "category_id": CATEGORIES.index(track.shape.category) + 1,
                    "iscrowd": 0,
                    "height": height,
                    "width": width,
                    "length": length,
                    "segmentations": [
                        rle_uncompressed(m) if v else None
                        for m, v in zip(masks, visible, strict=True)
                    ],
                    "bboxes": [
                        mask_box(m) if v else None for m, v in zip(masks, visible, strict=True)
                    ],
                    "areas": [
                        int(m.sum()) if v else None for m, v in zip(masks, visible, strict=True)
                    ],
                }
            )

    def finish(self) -> None:
        """Writes ``train.json`` and ``valid.json``."""
        for folder, videos in self._videos.items():
            write_json(
                self.root / f"{folder}.json",
                {
                    "videos": videos,
                    "annotations": self._annotations[folder],
                    "categories": categories(),
                },
            )


@dataclass
class DavisWriter:
    """DAVIS 2017: frames and palette-PNG annotations (object ids 1..K, 0 background) under
    ``480p`` (the frames keep the generator's size), and the split lists in ImageSets."""

    root: Path
    _sequences: dict[str, list[str]] = field(default_factory=dict)

    def add(self, split: Split, video: EncodedVideo) -> None:
        """Writes the frames and annotations."""
        for name, jpeg, png in zip(video.frame_names, video.jpegs, video.pngs, strict=True):
            write_bytes(self.root / "JPEGImages" / "480p" / video.name / f"{name}.jpg", jpeg)
            write_bytes(self.root / "Annotations" / "480p" / video.name / f"{name}.png", png)
        self._sequences.setdefault(split, []).append(video.name)

    def finish(self) -> None:
        """Writes ``ImageSets/2017/{train,val}.txt``."""
        for split, names in self._sequences.items():
            path = self.root / "ImageSets" / "2017" / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


@dataclass
class RefYtvosWriter:
    """Ref-YouTube-VOS: YouTube-VOS frames, palette PNGs and ``meta.json`` per split, and the
    expressions in ``meta_expressions``. The valid split keeps its annotations and the
    expressions' ``obj_id`` so evaluation can run."""

    root: Path
    _meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    _expressions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, split: Split, video: EncodedVideo) -> int:
        """Writes the frames and annotations and records the metadata.

        Returns:
            The number of expressions of the video.
        """
        folder = _YOUTUBE_SPLIT[split]
        for name, jpeg, png in zip(video.frame_names, video.jpegs, video.pngs, strict=True):
            write_bytes(self.root / folder / "JPEGImages" / video.name / f"{name}.jpg", jpeg)
            write_bytes(self.root / folder / "Annotations" / video.name / f"{name}.png", png)
        frames = video.frame_names
        objects = {
            str(track.track_id): {
                "category": track.shape.category,
                "frames": [name for name, on in zip(frames, track.present, strict=True) if on],
            }
            for track in video.sample.tracks
        }
        self._meta.setdefault(folder, {})[video.name] = {"objects": objects}
        texts = [
            (text, str(track.track_id))
            for track in video.sample.tracks
            for text in track.expressions
        ]
        self._expressions.setdefault(folder, {})[video.name] = {
            "expressions": {
                str(index): {"exp": text, "obj_id": obj_id}
                for index, (text, obj_id) in enumerate(texts)
            },
            "frames": frames,
        }
        return len(texts)

    def finish(self) -> None:
        """Writes the ``meta.json`` and ``meta_expressions.json`` files."""
        for folder, videos in self._meta.items():
            write_json(self.root / folder / "meta.json", {"videos": videos})
            write_json(
                self.root / "meta_expressions" / folder / "meta_expressions.json",
                {"videos": self._expressions[folder]},
            )
