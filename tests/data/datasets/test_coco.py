"""CocoReader on small COCO / LVIS jsons written here, on bad records, and on real COCO val2014
annotations checked against pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.coco import CocoReader
from unipercept.structures.masks import rle_encode

FIXTURES = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures"
REAL_COCO = FIXTURES / "coco_val2014_100" / "instances_val2014_100.json"

HEIGHT, WIDTH = 20, 30


def _crowd_rle() -> dict:
    """Uncompressed RLE (as COCO's crowd objects): rows 2..5 of columns 0..9."""
    dense = np.zeros((HEIGHT, WIDTH), dtype=bool)
    dense[2:6, 0:10] = True
    runs, value, count = [], False, 0
    for pixel in dense.T.flatten():  # column-major, as COCO
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    return {"size": [HEIGHT, WIDTH], "counts": runs}


def _dataset() -> dict:
    square = torch.zeros(1, HEIGHT, WIDTH, dtype=torch.bool)
    square[0, 10:15, 20:25] = True
    return {
        "images": [
            {"id": 7, "file_name": "a.jpg", "height": HEIGHT, "width": WIDTH},
            {"id": 8, "file_name": "b.jpg", "height": HEIGHT, "width": WIDTH},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {
                "id": 101,
                "image_id": 7,
                "category_id": 18,
                "bbox": [2.0, 3.0, 8.0, 6.0],
                "segmentation": [[2, 3, 10, 3, 10, 9, 2, 9]],
                "iscrowd": 0,
            },
            {
                "id": 102,
                "image_id": 7,
                "category_id": 1,
                "bbox": [20, 10, 5, 5],
                "segmentation": rle_encode(square)[0],
                "iscrowd": 0,
            },
            {
                "id": 103,
                "image_id": 7,
                "category_id": 1,
                "bbox": [0, 2, 10, 4],
                "segmentation": _crowd_rle(),
                "iscrowd": 1,
            },
        ],
    }


def _write(tmp_path: Path, data: dict, images: tuple[str, ...] = ("a.jpg", "b.jpg")) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "images" / name)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def _reader(tmp_path: Path, data: dict, **kwargs) -> CocoReader:
    return CocoReader(annotations=_write(tmp_path, data), images=tmp_path / "images", **kwargs)


def test_reads_boxes_labels_masks_and_crowd(tmp_path):
    reader = _reader(tmp_path, _dataset())
    first, second = reader.samples()
    assert reader.categories == ("person", "dog")
    assert reader.category_ids == (1, 18)
    assert (first.dataset, first.sample_id, first.categories) == ("coco", "7", ("person", "dog"))
    frame = first.frames[0]
    assert frame.image == tmp_path / "images" / "a.jpg"
    inst = frame.instances
    assert inst.image_size == (HEIGHT, WIDTH)
    assert inst.track_ids.tolist() == [101, 102, 103]
    assert [reader.category_ids[i] for i in inst.labels.tolist()] == [18, 1, 1]
    assert inst.boxes.tolist() == [[2, 3, 10, 9], [20, 10, 25, 15], [0, 2, 10, 6]]
    assert frame.ignore.tolist() == [False, False, True]
    masks = inst.masks.decode()
    assert masks.sum(dim=(1, 2)).tolist() == [48, 25, 40]
    assert masks[1, 10:15, 20:25].all() and masks[2, 2:6, 0:10].all()
    # An image without annotations is a sample with typed, empty instances.
    empty = second.frames[0]
    assert second.sample_id == "8" and len(empty.instances) == 0
    assert len(empty.instances.masks) == 0 and empty.ignore.shape == (0,)


def test_box_only_and_lvis_fields(tmp_path):
    data = _dataset()
    for ann in data["annotations"]:
        del ann["segmentation"], ann["iscrowd"]
    data["images"] = [
        {
            "id": 7,
            "coco_url": "http://images.cocodataset.org/val2017/a.jpg",
            "height": HEIGHT,
            "width": WIDTH,
            "not_exhaustive_category_ids": [18],
            "neg_category_ids": [1],
        }
    ]
    data["annotations"][0]["bbox"] = [20.5, 10, 10, 5]  # overhangs by 0.5 px: clipped
    path = _write(tmp_path, data, images=())
    (tmp_path / "images" / "val2017").mkdir()
    Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "images" / "val2017" / "a.jpg")
    reader = CocoReader(annotations=path, images=tmp_path / "images", name="lvis", masks=False)
    (sample,) = reader.samples()
    assert sample.frames[0].image == tmp_path / "images" / "val2017" / "a.jpg"
    inst = sample.frames[0].instances
    assert inst.masks is None
    assert inst.boxes[0].tolist() == [20.5, 10, 30, 15]
    assert not sample.frames[0].ignore.any()
    assert reader.not_exhaustive_category_ids == {7: (18,)}
    assert reader.neg_category_ids == {7: (1,)}


