from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.ytvos import YouTubeVosReader

SIZE = (12, 16)  # (height, width)


def write_jpeg(path: Path, size: tuple[int, int] = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (40, 80, 160)).save(path)


def write_palette_png(path: Path, index: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(index.astype(np.uint8))
    image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [99] * (256 * 3 - 9))
    image.save(path)


def ytvos_tree(root: Path, split: str = "train") -> dict[str, np.ndarray]:
    """Video "v1": 6 JPEG frames, PNGs every 5th frame; object 1 a person, 2 a dog. Video "v0":
    one frame with a cat."""
    first = np.zeros(SIZE, dtype=np.uint8)
    first[1:4, 2:6] = 1
    first[5:9, 7:12] = 2
    last = np.zeros(SIZE, dtype=np.uint8)
    last[6:10, 8:13] = 2
    pngs = {"00000": first, "00005": last}
    base = root / split
    for index in range(6):
        write_jpeg(base / "JPEGImages" / "v1" / f"{index:05d}.jpg")
    for stem, mask in pngs.items():
        write_palette_png(base / "Annotations" / "v1" / f"{stem}.png", mask)
    write_jpeg(base / "JPEGImages" / "v0" / "00000.jpg")
    cat = np.zeros(SIZE, dtype=np.uint8)
    cat[0:2, 0:2] = 1
    write_palette_png(base / "Annotations" / "v0" / "00000.png", cat)
    meta = {
        "videos": {
            "v1": {
                "objects": {
                    "1": {"category": "person", "frames": ["00000"]},
                    "2": {"category": "dog", "frames": ["00000", "00005"]},
                }
            },
            "v0": {"objects": {"1": {"category": "cat", "frames": ["00000"]}}},
        }
    }
    (base / "meta.json").write_text(json.dumps(meta))
    return pngs


def test_sparse_masks_categories_and_unannotated_frames(tmp_path):
    pngs = ytvos_tree(tmp_path)
    reader = YouTubeVosReader(root=tmp_path)
    v0, v1 = reader.samples()
    assert reader.categories == ("cat", "dog", "person")
    assert (v0.sample_id, v1.sample_id) == ("v0", "v1")
    assert v1.categories == ("cat", "dog", "person")
    assert [f.annotated for f in v1.frames] == [True, False, False, False, False, True]
    first, last = v1.frames[0], v1.frames[5]
    assert first.instances.track_ids.tolist() == [1, 2]
    assert first.instances.labels.tolist() == [2, 1]
    masks = first.instances.masks.decode()
    assert torch.equal(masks[1], torch.from_numpy(pngs["00000"] == 2))
    assert first.instances.boxes[1].tolist() == [7.0, 5.0, 12.0, 9.0]
    assert last.instances.track_ids.tolist() == [2]
    assert len(v1.frames[2].instances) == 0 and v1.frames[2].image_size == SIZE
    assert v0.frames[0].instances.labels.tolist() == [0]


def test_only_annotated_frames(tmp_path):
    ytvos_tree(tmp_path)
    v1 = YouTubeVosReader(root=tmp_path, all_frames=False).read_video("v1")
    assert [f.image.stem for f in v1.frames] == ["00000", "00005"]


def test_meta_without_categories_is_class_agnostic(tmp_path):
    ytvos_tree(tmp_path, split="valid")
    meta = {"videos": {"v0": {"objects": {"1": {"frames": ["00000"]}}}}}
    (tmp_path / "valid" / "meta.json").write_text(json.dumps(meta))
    (sample,) = YouTubeVosReader(root=tmp_path, split="valid").samples()
    assert sample.categories == ()
    assert sample.frames[0].instances.labels.tolist() == [0]


def test_malformed_meta_json_names_file_and_position(tmp_path):
    ytvos_tree(tmp_path)
    (tmp_path / "train" / "meta.json").write_text('{"videos": {"v1": ')
    with pytest.raises(DatasetError, match=r"meta\.json: line 1 column \d+: malformed json"):
        YouTubeVosReader(root=tmp_path).samples()


def test_object_id_missing_from_meta_raises(tmp_path):
    pngs = ytvos_tree(tmp_path)
    mask = pngs["00005"].copy()
    mask[0:2, 0:3] = 3
    write_palette_png(tmp_path / "train/Annotations/v1/00005.png", mask)
    with pytest.raises(
        DatasetError, match=r"00005\.png: video v1 frame 00005: object id 3 is not listed in"
    ):
        YouTubeVosReader(root=tmp_path).samples()
    reader = YouTubeVosReader(root=tmp_path, on_error="skip")
    v1 = reader.read_video("v1")
    assert v1.frames[5].instances.track_ids.tolist() == [2]
    assert dict(reader.skipped) == {"object": 1}


def test_missing_image_names_the_annotation(tmp_path):
    ytvos_tree(tmp_path)
    write_palette_png(tmp_path / "train/Annotations/v1/00010.png", np.zeros(SIZE))
    with pytest.raises(DatasetError, match=r"00010\.png: video v1 frame 00010: has no image"):
        YouTubeVosReader(root=tmp_path).samples()


def test_missing_annotation_folder_is_reported(tmp_path):
    ytvos_tree(tmp_path)
    for png in (tmp_path / "train/Annotations/v0").iterdir():
        png.unlink()
    (tmp_path / "train/Annotations/v0").rmdir()
    with pytest.raises(DatasetError, match=r"Annotations.v0: video v0: annotation folder"):
        YouTubeVosReader(root=tmp_path).samples()


def test_mask_of_wrong_size_is_reported(tmp_path):
    ytvos_tree(tmp_path)
    write_palette_png(tmp_path / "train/Annotations/v1/00005.png", np.zeros((6, 8)))
    with pytest.raises(DatasetError, match=r"00005\.png: video v1 frame 00005: mask size"):
        YouTubeVosReader(root=tmp_path).samples()


def test_skip_mode_counts_and_skips(tmp_path):
    ytvos_tree(tmp_path)
    write_palette_png(tmp_path / "train/Annotations/v1/00005.png", np.zeros((6, 8)))
    meta = json.loads((tmp_path / "train/meta.json").read_text())
    meta["videos"]["v2"] = {"objects": {}}
    (tmp_path / "train/meta.json").write_text(json.dumps(meta))
    reader = YouTubeVosReader(root=tmp_path, on_error="skip")
    samples = reader.samples()
    assert [s.sample_id for s in samples] == ["v0", "v1"]
    assert dict(reader.skipped) == {"annotation": 1, "video": 1}
    assert samples[1].frames[5].annotated is False
    with pytest.raises(DatasetError, match=r"JPEGImages.v2: video v2: no frame images"):
        YouTubeVosReader(root=tmp_path).read_video("v2")


def test_unpadded_frames_are_in_natural_order(tmp_path):
    ytvos_tree(tmp_path)
    folder = tmp_path / "train" / "JPEGImages" / "v0"
    for t in range(1, 12):
        write_jpeg(folder / f"{t}.jpg")
    (folder / "00000.jpg").rename(folder / "0.jpg")
    annotations = tmp_path / "train" / "Annotations" / "v0"
    (annotations / "00000.png").rename(annotations / "0.png")
    v0 = YouTubeVosReader(root=tmp_path).read_video("v0")
    assert [f.image.stem for f in v0.frames] == [str(t) for t in range(12)]
    assert [f.annotated for f in v0.frames] == [True] + [False] * 11
