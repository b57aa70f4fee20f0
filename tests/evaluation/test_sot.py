from __future__ import annotations

import numpy as np
import pytest

from unipercept.evaluation.sot import (
    SotSequence,
    evaluate_sot,
    load_lasot_sequence,
    read_boxes_txt,
    write_boxes_txt,
)

BOX = [0.0, 0.0, 10.0, 10.0]


def _by_hand_case() -> tuple[SotSequence, np.ndarray]:
    truth = SotSequence(boxes=np.array([BOX] * 4))
    predicted = np.array(
        [
            [50.0, 50.0, 3.0, 3.0],  # frame 0 is replaced by the truth: IoU 1, error 0
            [0.0, 0.0, 10.0, 5.0],  # IoU 0.5; centre off by 2.5 px, 0.25 normalised
            [5.0, 5.0, 10.0, 10.0],  # IoU 25 / 175; centre off by 5 * sqrt(2) px
            [30.0, 0.0, 10.0, 10.0],  # IoU 0; centre off by 30 px, 3.0 normalised
        ]
    )
    return truth, predicted


def test_scores_by_hand():
    truth, predicted = _by_hand_case()
    result = evaluate_sot({"seq": truth}, {"seq": predicted})
    # Success counts IoU > t for t = 0, 0.05, ..., 1: IoU 1 passes 20 thresholds, 0.5 passes
    # 10 (0 .. 0.45), 1/7 = 0.143 passes 3 (0, 0.05, 0.1), 0 passes none.
    assert result.success_auc == pytest.approx((20 + 10 + 3 + 0) / (21 * 4))
    assert result.precision_20 == pytest.approx(3 / 4)  # errors 0, 2.5, 7.07 <= 20 px; 30 not
    assert result.normalized_precision == pytest.approx(1 / 4)  # only frame 0 within 0.2
    sequence = result.per_sequence["seq"]
    assert sequence.num_frames == 4 and sequence.num_valid_frames == 4
    assert sequence.precision_curve[2] == pytest.approx(1 / 4)  # 2.5 px > 2 px
    assert sequence.precision_curve[3] == pytest.approx(2 / 4)
    assert sequence.success_curve[10] == pytest.approx(1 / 4)  # IoU 0.5 is not > 0.5


def test_absent_frames_fail_in_lasot_and_drop_otherwise():
    _, predicted = _by_hand_case()
    absent = SotSequence(
        boxes=np.array([BOX] * 5 + [[0.0, 0.0, 0.0, 0.0]]),  # frame 5: zero-size truth
        visible=np.array([True, True, True, True, False, True]),  # frame 4: out of view
    )
    predicted = np.concatenate([predicted, [BOX, BOX]])  # perfect on the absent frames
    lasot = evaluate_sot({"s": absent}, {"s": predicted})
    assert lasot.success_auc == pytest.approx(33 / (21 * 6))
    assert lasot.per_sequence["s"].num_valid_frames == 4
    dropped = evaluate_sot({"s": absent}, {"s": predicted}, count_absent_frames=False)
    assert dropped.success_auc == pytest.approx(33 / (21 * 4))
    assert dropped.precision_20 == pytest.approx(3 / 4)


def test_nan_ground_truth_is_absent():
    truth = SotSequence(boxes=np.array([BOX, [np.nan] * 4, BOX]))
    result = evaluate_sot({"s": truth}, {"s": np.array([BOX, BOX, BOX])})
    assert result.precision_20 == pytest.approx(2 / 3)


def test_perfect_and_all_wrong():
    rng = np.random.default_rng(0)
    # Integer pixels, as LaSOT's ground truth: float round-off can push an IoU past 1.
    boxes = np.concatenate([rng.integers(0, 100, (30, 2)), rng.integers(5, 50, (30, 2))], 1)
    boxes = boxes.astype(np.float64)
    perfect = evaluate_sot({"a": SotSequence(boxes=boxes)}, {"a": boxes})
    # IoU 1 is not > 1, so the success curve ends at 0 (LaSOT toolkit and pytracking alike).
    assert perfect.success_auc == pytest.approx(20 / 21)
    assert perfect.success_curve[:20] == pytest.approx(np.ones(20))
    assert perfect.precision_20 == 1.0 and perfect.normalized_precision == 1.0
    # Frame 0 is the initialisation frame; hide it so nothing is given for free.
    visible = np.ones(30, dtype=bool)
    visible[0] = False
    wrong = evaluate_sot(
        {"a": SotSequence(boxes=boxes, visible=visible)}, {"a": boxes + np.array([1e3, 1e3, 0, 0])}
    )
    assert wrong.success_auc == 0.0 and wrong.precision_20 == 0.0
    assert wrong.normalized_precision == 0.0