def _set(index: int, key: str, value):
    def edit(data: dict) -> None:
        data["annotations"][index][key] = value

    return edit


BAD_ANNOTATIONS = {
    "unknown image": (_set(0, "image_id", 99), "annotation 101", "image_id 99"),
    "unknown category": (_set(1, "category_id", 5), "annotation 102", "category_id 5"),
    "box outside": (_set(0, "bbox", [31, 3, 8, 6]), "annotation 101 (image 7)", "outside"),
    "zero width": (_set(0, "bbox", [2, 3, 0, 6]), "annotation 101 (image 7)", "zero or negative"),
    "negative height": (_set(1, "bbox", [2, 3, 4, -1]), "annotation 102 (image 7)", "negative"),
    "garbage rle": (
        _set(1, "segmentation", {"size": [HEIGHT, WIDTH], "counts": "ab!"}),
        "annotation 102 (image 7)",
        "does not decode",
    ),
    "short rle": (
        _set(2, "segmentation", {"size": [HEIGHT, WIDTH], "counts": [5, 10]}),
        "annotation 103 (image 7)",
        "cover 15 pixels",
    ),
    "odd polygon": (
        _set(0, "segmentation", [[2, 3, 10, 3, 10]]),
        "annotation 101 (image 7)",
        "does not decode",
    ),
}


@pytest.mark.parametrize("case", BAD_ANNOTATIONS, ids=list(BAD_ANNOTATIONS))
def test_bad_annotation_raises_or_is_skipped(tmp_path, case):
    edit, record, problem = BAD_ANNOTATIONS[case]
    data = _dataset()
    edit(data)
    with pytest.raises(DatasetError, match=rf"instances\.json: {re.escape(record)}: .*{problem}"):
        _reader(tmp_path, data).samples()
    reader = _reader(tmp_path, data, on_error="skip")
    samples = reader.samples()
    assert reader.skipped == {"annotation": 1}
    assert len(samples) == 2 and len(samples[0].frames[0].instances) == 2


def test_box_past_the_image_is_clipped_and_counted(tmp_path, caplog):
    """Boxes overhanging their image by any amount are clipped to it and counted (logged once);
    only a box wholly outside is a bad record (see BAD_ANNOTATIONS)."""
    data = _dataset()
    data["annotations"][0]["bbox"] = [25, -4, 8, 6]
    reader = _reader(tmp_path, data)
    with caplog.at_level("INFO", logger="unipercept.data.datasets.base"):
        first, _ = reader.samples()
    assert first.frames[0].instances.boxes[0].tolist() == [25.0, 0.0, 30.0, 2.0]
    assert dict(reader.changed) == {"clipped box": 1} and not reader.skipped
    assert [r.getMessage() for r in caplog.records] == ["coco: read with 1 clipped box"]


def test_missing_image_file_raises_or_skips_the_image(tmp_path):
    path = _write(tmp_path, _dataset(), images=("a.jpg",))
    with pytest.raises(DatasetError, match=r"instances.json: image 8: file .*b.jpg not found"):
        CocoReader(annotations=path, images=tmp_path / "images").samples()
    reader = CocoReader(annotations=path, images=tmp_path / "images", on_error="skip")
    assert [s.sample_id for s in reader.samples()] == ["7"]
    assert reader.skipped == {"image": 1}


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [],\n "categories": [}\n')
    with pytest.raises(DatasetError, match=r"instances.json: line 2 column 17: malformed json"):
        CocoReader(annotations=path, images=tmp_path)


@pytest.mark.skipif(not REAL_COCO.is_file(), reason=f"reference fixture {REAL_COCO} is absent")
def test_real_coco_val2014_matches_pycocotools():
    from pycocotools.coco import COCO

    reader = CocoReader(annotations=REAL_COCO, images=FIXTURES, check_images=False)
    samples = reader.samples()
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        coco = COCO(str(REAL_COCO))
    assert len(samples) == 100 and not reader.skipped
    assert sum(len(s.frames[0].instances) for s in samples) == 839
    assert sum(int(s.frames[0].ignore.sum()) for s in samples) == 9
    assert reader.categories == tuple(coco.cats[i]["name"] for i in sorted(coco.cats))
    for sample in samples:
        inst = sample.frames[0].instances
        masks = inst.masks.decode()
        image = coco.imgs[int(sample.sample_id)]
        assert inst.image_size == (image["height"], image["width"])
        for index, ann_id in enumerate(inst.track_ids.tolist()):
            ann = coco.anns[ann_id]
            assert reader.category_ids[int(inst.labels[index])] == ann["category_id"]
            assert bool(sample.frames[0].ignore[index]) == bool(ann["iscrowd"])
            expected = torch.from_numpy(coco.annToMask(ann)).bool()
            assert torch.equal(masks[index], expected), ann_id
