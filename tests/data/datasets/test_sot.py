from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.sot import Got10kReader, LasotReader, TrackingNetReader

SIZE = (12, 16)  # (height, width)


def write_frames(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (SIZE[1], SIZE[0]), (120, 30, 30)).save(folder / name)


def lasot_tree(root: Path, boxes: list[str] | None = None) -> Path:
    """Sequence airplane-1 (4 frames) and airplane-2 (1 frame)."""
    folder = root / "airplane" / "airplane-1"
    write_frames(folder / "img", [f"{i:08d}.jpg" for i in range(1, 5)])
    lines = boxes or ["1,2,3,4", "0,0,0,0", "5\t5\t3\t3", "10 8 10 10"]
    (folder / "groundtruth.txt").write_text("\n".join(lines) + "\n\n")
    (folder / "full_occlusion.txt").write_text("0,0,0,0")
    (folder / "out_of_view.txt").write_text("0,0,1,0")
    (folder / "nlp.txt").write_text("white airplane landing on the runway\n")
    other = root / "airplane" / "airplane-2"
    write_frames(other / "img", ["00000001.jpg"])
    (other / "groundtruth.txt").write_text("2,2,4,4\n")
    (root / "training_set.txt").write_text("airplane-1\n")
    (root / "testing_set.txt").write_text("airplane-2\n")
    return folder / "groundtruth.txt"


def test_lasot_boxes_flags_and_sentence(tmp_path):
    lasot_tree(tmp_path)
    (sample,) = LasotReader(root=tmp_path, split="train").samples()
    assert sample.dataset == "lasot" and sample.sample_id == "airplane-1"
    assert sample.categories == ()
    assert [e.text for e in sample.expressions] == ["white airplane landing on the runway"]
    assert sample.expressions[0].target_ids == (1,)
    f0, f1, f2, f3 = sample.frames
    assert f0.instances.boxes.tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert f0.instances.track_ids.tolist() == [1] and f0.instances.labels.tolist() == [0]
    # A zero-size box and an out-of-view flag both mean "absent": annotated, no instance.
    assert len(f1.instances) == 0 and f1.annotated
    assert len(f2.instances) == 0 and f2.annotated
    # A box overhanging the image is clipped.
    assert f3.instances.boxes.tolist() == [[10.0, 8.0, 16.0, 12.0]]
    assert [s.sample_id for s in LasotReader(root=tmp_path).samples()] == [
        "airplane-1",
        "airplane-2",
    ]
    (test_sample,) = LasotReader(root=tmp_path, split="test").samples()
    assert test_sample.sample_id == "airplane-2" and test_sample.expressions == ()


def test_nan_line_is_absent(tmp_path):
    lasot_tree(tmp_path, boxes=["1,2,3,4", "nan,nan,nan,nan", "NaN NaN NaN NaN", "1,1,2,2"])
    sample = LasotReader(root=tmp_path, split="train").samples()[0]
    assert [len(f.instances) for f in sample.frames] == [1, 0, 0, 1]
    assert all(f.annotated for f in sample.frames)


def test_malformed_line_names_file_and_line(tmp_path):
    lasot_tree(tmp_path, boxes=["1,2,3,4", "1,2,3", "1,1,2,2", "1,1,2,2"])
    with pytest.raises(
        DatasetError, match=r"groundtruth\.txt: sequence airplane-1 line 2: malformed box '1,2,3'"
    ):
        LasotReader(root=tmp_path, split="train").samples()


def test_box_outside_the_image_names_file_and_line(tmp_path):
    lasot_tree(tmp_path, boxes=["1,2,3,4", "1,1,2,2", "40,1,5,5", "1,1,2,2"])
    with pytest.raises(
        DatasetError, match=r"groundtruth\.txt: sequence airplane-1 line 3: box '40,1,5,5' lies"
    ):
        LasotReader(root=tmp_path, split="train").samples()


def test_box_count_must_match_frames(tmp_path):
    lasot_tree(tmp_path, boxes=["1,2,3,4", "1,1,2,2"])
    with pytest.raises(DatasetError, match=r"sequence airplane-1: 2 boxes for 4 frames"):
        LasotReader(root=tmp_path, split="train").samples()


def test_skip_mode_counts_and_skips(tmp_path):
    lasot_tree(tmp_path, boxes=["1,2,3,4", "x,2,3,4", "40,1,5,5", "1,1,2,2"])
    (tmp_path / "airplane/airplane-2/groundtruth.txt").write_text("1,1,1,1\n2,2,2,2\n")
    reader = LasotReader(root=tmp_path, on_error="skip")
    (sample,) = reader.samples()
    assert dict(reader.skipped) == {"box": 2, "sequence": 1}
    # Bad lines leave their frames in place, unannotated.
    assert [f.annotated for f in sample.frames] == [True, False, False, True]
    assert [len(f.instances) for f in sample.frames] == [1, 0, 0, 1]


