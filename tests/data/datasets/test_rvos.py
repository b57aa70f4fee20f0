from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.rvos import RefDavisReader, RefYouTubeVosReader

SIZE = (12, 16)  # (height, width)


def write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE[1], SIZE[0]), (70, 70, 200)).save(path)


def write_palette_png(path: Path, index: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(index.astype(np.uint8))
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [64] * (256 * 3 - 9))
    image.save(path)


def two_objects() -> np.ndarray:
    index = np.zeros(SIZE, dtype=np.uint8)
    index[1:4, 1:5] = 1
    index[6:10, 8:12] = 2
    return index


def ref_ytvos_tree(root: Path) -> Path:
    """Train video "v1" (2 frames, objects 1 and 2) with three expressions; a valid split of
    JPEGs and expressions only."""
    for stem in ("00000", "00005"):
        write_jpeg(root / "train/JPEGImages/v1" / f"{stem}.jpg")
    write_palette_png(root / "train/Annotations/v1/00000.png", two_objects())
    meta = {"videos": {"v1": {"objects": {"1": {"category": "dog"}, "2": {"category": "cat"}}}}}
    (root / "train/meta.json").write_text(json.dumps(meta))
    expressions = {
        "videos": {
            "v1": {
                "expressions": {
                    "0": {"exp": "a dog on the left", "obj_id": "1"},
                    "1": {"exp": "the cat", "obj_id": "2"},
                    "2": {"exp": "a small dog", "obj_id": "1"},
                },
                "frames": ["00000", "00005"],
            }
        }
    }
    path = root / "meta_expressions/train/meta_expressions.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(expressions))
    write_jpeg(root / "valid/JPEGImages/v9/00000.jpg")
    write_jpeg(root / "valid/JPEGImages/v9/00005.jpg")
    valid = {
        "videos": {"v9": {"expressions": {"0": {"exp": "a bird"}}, "frames": ["00005", "00000"]}}
    }
    (root / "meta_expressions/valid").mkdir()
    (root / "meta_expressions/valid/meta_expressions.json").write_text(json.dumps(valid))
    return path


def test_ref_youtube_vos_expressions(tmp_path):
    ref_ytvos_tree(tmp_path)
    (sample,) = RefYouTubeVosReader(root=tmp_path).samples()
    assert sample.dataset == "refytvos" and sample.sample_id == "v1"
    assert sample.categories == ("cat", "dog")
    assert [(e.text, e.target_ids) for e in sample.expressions] == [
        ("a dog on the left", (1,)),
        ("the cat", (2,)),
        ("a small dog", (1,)),
    ]
    assert [f.annotated for f in sample.frames] == [True, False]


def test_ref_youtube_vos_split_without_masks(tmp_path):
    ref_ytvos_tree(tmp_path)
    (sample,) = RefYouTubeVosReader(root=tmp_path, split="valid").samples()
    assert [f.image.stem for f in sample.frames] == ["00000", "00005"]
    assert all(not f.annotated and len(f.instances) == 0 for f in sample.frames)
    assert [(e.text, e.target_ids) for e in sample.expressions] == [("a bird", ())]


def test_expression_of_unannotated_object_is_reported(tmp_path):
    path = ref_ytvos_tree(tmp_path)
    data = json.loads(path.read_text())
    data["videos"]["v1"]["expressions"]["3"] = {"exp": "the ghost", "obj_id": "5"}
    path.write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=r"meta_expressions\.json: video v1 expression 3: object 5 is in no"
    ):
        RefYouTubeVosReader(root=tmp_path).samples()
    reader = RefYouTubeVosReader(root=tmp_path, on_error="skip")
    (sample,) = reader.samples()
    assert len(sample.expressions) == 3
    assert dict(reader.skipped) == {"expression": 1}


def test_malformed_expression_json(tmp_path):
    path = ref_ytvos_tree(tmp_path)
    path.write_text('{"videos": {"v1": {"expressions": ')
    with pytest.raises(DatasetError, match=r"meta_expressions\.json: line 1 column \d+: malformed"):
        RefYouTubeVosReader(root=tmp_path).samples()


