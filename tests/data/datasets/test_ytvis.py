from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.ytvis import YouTubeVisReader, segmentation_rle
from unipercept.structures import rle_decode, rle_encode

SIZE = (12, 16)  # (height, width)


def write_jpeg(path: Path, size: tuple[int, int] = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (10, 200, 60)).save(path)


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((1, *SIZE), dtype=bool)
    mask[0, y0:y1, x0:x1] = True
    return mask


def uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """Column-major runs alternating 0 and 1, starting with 0: OVIS's list counts."""
    flat = mask[0].flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(edges).tolist()
    return {"size": list(SIZE), "counts": ([0] if flat[0] else []) + runs}


def ytvis_json(root: Path, annotated: bool = True) -> Path:
    """Video 1: 3 frames; annotation 10 (category 7) in frames 0-1, 11 (category 2) in frame 0.
    Video 2: one frame, no annotations, no size in the json."""
    for name in ("a/0.jpg", "a/1.jpg", "a/2.jpg", "b/0.jpg"):
        write_jpeg(root / "videos" / name)
    data: dict[str, Any] = {
        "videos": [
            {
                "id": 1,
                "width": SIZE[1],
                "height": SIZE[0],
                "length": 3,
                "file_names": ["a/0.jpg", "a/1.jpg", "a/2.jpg"],
            },
            {"id": 2, "length": 1, "file_names": ["b/0.jpg"]},
        ],
        "categories": [{"id": 7, "name": "zebra"}, {"id": 2, "name": "ant"}],
    }
    if annotated:
        data["annotations"] = [
            {
                "id": 11,
                "video_id": 1,
                "category_id": 2,
                "iscrowd": 1,
                "segmentations": [[[1, 1, 5, 1, 5, 5, 1, 5]], None, None],
                "bboxes": [None, None, None],
            },
            {
                "id": 10,
                "video_id": 1,
                "category_id": 7,
                "iscrowd": 0,
                "segmentations": [
                    rle_encode(box_mask(2, 3, 6, 8))[0],
                    uncompressed(box_mask(8, 4, 16, 10)),
                    None,
                ],
                "bboxes": [[2, 3, 4, 5], None, None],
            },
        ]
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def reader(root: Path, **kwargs: Any) -> YouTubeVisReader:
    return YouTubeVisReader(annotations=root / "annotations.json", videos=root / "videos", **kwargs)


def test_videos_tracks_labels_and_boxes(tmp_path):
    ytvis_json(tmp_path)
    vis = reader(tmp_path)
    first_video, second_video = vis.samples()
    assert vis.category_ids == (2, 7) and vis.categories == ("ant", "zebra")
    assert first_video.sample_id == "1" and first_video.categories == ("ant", "zebra")
    f0, f1, f2 = first_video.frames
    assert f0.instances.track_ids.tolist() == [10, 11]
    assert f0.instances.labels.tolist() == [1, 0]
    assert f0.ignore.tolist() == [False, True]
    assert f0.instances.boxes[0].tolist() == [2.0, 3.0, 6.0, 8.0]
    # Uncompressed (OVIS) counts decode to the same mask; without a bbox the box is the mask's.
    assert f1.instances.track_ids.tolist() == [10]
    assert torch.equal(f1.instances.masks.decode()[0], torch.from_numpy(box_mask(8, 4, 16, 10)[0]))
    assert f1.instances.boxes[0].tolist() == [8.0, 4.0, 16.0, 10.0]
    assert len(f2.instances) == 0 and f2.annotated and f2.ignore.shape == (0,)
    assert second_video.frames[0].image_size == SIZE and second_video.frames[0].annotated


def test_test_split_without_annotations(tmp_path):
    ytvis_json(tmp_path, annotated=False)
    samples = reader(tmp_path).samples()
    assert all(not f.annotated and len(f.instances) == 0 for s in samples for f in s.frames)