def test_missing_split_file_raises(tmp_path):
    with pytest.raises(DatasetError, match=r"training_set\.txt: split train: file not found"):
        LasotReader(root=tmp_path, split="train").samples()


def test_got10k_absence_and_test_split(tmp_path):
    train = tmp_path / "train" / "GOT-10k_Train_000001"
    write_frames(train, [f"{i:08d}.jpg" for i in range(1, 4)])
    (train / "groundtruth.txt").write_text("1,1,4,4\n2,2,4,4\n3,3,4,4\n")
    (train / "absence.label").write_text("0\n1\n0\n")
    (tmp_path / "train" / "list.txt").write_text("GOT-10k_Train_000001\n")
    test = tmp_path / "test" / "GOT-10k_Test_000001"
    write_frames(test, [f"{i:08d}.jpg" for i in range(1, 4)])
    (test / "groundtruth.txt").write_text("1,1,4,4\n")
    (tmp_path / "test" / "list.txt").write_text("GOT-10k_Test_000001\n")
    (sample,) = Got10kReader(root=tmp_path).samples()
    assert sample.dataset == "got10k"
    assert [len(f.instances) for f in sample.frames] == [1, 0, 1]
    assert all(f.annotated for f in sample.frames)
    (test_sample,) = Got10kReader(root=tmp_path, split="test").samples()
    assert [f.annotated for f in test_sample.frames] == [True, False, False]
    assert [len(f.instances) for f in test_sample.frames] == [1, 0, 0]
    (train / "absence.label").write_text("0\n1\n")
    with pytest.raises(DatasetError, match=r"absence\.label: sequence GOT-10k_Train_000001: exp"):
        Got10kReader(root=tmp_path).samples()


def test_trackingnet_unpadded_frame_order_and_test_chunk(tmp_path):
    frames = tmp_path / "TRAIN_0" / "frames" / "seqA"
    write_frames(frames, [f"{i}.jpg" for i in range(11)])
    (tmp_path / "TRAIN_0" / "anno").mkdir()
    lines = [f"{i % 8},1,2,2" for i in range(11)]
    (tmp_path / "TRAIN_0" / "anno" / "seqA.txt").write_text("\n".join(lines) + "\n")
    (sample,) = TrackingNetReader(root=tmp_path).samples()
    assert [f.image.stem for f in sample.frames] == [str(i) for i in range(11)]
    assert sample.frames[10].instances.boxes[0, 0].item() == 2.0
    write_frames(tmp_path / "TEST" / "frames" / "seqB", ["0.jpg", "1.jpg"])
    (tmp_path / "TEST" / "anno").mkdir()
    (tmp_path / "TEST" / "anno" / "seqB.txt").write_text("1,1,2,2\n")
    reader = TrackingNetReader(root=tmp_path, chunks=("TRAIN_0", "TEST"))
    assert [s.sample_id for s in reader.samples()] == ["seqA", "seqB"]
    assert [f.annotated for f in reader.samples()[1].frames] == [True, False]
    (tmp_path / "TRAIN_0" / "anno" / "seqA.txt").unlink()
    with pytest.raises(DatasetError, match=r"seqA\.txt: sequence seqA: file not found"):
        TrackingNetReader(root=tmp_path).samples()


def test_clipped_boxes_are_counted(tmp_path):
    lasot_tree(tmp_path)
    reader = LasotReader(root=tmp_path, split="train")
    (sample,) = reader.samples()
    # "10 8 10 10" overhangs the 16x12 image: clipped (the reader's one change), not skipped.
    assert sample.frames[3].instances.boxes.tolist() == [[10.0, 8.0, 16.0, 12.0]]
    assert dict(reader.changed) == {"clipped box": 1} and not reader.skipped


def test_png_frames_in_natural_order(tmp_path):
    folder = tmp_path / "train" / "GOT-10k_Train_000002"
    write_frames(folder, [f"frame_{t}.png" for t in range(1, 12)])
    (folder / "groundtruth.txt").write_text("".join(f"{t},1,2,2\n" for t in range(1, 12)))
    (tmp_path / "train" / "list.txt").write_text("GOT-10k_Train_000002\n")
    (sample,) = Got10kReader(root=tmp_path).samples()
    assert [f.image.stem for f in sample.frames] == [f"frame_{t}" for t in range(1, 12)]
