"""RefCocoReader on a small refs pickle and instances.json written here, and on bad refs."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.refcoco import RefCocoReader

HEIGHT, WIDTH = 20, 30


def _box(ann_id: int, image_id: int, category_id: int, x: int) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, 2, 5, 5],
        "segmentation": [[x, 2, x + 5, 2, x + 5, 7, x, 7]],
        "iscrowd": 0,
    }


def _instances() -> dict:
    return {
        "images": [
            {"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg"}
            | {"height": HEIGHT, "width": WIDTH}
            for image_id in (1, 2, 3)
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [_box(11, 1, 1, 0), _box(12, 1, 3, 10), _box(21, 2, 1, 20)],
    }


def _ref(ref_id: int, ann_id: int, image_id: int, split: str, *sentences: dict) -> dict:
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "split": split,
        "sentences": list(sentences),
        "sent_ids": list(range(len(sentences))),
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
    }


def _refs() -> list[dict]:
    return [
        _ref(0, 11, 1, "train", {"sent": "man on left", "raw": "Man on left."}, {"raw": "guy"}),
        _ref(1, 12, 1, "testA", {"sent": "red car"}),
        _ref(2, 21, 2, "train", {"sent": "person", "tokens": ["person"]}),
    ]


def _reader(tmp_path: Path, refs: list, instances: dict | None = None, **kwargs) -> RefCocoReader:
    images = tmp_path / "train2014"
    images.mkdir(exist_ok=True)
    for image_id in (1, 2, 3):
        Image.new("RGB", (WIDTH, HEIGHT)).save(images / f"COCO_train2014_{image_id:012d}.jpg")
    (tmp_path / "instances.json").write_text(json.dumps(instances or _instances()))
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return RefCocoReader(
        refs=tmp_path / "refs(unc).p",
        instances=tmp_path / "instances.json",
        images=images,
        **kwargs,
    )


def test_reads_expressions_of_a_split_with_every_object(tmp_path):
    reader = _reader(tmp_path, _refs(), split="train")
    first, second = reader.samples()
    assert reader.categories == ("person", "car") and reader.category_ids == (1, 3)
    assert (first.dataset, first.sample_id, second.sample_id) == ("refcoco", "1", "2")
    assert [(e.text, e.target_ids) for e in first.expressions] == [
        ("man on left", (11,)),
        ("guy", (11,)),  # no "sent": the raw sentence
    ]
    # Every annotation of the image is there, the one not referred to as a negative.
    inst = first.frames[0].instances
    assert inst.track_ids.tolist() == [11, 12] and inst.labels.tolist() == [0, 1]
    assert inst.masks.area().tolist() == [25, 25]
    assert [e.text for e in second.expressions] == ["person"]


def test_split_none_reads_all_refs_and_unknown_splits_fail(tmp_path):
    samples = _reader(tmp_path, _refs()).samples()
    assert [len(s.expressions) for s in samples] == [3, 1]
    assert [e.text for e in _reader(tmp_path, _refs(), split="testA").samples()[0].expressions] == [
        "red car"
    ]
    with pytest.raises(ValueError, match="split must be one of"):
        _reader(tmp_path, _refs(), split="minival")
    with pytest.raises(ValueError, match=r"no ref of split 'testB'"):
        _reader(tmp_path, _refs(), split="testB")


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        (_ref(5, 99, 2, "train", {"sent": "ghost"}), "ann_id 99 is not an annotation"),
        (_ref(5, 21, 42, "train", {"sent": "ghost"}), "image_id 42 is not an image"),
        (_ref(5, 11, 2, "train", {"sent": "ghost"}), "ann_id 11 belongs to image 1, not 2"),
        (_ref(5, 21, 2, "train", {"tokens": []}), "has a missing or empty sentence"),
    ],
    ids=["missing annotation", "missing image", "wrong image", "no sentence"],
)
def test_bad_ref_raises_or_is_skipped(tmp_path, ref, problem):
    with pytest.raises(DatasetError, match=rf"refs\(unc\)\.p: ref 5: {problem}"):
        _reader(tmp_path, [*_refs(), ref], split="train").samples()
    reader = _reader(tmp_path, [*_refs(), ref], split="train", on_error="skip")
    assert [len(s.expressions) for s in reader.samples()] == [2, 1]
    assert reader.skipped == {"ref": 1}


def test_ref_to_a_skipped_annotation_is_skipped_too(tmp_path):
    instances = _instances()
    instances["annotations"][2]["bbox"] = [40, 2, 5, 5]  # outside the 30 px wide image
    with pytest.raises(
        DatasetError, match=r"instances\.json: annotation 21 \(image 2\): .*outside"
    ):
        _reader(tmp_path, _refs(), instances).samples()
    reader = _reader(tmp_path, _refs(), instances, on_error="skip")
    assert [s.sample_id for s in reader.samples()] == ["1"]
    assert reader.skipped == {"annotation": 1, "ref": 1}


def test_missing_image_file_skips_its_sample(tmp_path):
    reader = _reader(tmp_path, _refs(), on_error="skip")
    (tmp_path / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    assert [s.sample_id for s in reader.samples()] == ["1"]
    assert reader.skipped == {"image": 1}


def test_pickle_with_a_class_is_refused(tmp_path):
    refs = [collections.OrderedDict(_refs()[0])]
    with pytest.raises(DatasetError, match=r"refs\(unc\)\.p: pickle: refusing to load"):
        _reader(tmp_path, refs)