def test_segmentation_counts_forms_agree():
    mask = box_mask(3, 2, 9, 7)
    compressed = rle_encode(mask)[0]
    as_bytes = {"size": list(SIZE), "counts": compressed["counts"].encode("ascii")}
    for segmentation in (compressed, as_bytes, uncompressed(mask)):
        rle = segmentation_rle(segmentation, SIZE)
        assert isinstance(rle["counts"], str)
        assert torch.equal(rle_decode([rle])[0], torch.from_numpy(mask[0]))
    bad_runs = {"size": list(SIZE), "counts": [5, 5]}
    with pytest.raises(ValueError, match="summing to 192"):
        segmentation_rle(bad_runs, SIZE)
    assert mask_utils.area(segmentation_rle([[1, 1, 5, 1, 5, 5, 1, 5]], SIZE)) > 0


def test_malformed_json_names_file_and_position(tmp_path):
    (tmp_path / "annotations.json").write_text('{"videos": [}')
    with pytest.raises(DatasetError, match=r"annotations\.json: line 1 column 13: malformed"):
        reader(tmp_path).samples()


def test_missing_image_names_file_and_frame(tmp_path):
    ytvis_json(tmp_path)
    (tmp_path / "videos/a/2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a.2\.jpg: video 1 frame 2: image not found"):
        reader(tmp_path).samples()
    # Without image checks, the json is trusted.
    assert len(reader(tmp_path, check_images=False).samples()[0].frames) == 3
    # A missing first frame: the size is checked on the first frame that exists.
    (tmp_path / "videos/a/0.jpg").unlink()
    vis = reader(tmp_path, on_error="skip")
    assert [f.image.name for f in vis.samples()[0].frames] == ["1.jpg"]
    assert dict(vis.skipped) == {"frame": 2}


def test_mask_of_wrong_size_names_annotation_and_frame(tmp_path):
    path = ytvis_json(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][1]["segmentations"][0]["size"] = [6, 8]
    path.write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=r"annotations\.json: video 1 annotation 10 frame 0: mask size \[6, 8\]"
    ):
        reader(tmp_path).samples()


def test_first_frame_size_disagreeing_with_json(tmp_path):
    ytvis_json(tmp_path)
    write_jpeg(tmp_path / "videos/a/0.jpg", size=(20, 16))
    with pytest.raises(DatasetError, match=r"a.0\.jpg: video 1 frame 0: image size \(20, 16\)"):
        reader(tmp_path).samples()


def test_skip_mode_counts_and_skips(tmp_path):
    path = ytvis_json(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][1]["segmentations"][0]["size"] = [6, 8]
    data["annotations"].append({"id": 12, "video_id": 9, "category_id": 2, "segmentations": []})
    data["annotations"].append({"id": 13, "video_id": 1, "category_id": 5, "segmentations": []})
    path.write_text(json.dumps(data))
    (tmp_path / "videos/a/2.jpg").unlink()
    vis = reader(tmp_path, on_error="skip")
    first_video, _ = vis.samples()
    assert dict(vis.skipped) == {"annotation": 2, "frame": 1, "mask": 1}
    assert len(first_video.frames) == 2
    assert first_video.frames[0].instances.track_ids.tolist() == [11]
    with pytest.raises(DatasetError, match=r"annotations\.json: annotation 12: unknown video_id 9"):
        reader(tmp_path).samples()


def test_bbox_past_the_frame_is_clipped_and_counted_and_one_outside_is_bad(tmp_path):
    path = ytvis_json(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][1]["bboxes"][0] = [-2, 3, 20, 5]
    path.write_text(json.dumps(data))
    vis = reader(tmp_path)
    first_video, _ = vis.samples()
    assert first_video.frames[0].instances.boxes[0].tolist() == [0.0, 3.0, 16.0, 8.0]
    assert dict(vis.changed) == {"clipped box": 1} and not vis.skipped
    # A bbox wholly outside the frame is a bad record, like a bad mask in that frame.
    data["annotations"][1]["bboxes"][0] = [17, 3, 4, 5]
    path.write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=r"video 1 annotation 10 frame 0: box .* lies outside the 16x12 image"
    ):
        reader(tmp_path).samples()
    vis = reader(tmp_path, on_error="skip")
    first_video, _ = vis.samples()
    assert first_video.frames[0].instances.track_ids.tolist() == [11]
    assert dict(vis.skipped) == {"mask": 1}