def test_initialisation_frame_and_zero_size_boxes():
    truth = SotSequence(boxes=np.array([BOX] * 3))
    # Frame 1 is perfect; frame 2 has zero size and so inherits frame 1's box.
    result = evaluate_sot({"s": truth}, {"s": np.array([[90, 90, 1, 1], BOX, [90, 90, 0, 0]])})
    assert result.precision_20 == 1.0


def test_dataset_scores_average_sequence_curves():
    truth, predicted = _by_hand_case()
    result = evaluate_sot({"a": truth, "b": truth}, {"a": predicted, "b": truth.boxes})
    assert result.success_auc == pytest.approx((33 / 84 + 20 / 21) / 2)
    assert result.precision_20 == pytest.approx((3 / 4 + 1) / 2)


def test_io_round_trip_and_lasot_folder(tmp_path):
    boxes = np.array([[1.5, 2.0, 30.25, 40.0], [0.1, 0.2, 0.3, 0.4]])
    path = tmp_path / "results" / "seq.txt"
    write_boxes_txt(path, boxes)
    np.testing.assert_array_equal(read_boxes_txt(path), boxes)
    assert [p.name for p in path.parent.iterdir()] == ["seq.txt"]  # no temp file left

    other = tmp_path / "tabs.txt"
    other.write_text("1\t2\t3\t4\n5 6 7 8\n\n")
    np.testing.assert_array_equal(read_boxes_txt(other), [[1, 2, 3, 4], [5, 6, 7, 8]])

    folder = tmp_path / "cat-1"
    folder.mkdir()
    (folder / "groundtruth.txt").write_text("0,0,10,10\n0,0,10,10\n0,0,10,10\n")
    (folder / "full_occlusion.txt").write_text("0,1,0")
    (folder / "out_of_view.txt").write_text("0,0,1\n")
    sequence = load_lasot_sequence(folder)
    np.testing.assert_array_equal(sequence.visible, [True, False, False])
    write_boxes_txt(tmp_path / "p.txt", np.array([BOX] * 3))
    result = evaluate_sot({"cat-1": folder}, {"cat-1": tmp_path / "p.txt"})
    assert result.precision_20 == pytest.approx(1 / 3)


def test_bad_inputs(tmp_path):
    truth = SotSequence(boxes=np.array([BOX] * 3), source="gt/seq/groundtruth.txt")
    short = tmp_path / "seq.txt"
    write_boxes_txt(short, np.array([BOX] * 2))
    with pytest.raises(ValueError, match=r"seq.txt:3: 2 predicted boxes for 3 ground-truth"):
        evaluate_sot({"seq": truth}, {"seq": short})
    nan = tmp_path / "nan.txt"
    nan.write_text("0,0,10,10\n0,0,nan,10\n0,0,10,10\n")
    with pytest.raises(ValueError, match=r"nan.txt:2: predicted box"):
        evaluate_sot({"seq": truth}, {"seq": nan})
    with pytest.raises(ValueError, match=r"unknown sequences: \['other'\]"):
        evaluate_sot({"seq": truth}, {"seq": np.array([BOX] * 3), "other": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"no predictions for sequences: \['seq'\]"):
        evaluate_sot({"seq": truth}, {})
    with pytest.raises(ValueError, match=r"missing/groundtruth.txt: file not found"):
        evaluate_sot({"seq": tmp_path / "missing"}, {"seq": np.zeros((3, 4))})
    garbled = tmp_path / "garbled.txt"
    garbled.write_text("0,0,10,10\n0,0,10\n")
    with pytest.raises(ValueError, match=r"garbled.txt:2: expected 4 numbers"):
        read_boxes_txt(garbled)
    garbled.write_text("0,0,10,10\n0,0,ten,10\n")
    with pytest.raises(ValueError, match=r"garbled.txt:2: not a number"):
        read_boxes_txt(garbled)