def ref_davis_tree(root: Path) -> Path:
    """DAVIS 2017 train: "motorbike" (objects 1, 2) and "bear" (object 1, no expression)."""
    for sequence, index in (("motorbike", two_objects()), ("bear", two_objects() == 1)):
        write_jpeg(root / "JPEGImages/480p" / sequence / "00000.jpg")
        write_jpeg(root / "JPEGImages/480p" / sequence / "00001.jpg")
        write_palette_png(root / "Annotations/480p" / sequence / "00000.png", index)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/train.txt").write_text("motorbike\nbear\n")
    text = root / "davis_text_annotations"
    text.mkdir()
    (text / "Davis17_annot1.txt").write_text(
        'motor-bike 1 "a man riding a motorbike"\nmotorbike 2 "a motorbike"\n\n'
        'elephant 1 "an elephant"\n'
    )
    (text / "Davis17_annot1_full_video.txt").write_text('motorbike 2 "a red motorbike jumping"\n')
    (text / "Davis17_annot2.txt").write_bytes(
        'motorbike 1 "a man in a café jacket"\n'.encode("latin-1")
    )
    return text / "Davis17_annot1.txt"


def test_ref_davis_expressions_per_annotator(tmp_path):
    ref_davis_tree(tmp_path)
    motorbike, bear = RefDavisReader(root=tmp_path).samples()
    assert motorbike.dataset == "refdavis" and motorbike.sample_id == "motorbike"
    # "motor-bike" is the text files' spelling of DAVIS's "motorbike".
    assert [(e.text, e.target_ids) for e in motorbike.expressions] == [
        ("a man riding a motorbike", (1,)),
        ("a motorbike", (2,)),
    ]
    assert bear.expressions == ()
    full = RefDavisReader(root=tmp_path, full_video=True).samples()[0]
    assert [e.text for e in full.expressions] == ["a red motorbike jumping"]
    second = RefDavisReader(root=tmp_path, annotator=2).samples()[0]
    assert [e.text for e in second.expressions] == ["a man in a café jacket"]


def test_ref_davis_malformed_line_names_file_and_line(tmp_path):
    path = ref_davis_tree(tmp_path)
    path.write_text('motorbike 1 "a man"\nmotorbike "no id"\n')
    with pytest.raises(DatasetError, match=r"Davis17_annot1\.txt: line 2: malformed line"):
        RefDavisReader(root=tmp_path).samples()
    reader = RefDavisReader(root=tmp_path, on_error="skip")
    assert len(reader.samples()[0].expressions) == 1
    assert dict(reader.skipped) == {"expression": 1}


def test_ref_davis_counts_problems_of_the_videos(tmp_path):
    ref_davis_tree(tmp_path)
    write_palette_png(tmp_path / "Annotations/480p/bear/00001.png", np.zeros((5, 5)))
    with pytest.raises(DatasetError, match=r"00001\.png: sequence bear frame 00001: mask size"):
        RefDavisReader(root=tmp_path).samples()
    reader = RefDavisReader(root=tmp_path, on_error="skip")
    assert len(reader.samples()) == 2
    assert dict(reader.skipped) == {"annotation": 1}


def test_unannotated_split_lists_frames_in_natural_order(tmp_path):
    ref_ytvos_tree(tmp_path)
    names = [str(t) for t in range(12)]
    for name in names:
        write_jpeg(tmp_path / "valid/JPEGImages/v8" / f"{name}.jpg")
    path = tmp_path / "meta_expressions/valid/meta_expressions.json"
    data = json.loads(path.read_text())
    shuffled = ["3", "10", "0", "11", "1", "2", "9", "4", "8", "5", "7", "6"]
    data["videos"]["v8"] = {"expressions": {"0": {"exp": "a fish"}}, "frames": shuffled}
    path.write_text(json.dumps(data))
    samples = RefYouTubeVosReader(root=tmp_path, split="valid").samples()
    v8 = next(s for s in samples if s.sample_id == "v8")
    assert [f.image.stem for f in v8.frames] == names
