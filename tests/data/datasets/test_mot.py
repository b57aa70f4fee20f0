"""MotChallengeReader on a small sequence written here, on bad lines and folders, and on
motmetrics' copy of the MOT15 TUD-Campus ground truth."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.mot import MotChallengeReader

HEIGHT, WIDTH = 30, 40

SEQINFO = """[Sequence]
name={name}
imDir=img1
frameRate=30
seqLength={length}
imWidth={width}
imHeight={height}
imExt=.jpg
"""

GT = """1,1,2,3,10,20,1,1,1.0
1,2,20,5,8,16,1,1,0.2
1,3,30,5,8,16,1,7,1.0
1,4,-3,4,8,16,0,1,0.9
2,1,3,3,10,20,1,1,1.0
2,5,0,0,4,4,1,2,1.0
"""

DET = """1,-1,2.5,3,10,20,0.9,-1,-1,-1
1,-1,20,5,8,16,0.4,-1,-1,-1
3,-1,1,1,2,2,0.1
"""


def _sequence(root: Path, name: str = "MOT17-02", length: int = 3, gt: str | None = GT) -> Path:
    folder = root / name
    (folder / "img1").mkdir(parents=True)
    info = SEQINFO.format(name=name, length=length, width=WIDTH, height=HEIGHT)
    (folder / "seqinfo.ini").write_text(info)
    for frame in range(1, length + 1):
        Image.new("RGB", (WIDTH, HEIGHT)).save(folder / "img1" / f"{frame:06d}.jpg")
    if gt is not None:
        (folder / "gt").mkdir()
        (folder / "gt" / "gt.txt").write_text(gt)
    (folder / "det").mkdir()
    (folder / "det" / "det.txt").write_text(DET)
    return folder


def test_reads_frames_boxes_ids_and_ignore_rows(tmp_path):
    _sequence(tmp_path)
    (tmp_path / "not-a-sequence").mkdir()
    reader = MotChallengeReader(root=tmp_path)
    (sample,) = reader.samples()
    assert (sample.dataset, sample.sample_id, sample.categories) == (
        "mot",
        "MOT17-02",
        ("pedestrian",),
    )
    assert [f.image.name for f in sample.frames] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    first, second, third = sample.frames
    assert first.image_size == (HEIGHT, WIDTH)
    # Class 7 is not kept; the conf-0 row stays as an ignored instance; the box overhanging
    # the image's left edge is clipped to it.
    assert first.instances.track_ids.tolist() == [1, 2, 4]
    assert first.instances.boxes.tolist() == [[2, 3, 12, 23], [20, 5, 28, 21], [0, 4, 5, 20]]
    assert first.ignore.tolist() == [False, False, True]
    assert first.instances.labels.tolist() == [0, 0, 0]
    assert second.instances.track_ids.tolist() == [1]
    assert len(third.instances) == 0 and third.annotated


def test_classes_visibility_and_missing_gt(tmp_path):
    _sequence(tmp_path)
    _sequence(tmp_path, "MOT17-01", gt=None)
    reader = MotChallengeReader(
        root=tmp_path,
        sequences=["MOT17-02"],
        classes={1: "pedestrian", 2: "pedestrian", 7: "static person"},
        min_visibility=0.5,
    )
    (sample,) = reader.samples()
    assert reader.categories == ("pedestrian", "static person")
    assert sample.frames[0].instances.track_ids.tolist() == [1, 3, 4]
    assert sample.frames[0].instances.labels.tolist() == [0, 1, 0]
    assert sample.frames[1].instances.track_ids.tolist() == [1, 5]
    # Test sequences have no ground truth: their frames are unannotated.
    (test_sample,) = MotChallengeReader(root=tmp_path, sequences=["MOT17-01"]).samples()
    assert not any(frame.annotated for frame in test_sample.frames)


def test_rows_of_classes_not_kept_are_counted_and_logged_once(tmp_path, caplog):
    _sequence(tmp_path)
    _sequence(tmp_path, "MOT17-04")
    reader = MotChallengeReader(root=tmp_path)
    with caplog.at_level("INFO", logger="unipercept.data.datasets.base"):
        reader.samples()
    assert dict(reader.changed) == {
        "row of class 2 (person_on_vehicle) left out": 2,
        "row of class 7 (static_person) left out": 2,
        "clipped box": 2,
    }
    assert [r.getMessage() for r in caplog.records] == [
        "mot: read with 2 clipped box, 2 row of class 2 (person_on_vehicle) left out, "
        "2 row of class 7 (static_person) left out"
    ]


def test_classes_none_keeps_every_class_with_its_name(tmp_path):
    from unipercept.data.datasets.mot import MOT_CLASSES

    _sequence(tmp_path)
    reader = MotChallengeReader(root=tmp_path, classes=None)
    (sample,) = reader.samples()
    assert reader.categories == tuple(MOT_CLASSES.values())
    assert reader.categories[:3] == ("pedestrian", "person_on_vehicle", "car")
    assert len(reader.categories) == 13 and reader.categories[-1] == "crowd"
    first, second, _ = sample.frames
    assert first.instances.track_ids.tolist() == [1, 2, 3, 4]
    assert first.instances.labels.tolist() == [0, 0, 6, 0]
    assert second.instances.labels.tolist() == [0, 1]
    assert set(reader.changed) == {"clipped box"}
    # Class ids alone are named as MOTChallenge names them.
    picked = MotChallengeReader(root=tmp_path, classes=(1, 7))
    assert picked.categories == ("pedestrian", "static_person")
    with pytest.raises(ValueError, match=r"classes \[99\] are not MOTChallenge class ids"):
        MotChallengeReader(root=tmp_path, classes=[1, 99])


def test_read_detections(tmp_path):
    _sequence(tmp_path)
    detections = MotChallengeReader(root=tmp_path).read_detections("MOT17-02")
    assert sorted(detections) == [1, 2, 3]
    boxes, scores = detections[1]
    assert boxes.tolist() == [[2.5, 3, 12.5, 23], [20, 5, 28, 21]]
    assert scores.tolist() == pytest.approx([0.9, 0.4])
    assert detections[2][0].shape == (0, 4) and detections[3][0].tolist() == [[1, 1, 3, 3]]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("2,6,1,1,5,5,1", "expected 9 to 10 comma-separated columns, got 7"),
        ("2,6,1,1,five,5,1,1,1", "non-numeric value"),
        ("4,6,1,1,5,5,1,1,1", "frame 4 is outside 1..3"),
        ("0,6,1,1,5,5,1,1,1", "frame 0 is outside 1..3"),
        ("2,6,1,1,0,5,1,1,1", "box width 0 or height 5 is not positive"),
        ("2,1,1,1,5,5,1,1,1", "id 1 appears twice in frame 2"),
        ("2,6,40,1,5,5,1,1,1", r"box \[40.0, 1.0, 45.0, 6.0\] lies outside the 40x30 image"),
    ],
    ids=[
        "columns",
        "non-numeric",
        "frame after end",
        "frame zero",
        "empty box",
        "repeated id",
        "box outside",
    ],
)
def test_bad_gt_line_raises_or_is_skipped(tmp_path, line, problem):
    _sequence(tmp_path, gt=GT + line + "\n")
    with pytest.raises(DatasetError, match=rf"MOT17-02/gt/gt\.txt: line 7: {problem}"):
        MotChallengeReader(root=tmp_path).samples()
    reader = MotChallengeReader(root=tmp_path, on_error="skip")
    (sample,) = reader.samples()
    assert reader.skipped == {"row": 1}
    assert sample.frames[1].instances.track_ids.tolist() == [1]


def test_missing_seqinfo_key_raises_or_skips_the_sequence(tmp_path):
    folder = _sequence(tmp_path)
    _sequence(tmp_path, "MOT17-04")
    info = folder / "seqinfo.ini"
    info.write_text(info.read_text().replace("seqLength=3\n", ""))
    with pytest.raises(
        DatasetError, match=r"MOT17-02/seqinfo\.ini: \[Sequence\]: missing .*seqLength"
    ):
        MotChallengeReader(root=tmp_path).samples()
    reader = MotChallengeReader(root=tmp_path, on_error="skip")
    assert [s.sample_id for s in reader.samples()] == ["MOT17-04"]
    assert reader.skipped == {"sequence": 1}


def test_missing_image_raises_or_skips_the_frame(tmp_path):
    folder = _sequence(tmp_path)
    (folder / "img1" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"img1/000002\.jpg: frame 2: image file not found"):
        MotChallengeReader(root=tmp_path).samples()
    reader = MotChallengeReader(root=tmp_path, on_error="skip")
    (sample,) = reader.samples()
    assert [f.image.name for f in sample.frames] == ["000001.jpg", "000003.jpg"]
    assert reader.skipped == {"frame": 1}


def test_image_size_disagreeing_with_seqinfo(tmp_path):
    folder = _sequence(tmp_path)
    Image.new("RGB", (WIDTH + 1, HEIGHT)).save(folder / "img1" / "000001.jpg")
    with pytest.raises(DatasetError, match=r"000001\.jpg: frame 1: image is 30x41 .*says 30x40"):
        MotChallengeReader(root=tmp_path).samples()


def _motmetrics_data() -> Path | None:
    # Located without importing motmetrics, which needs pandas.
    spec = importlib.util.find_spec("motmetrics")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "TUD-Campus" / "gt.txt"
    return path if path.is_file() else None


@pytest.mark.skipif(_motmetrics_data() is None, reason="motmetrics (with its MOT15 data) is absent")
def test_motmetrics_tud_campus_ground_truth(tmp_path):
    gt_path = _motmetrics_data()
    folder = tmp_path / "TUD-Campus"
    (folder / "gt").mkdir(parents=True)
    shutil.copy(gt_path, folder / "gt" / "gt.txt")
    info = SEQINFO.format(name="TUD-Campus", length=71, width=640, height=480)
    (folder / "seqinfo.ini").write_text(info)
    # MOT15 ground truth has world coordinates (-1) where MOT17 has class and visibility.
    reader = MotChallengeReader(root=tmp_path, classes={-1: "pedestrian"}, check_images=False)
    (sample,) = reader.samples()
    table = np.loadtxt(gt_path, delimiter=",")
    assert len(sample.frames) == 71 and not reader.skipped
    counts = [len(frame.instances) for frame in sample.frames]
    assert counts == np.bincount(table[:, 0].astype(int), minlength=72)[1:].tolist()
    assert sum(counts) == 359
    ids = {i for frame in sample.frames for i in frame.instances.track_ids.tolist()}
    assert len(ids) == 8
    first = table[table[:, 0] == 1]
    assert sample.frames[0].instances.boxes.tolist() == (
        np.concatenate([first[:, 2:4], first[:, 2:4] + first[:, 4:6]], axis=1).tolist()
    )
