"""A generated world of coloured shapes, written in the on-disk formats of real datasets.

No dataset can be downloaded where this project is built and tested, so :func:`generate`
renders images and videos of shapes (6 categories with colour, size and texture attributes,
on textured backgrounds, occluding each other) and writes them exactly as COCO, RefCOCO,
YouTube-VIS 2019, DAVIS 2017, LaSOT, MOTChallenge and Ref-YouTube-VOS ship theirs. The
project's readers read them like the real thing, and the model can be trained on them.

Every image and video is rendered once and written to each format that uses it: the images
to ``coco/`` and ``refcoco/``; the videos to ``ytvis/``, ``davis/``, ``refytvos/`` and
``lasot/``; separate videos crowded with the "pedestrian" shape to ``mot/``. Each writer
module documents its layout. The same seed gives the same bytes. Run
``python -m unipercept.data.synthetic --help`` for the CLI.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from unipercept.data.io import replace_folder

from .encoding import encode_index_png, encode_jpeg
from .image_formats import CocoRefcocoWriter
from .scenes import VideoSample, render_image, render_video
from .tracking_formats import PEDESTRIAN, LasotWriter, MotWriter
from .video_formats import DavisWriter, EncodedVideo, RefYtvosWriter, YtvisWriter
from .world import CATEGORIES

__all__ = ["PRESETS", "Preset", "WorldSummary", "generate"]

Size = Literal["small", "train"]
_SPLITS = ("train", "val")
# Independent random streams: an item's stream is (seed, kind, split, index), so the held-out
# split never shares draws with the training one and items do not depend on the counts.
_IMAGES, _VIDEOS, _MOT_VIDEOS, _MOT_DETECTIONS = range(4)
# One image in ten has a crowd region.
_CROWD_EVERY = 10


@dataclass(frozen=True)
class Preset:
    """How much to generate.

    Attributes:
        height: image and frame height.
        width: image and frame width.
        images: images per split (COCO and RefCOCO).
        videos: videos per split (YouTube-VIS, DAVIS, Ref-YouTube-VOS, LaSOT).
        mot_videos: videos per split for MOT, crowded with the pedestrian-class shape.
        frames: inclusive range of video lengths.
    """

    height: int
    width: int
    images: dict[str, int]
    videos: dict[str, int]
    mot_videos: dict[str, int]
    frames: tuple[int, int]


PRESETS: dict[str, Preset] = {
    # What the tests generate; well under a second and 3 MB.
    "small": Preset(
        128, 160, {"train": 10, "val": 6}, {"train": 4, "val": 3}, {"train": 2, "val": 1}, (6, 8)
    ),
    # For training; about 40 s and 300 MB: 2000 images, 150 videos and 20 MOT sequences.
    "train": Preset(
        256,
        320,
        {"train": 1800, "val": 200},
        {"train": 120, "val": 30},
        {"train": 16, "val": 4},
        (8, 24),
    ),
}


@dataclass(frozen=True)
class WorldSummary:
    """What :func:`generate` wrote.

    Attributes:
        root: the output folder.
        seed: the seed.
        size: the preset name.
        images: images per split.
        annotations: COCO annotations over both splits (crowd regions included).
        refs: RefCOCO refs.
        videos: videos per split (YouTube-VIS, DAVIS, Ref-YouTube-VOS).
        video_expressions: Ref-YouTube-VOS expressions over both splits.
        lasot_sequences: LaSOT sequences per split ("train" is LaSOT's training set).
        mot_sequences: MOT sequences per split.
        coco: root of the COCO dataset.
        refcoco: root of RefCOCO.
        ytvis: root of YouTube-VIS 2019.
        davis: root of DAVIS 2017.
        lasot: root of LaSOT.
        mot: root of the MOTChallenge data (TrackEval's ``GT_FOLDER``).
        refytvos: root of Ref-YouTube-VOS.
    """

    root: Path
    seed: int
    size: str
    images: dict[str, int]
    annotations: int
    refs: int
    videos: dict[str, int]
    video_expressions: int
    lasot_sequences: dict[str, int]
    mot_sequences: dict[str, int]
    coco: Path
    refcoco: Path
    ytvis: Path
    davis: Path
    lasot: Path
    mot: Path
    refytvos: Path


def _rng(seed: int, kind: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, _SPLITS.index(split), index])


def _encode(name: str, sample: VideoSample) -> EncodedVideo:
    """Encodes the frames and label maps once for all the video writers."""
    return EncodedVideo(
        name,
        sample,
        tuple(encode_jpeg(frame) for frame in sample.frames),
        tuple(encode_index_png(labels) for labels in sample.labels),
    )


def _render_mot_video(
    rng: np.random.Generator, height: int, width: int, num_frames: int
) -> VideoSample:
    """A video crowded with the pedestrian-class shape (the others distract), redrawn until it
    has at least one pedestrian track."""
    weights = [0.6 if name == PEDESTRIAN else 0.4 / (len(CATEGORIES) - 1) for name in CATEGORIES]
    while True:
        sample = render_video(
            rng, height, width, num_frames, num_objects=(2, 5), category_weights=weights
        )
        if any(track.shape.category == PEDESTRIAN for track in sample.tracks):
            return sample


def _build(root: Path, seed: int, size: Size, progress: bool) -> WorldSummary:
    """Renders everything and writes it under ``root``."""
    preset = PRESETS[size]
    height, width = preset.height, preset.width
    images = CocoRefcocoWriter(root)
    ytvis = YtvisWriter(root / "ytvis")
    davis = DavisWriter(root / "davis")
    refytvos = RefYtvosWriter(root / "refytvos")
    lasot = LasotWriter(root / "lasot")
    mot = MotWriter(root / "mot")
    total = sum(
        sum(counts.values()) for counts in (preset.images, preset.videos, preset.mot_videos)
    )
    lasot_counts = dict.fromkeys(_SPLITS, 0)
    video_expressions = 0
    with tqdm(
        total=total, desc=f"synthetic world ({size})", unit="item", disable=not progress
    ) as bar:
        for split in _SPLITS:
            for index in range(preset.images[split]):
                rng = _rng(seed, _IMAGES, split, index)
                sample = render_image(rng, height, width, crowd=index % _CROWD_EVERY == 3)
                images.add(split, sample, encode_jpeg(sample.image))
                bar.update()
            for index in range(preset.videos[split]):
                rng = _rng(seed, _VIDEOS, split, index)
                num_frames = int(rng.integers(preset.frames[0], preset.frames[1] + 1))
                video = _encode(f"{split}{index:04d}", render_video(rng, height, width, num_frames))
                ytvis.add(split, video)
                davis.add(split, video)
                video_expressions += refytvos.add(split, video)
                lasot_counts[split] += lasot.add(split, video)
                bar.update()
            for index in range(preset.mot_videos[split]):
                rng = _rng(seed, _MOT_VIDEOS, split, index)
                num_frames = int(rng.integers(preset.frames[0], preset.frames[1] + 1))
                sample = _render_mot_video(rng, height, width, num_frames)
                mot.add(
                    split,
                    _encode(f"mot{index:04d}", sample),
                    _rng(seed, _MOT_DETECTIONS, split, index),
                )
                bar.update()
    annotations, refs = images.finish()
    for writer in (ytvis, davis, refytvos, lasot, mot):
        writer.finish()
    return WorldSummary(
        root=root,
        seed=seed,
        size=size,
        images=dict(preset.images),
        annotations=annotations,
        refs=refs,
        videos=dict(preset.videos),
        video_expressions=video_expressions,
        lasot_sequences=lasot_counts,
        mot_sequences=dict(preset.mot_videos),
        coco=root / "coco",
        refcoco=root / "refcoco",
        ytvis=root / "ytvis",
        davis=root / "davis",
        lasot=root / "lasot",
        mot=root / "mot",
        refytvos=root / "refytvos",
    )


def _is_occupied(path: Path) -> bool:
    """Whether ``path`` exists as anything but an empty folder."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def generate(
    out: str | Path,
    seed: int,
    size: Size = "small",
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> WorldSummary:
    """Generates the world and writes every dataset under ``out``.

    The output is built in a temporary folder beside ``out`` and renamed to ``out`` only when
    complete, so an interrupted run never leaves a half-written ``out``; an earlier world at
    ``out`` is replaced only after the new one is complete, and nothing else is ever replaced.

    Args:
        out: the output folder; it must not exist or be empty unless ``overwrite``.
        seed: a non-negative integer; the same seed gives the same bytes.
        size: ``"small"`` (seconds; for tests) or ``"train"`` (minutes; for training), see
            :data:`PRESETS`.
        overwrite: replace an earlier world at ``out`` (a folder holding ``summary.json``).
        progress: show a tqdm progress bar.

    Returns:
        The counts and the dataset roots (under ``out``). ``out/summary.json`` holds the same
        with paths relative to ``out``.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is False, or ``out`` is not
            empty and not an earlier world.
        ValueError: a negative seed or an unknown size.
    """
    out = Path(out).absolute()
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if size not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
    if _is_occupied(out):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
        if not (out / "summary.json").is_file():
            raise FileExistsError(
                f"{out} is not a generated world (no summary.json); --overwrite replaces only an "
                "earlier world, never other files: choose another folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        built = _build(staging, seed, size, progress)
        record = {
            key: str(value.relative_to(staging)) if isinstance(value, Path) else value
            for key, value in asdict(built).items()
            if key != "root"
        }
        (staging / "summary.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WorldSummary(
        **{
            key: out / value.relative_to(staging) if isinstance(value, Path) else value
            for key, value in asdict(built).items()
        }
    )


def _move_into_place(staging: Path, out: Path) -> None:
    """Renames the complete ``staging`` folder to ``out``, replacing an earlier world there
    (checked by the caller: an empty folder or one with ``summary.json``)."""
    replace_folder(staging, out, owned=lambda entry: True)
