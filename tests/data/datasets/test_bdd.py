"""Bdd100kReader on small Scalabel MOT / MOTS label files written here, and on bad records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.bdd import Bdd100kReader
from unipercept.structures.masks import rle_encode

SIZE = (24, 32)  # small frames keep the test fast; BDD100K's are (720, 1280)
VIDEO = "b1c66a42-6f7d68ca"


def _mask(x1: int, y1: int, x2: int, y2: int) -> dict:
    dense = torch.zeros(1, *SIZE, dtype=torch.bool)
    dense[0, y1:y2, x1:x2] = True
    return rle_encode(dense)[0]


def _label(track: str, category: str, box: tuple[float, ...] | None, **attributes) -> dict:
    label = {"id": track, "category": category, "attributes": {"occluded": False} | attributes}
    if box is not None:
        label["box2d"] = dict(zip(("x1", "y1", "x2", "y2"), box, strict=True))
        label["rle"] = _mask(*(int(v) for v in box[:2]), *(int(v) + 1 for v in box[2:]))
    return label


def _frames(video: str = VIDEO) -> list[dict]:
    frames = [
        [
            _label("871", "car", (2, 3, 11, 8)),
            _label("12", "pedestrian", (20, 4, 23, 15), crowd=True),
            _label("5", "other person", (0, 0, 3, 3)),  # not a tracking class: dropped
        ],
        [_label("12", "pedestrian", (21, 4, 24, 15)), _label("99", "bus", (0, 10, 32, 23))],
        [],
    ]
    records = [
        {"name": f"{video}-{i + 1:07d}.jpg", "videoName": video, "frameIndex": i, "labels": labels}
        for i, labels in enumerate(frames)
    ]
    return records[::-1]  # files need not be in frame order


def _write(tmp_path: Path, frames: list[dict], size: tuple[int, int] = SIZE) -> Path:
    labels = tmp_path / "labels"
    labels.mkdir(exist_ok=True)
    (labels / "video.json").write_text(json.dumps(frames))
    for record in frames:
        folder = tmp_path / "images" / record["videoName"]
        folder.mkdir(parents=True, exist_ok=True)
        if "name" in record:
            Image.new("RGB", (size[1], size[0])).save(folder / record["name"])
    return labels


def _reader(tmp_path: Path, frames: list[dict], **kwargs) -> Bdd100kReader:
    labels = _write(tmp_path, frames)
    return Bdd100kReader(labels=labels, images=tmp_path / "images", image_size=SIZE, **kwargs)


def test_reads_tracks_in_frame_order(tmp_path):
    reader = _reader(tmp_path, _frames())
    (sample,) = reader.samples()
    assert (sample.dataset, sample.sample_id) == ("bdd100k", VIDEO)
    assert sample.categories[:3] == ("pedestrian", "rider", "car")
    assert [f.image.name for f in sample.frames] == [f"{VIDEO}-000000{i}.jpg" for i in (1, 2, 3)]
    first, second, third = sample.frames
    # box2d corners are inclusive pixels; tracks are numbered by first appearance.
    assert first.instances.boxes.tolist() == [[2, 3, 12, 9], [20, 4, 24, 16]]
    assert first.instances.labels.tolist() == [2, 0]
    assert first.instances.track_ids.tolist() == [1, 2]
    assert first.ignore.tolist() == [False, True]
    assert first.instances.masks is None
    # A box overhanging the 32 px wide frame by a pixel is clipped.
    assert second.instances.boxes.tolist() == [[21, 4, 25, 16], [0, 10, 32, 24]]
    assert second.instances.track_ids.tolist() == [2, 3]
    assert len(third.instances) == 0
    assert reader.track_names == {VIDEO: ("871", "12", "99")}


def test_reads_mots_masks_and_their_boxes(tmp_path):
    frames = _frames()
    del frames[-1]["labels"][0]["box2d"]  # first frame's car: box from its mask
    (sample,) = _reader(tmp_path, frames, masks=True).samples()
    first = sample.frames[0]
    masks = first.instances.masks.decode()
    assert masks.shape == (2, *SIZE) and masks[0, 3:9, 2:12].all()
    assert masks.sum(dim=(1, 2)).tolist() == [60, 48]
    assert first.instances.boxes.tolist() == [[2, 3, 12, 9], [20, 4, 24, 16]]


def test_one_json_with_several_videos(tmp_path):
    path = tmp_path / "labels.json"
    frames = _frames() + _frames("other-video")
    _write(tmp_path, frames)
    path.write_text(json.dumps({"frames": frames, "config": {}}))
    reader = Bdd100kReader(labels=path, images=tmp_path / "images", image_size=SIZE)
    assert [s.sample_id for s in reader.samples()] == [VIDEO, "other-video"]


def test_frame_size_must_match(tmp_path):
    labels = _write(tmp_path, _frames(), size=(20, 32))
    reader = Bdd100kReader(labels=labels, images=tmp_path / "images", image_size=SIZE)
    with pytest.raises(DatasetError, match=r"0000001\.jpg: video .* frame 0: image is \(20, 32\)"):
        reader.samples()


def _edit_label(key: str, value):
    def edit(frames: list[dict]) -> None:
        frames[-1]["labels"][0][key] = value

    return edit


def _drop_name(frames: list[dict]) -> None:
    del frames[0]["name"]


BAD = {
    "box outside": (
        _edit_label("box2d", {"x1": 33, "y1": 3, "x2": 40, "y2": 8}),
        f"video {VIDEO} frame 0 label 871",
        "outside the 32x24 image",
        "label",
        3,
    ),
    "zero size box": (
        _edit_label("box2d", {"x1": 5, "y1": 3, "x2": 3, "y2": 8}),
        f"video {VIDEO} frame 0 label 871",
        "zero or negative",
        "label",
        3,
    ),
    "no id": (_edit_label("id", None), f"video {VIDEO} frame 0 label #0", "has no id", "label", 3),
    "frame without name": (_drop_name, "frames[0]", "needs a string name", "frame", 4),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_record_raises_or_is_skipped(tmp_path, case):
    edit, record, problem, kind, instances = BAD[case]
    frames = _frames()
    edit(frames)
    with pytest.raises(DatasetError, match=rf"video\.json: {re.escape(record)}: .*{problem}"):
        _reader(tmp_path, frames).samples()
    reader = _reader(tmp_path, frames, on_error="skip")
    (sample,) = reader.samples()
    assert reader.skipped == {kind: 1}
    assert sum(len(f.instances) for f in sample.frames) == instances


def test_box_past_the_image_is_clipped_and_counted(tmp_path):
    frames = _frames()
    frames[-1]["labels"][0]["box2d"] = {"x1": 2, "y1": 3, "x2": 40, "y2": 8}
    reader = _reader(tmp_path, frames)
    (sample,) = reader.samples()
    assert sample.frames[0].instances.boxes[0].tolist() == [2.0, 3.0, 32.0, 9.0]
    # This car and the second frame's bus, which overhangs by a pixel.
    assert dict(reader.changed) == {"clipped box": 2} and not reader.skipped


def test_undecodable_rle_raises_or_is_skipped(tmp_path):
    frames = _frames()
    frames[-1]["labels"][1]["rle"] = {"size": list(SIZE), "counts": "0000"}
    with pytest.raises(
        DatasetError,
        match=rf"video\.json: video {VIDEO} frame 0 label 12: rle does not decode: RLE runs",
    ):
        _reader(tmp_path, frames, masks=True).samples()
    reader = _reader(tmp_path, frames, masks=True, on_error="skip")
    (sample,) = reader.samples()
    assert sample.frames[0].instances.track_ids.tolist() == [1]
    assert reader.skipped == {"label": 1}


def test_missing_image_raises_or_skips_the_frame(tmp_path):
    labels = _write(tmp_path, _frames())
    (tmp_path / "images" / VIDEO / f"{VIDEO}-0000002.jpg").unlink()
    reader = Bdd100kReader(labels=labels, images=tmp_path / "images", image_size=SIZE)
    with pytest.raises(DatasetError, match=rf"video\.json: video {VIDEO} frame 1: image file .*"):
        reader.samples()
    reader.on_error = "skip"
    (sample,) = reader.samples()
    assert [f.image.name[-5] for f in sample.frames] == ["1", "3"]
    assert reader.skipped == {"frame": 1}
