"""The held-out part of a fine-tune's data, when the user gives no separate validation data.

A fixed fraction of the images (COCO, RefCOCO), videos (YouTube-VIS) or sequences (MOT) is set
aside by a draw that depends only on the ids, not on the run's seed or the file's order, so
every run on the same data scores the same held-out part and never trains on it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from unipercept.data.datasets.base import DatasetReader
from unipercept.data.types import Sample
from unipercept.train import ConfigurationError

# The draw's seed: fixed, so that the split is a function of the data alone.
SPLIT_SEED = 0


def _natural(text: str) -> list[Any]:
    """Sort key putting ``"2"`` before ``"10"`` (and ``seq2`` before ``seq10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def held_out(ids: Collection[str], fraction: float, *, what: str, source: str) -> frozenset[str]:
    """The ids to hold out: ``fraction`` of them, at least one, leaving at least one to train.

    Args:
        ids: every image, video or sequence id of the training data.
        fraction: the share to hold out, strictly between 0 and 1.
        what: what an id names, for messages ("images", "videos", "sequences").
        source: the data (and the option that gives separate validation data), for messages.

    Raises:
        ConfigurationError: ``fraction`` outside (0, 1), or fewer than two ids.
    """
    if not 0 < fraction < 1:
        raise ConfigurationError(
            f"data.val_fraction must be between 0 and 1 (exclusive), got {fraction}"
        )
    unique = sorted(set(ids), key=_natural)
    if len(unique) < 2:
        raise ConfigurationError(
            f"{source} has {len(unique)} {what}: too few to hold some out for evaluation"
        )
    count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    drawn = random.Random(SPLIT_SEED).sample(unique, len(unique))
    return frozenset(drawn[:count])


def sorted_ids(ids: Collection[str]) -> list[str]:
    """``ids`` in natural order (for the split's record)."""
    return sorted(ids, key=_natural)


class SubsetReader(DatasetReader):
    """The samples of another reader, except those whose ``sample_id`` is held out.

    Args:
        reader: makes the reader of the whole data (a config's partial).
        exclude: the held-out ``sample_id`` s.
        name: the dataset's name in logs.
    """

    def __init__(
        self, *, reader: Callable[[], DatasetReader], exclude: Collection[str], name: str
    ) -> None:
        super().__init__()
        self.reader = reader
        self.exclude = frozenset(exclude)
        self.name = name

    def _read(self) -> Iterator[Sample]:
        for sample in self.reader():
            if sample.sample_id not in self.exclude:
                yield sample


def coco_subset(data: Mapping[str, Any], image_ids: Collection[int]) -> dict[str, Any]:
    """A COCO json's content restricted to some images (and their annotations)."""
    keep = set(image_ids)
    subset = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    subset["images"] = [image for image in data["images"] if image.get("id") in keep]
    subset["annotations"] = [
        annotation
        for annotation in data.get("annotations", [])
        if annotation.get("image_id") in keep
    ]
    return subset


def ytvis_subset(data: Mapping[str, Any], video_ids: Collection[int]) -> dict[str, Any]:
    """A YouTube-VIS json's content restricted to some videos (and their annotations)."""
    keep = set(video_ids)
    subset = {key: value for key, value in data.items() if key not in ("videos", "annotations")}
    subset["videos"] = [video for video in data["videos"] if video.get("id") in keep]
    subset["annotations"] = [
        annotation
        for annotation in data.get("annotations", [])
        if annotation.get("video_id") in keep
    ]
    return subset


def split_record(train: Sequence[str], val: Sequence[str], *, what: str) -> dict[str, Any]:
    """What ``<output_dir>/finetune/split.json`` says: which ids trained and which scored."""
    return {"unit": what, "train": sorted_ids(train), "val": sorted_ids(val)}
