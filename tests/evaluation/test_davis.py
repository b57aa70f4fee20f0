from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipercept.data.synthetic.encoding import encode_index_png
from unipercept.evaluation.davis import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance,
    evaluate_vos,
    read_index_folder,
    region_similarity,
    write_index_folder,
)


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _sequence(num_frames: int = 4, size: int = 32) -> dict[str, np.ndarray]:
    """Two objects (ids 1 and 2) moving right, with a void (255) strip along the bottom."""
    frames = {}
    for t in range(num_frames):
        index = np.zeros((size, size), dtype=np.uint8)
        index[4:12, 2 + t : 10 + t] = 1
        index[16:26, 14 + t : 22 + t] = 2
        index[-2:] = 255
        frames[f"{t:05d}"] = index
    return frames


def _prediction(truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The truth as a prediction: void (255) is no object, predictions leave it as background."""
    return {name: np.where(index == 255, 0, index) for name, index in truth.items()}


def test_blackswan_osvos_matches_the_davis_toolkit(fixtures_dir: Path, tmp_path: Path):
    root = fixtures_dir / "davis2016_blackswan"
    if not (root / "osvos").is_dir():
        pytest.skip(f"DAVIS-2016 blackswan fixture not found under {root}")
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt" / "blackswan").symlink_to(root / "Annotations")
    (tmp_path / "pred" / "blackswan").symlink_to(root / "osvos")
    result = evaluate_vos(tmp_path / "gt", tmp_path / "pred")
    # The pinned numbers are those of the semi-supervised protocol: frames 1..N-2.
    assert len(result.objects) == 1 and len(result.objects[0].frames) == 48
    assert result.j.mean == pytest.approx(0.943020, abs=1e-4)
    assert result.f.mean == pytest.approx(0.974096, abs=1e-4)
    assert result.j_and_f == pytest.approx((0.943020 + 0.974096) / 2, abs=1e-4)


def test_perfect_and_all_wrong_predictions(tmp_path: Path):
    truth = _sequence()
    write_index_folder(tmp_path / "gt" / "seq", truth)
    write_index_folder(tmp_path / "perfect" / "seq", _prediction(truth))
    write_index_folder(
        tmp_path / "empty" / "seq", {name: np.zeros_like(index) for name, index in truth.items()}
    )
    # Swapped ids: each object predicted where the other one is (disjoint, far apart).
    swapped = {
        name: np.where(index == 1, 2, np.where(index == 2, 1, 0)) for name, index in truth.items()
    }
    write_index_folder(tmp_path / "swapped" / "seq", swapped)

    perfect = evaluate_vos(tmp_path / "gt", tmp_path / "perfect", exclude_first_last=False)
    assert [scores.object_id for scores in perfect.objects] == [1, 2]
    assert perfect.j.mean == perfect.f.mean == perfect.j_and_f == 1.0
    assert perfect.j.recall == 1.0 and perfect.j.decay == 0.0
    for wrong in ("empty", "swapped"):
        result = evaluate_vos(tmp_path / "gt", tmp_path / wrong)
        assert result.j.mean == result.f.mean == result.j_and_f == 0.0
        assert result.j.recall == 0.0


def test_region_similarity_conventions():
    empty = np.zeros((8, 8), dtype=bool)
    a = _square(8, 0, 0, 4)
    b = _square(8, 0, 0, 2)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0
    assert region_similarity(b, a) == pytest.approx(4 / 16)
    void = ~b  # leaves only the part where the two agree
    assert region_similarity(b, a, void) == 1.0


def test_boundary_map_follows_seg2bmap():
    boundary = boundary_map(_square(6, 1, 1, 3))
    expected = np.zeros((6, 6), dtype=bool)
    expected[0, 0:4] = True  # above, and the top-left pixel's diagonal neighbour
    expected[1:4, 0] = True  # left of the square
    expected[1:4, 3] = True  # the square's own right column
    expected[3, 1:3] = True  # the square's own bottom row
    np.testing.assert_array_equal(boundary, expected)
    assert not boundary_map(np.ones((5, 5), dtype=bool)).any()


def test_boundary_f_by_hand():
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((100, 100)) == 2  # ceil(0.008 * 141.4)
    truth = _square(100, 40, 40, 10)
    within = _square(100, 40, 42, 10)  # shifted by the tolerance: every pixel matches
    beyond = _square(100, 40, 43, 10)  # the vertical edges are 3 pixels apart
    assert boundary_f_measure(within, truth) == 1.0
    assert region_similarity(within, truth) == pytest.approx(8 / 12)
    assert 0.0 < boundary_f_measure(beyond, truth) < 1.0
    assert boundary_f_measure(_square(100, 40, 70, 10), truth) == 0.0

    # Truth: the top half of a 20 x 20 image, boundary = row 9 (20 pixels). Prediction: a step,
    # rows 0..9 on the left and 0..15 on the right, boundary = row 9 for x < 10, column 9 for
    # rows 10..15 and row 15 for x >= 10 (26 pixels). Within 2 pixels: 12 predicted pixels (row
    # 9 and rows 10-11 of the column) and 12 true ones (x <= 11), so F = 2 * 12 / (26 + 20).
    step_truth = np.zeros((20, 20), dtype=bool)
    step_truth[:10] = True
    step = np.zeros((20, 20), dtype=bool)
    step[:10, :10] = True
    step[:16, 10:] = True
    assert boundary_map(step_truth).sum() == 20 and boundary_map(step).sum() == 26
    assert boundary_f_measure(step, step_truth, bound_th=2) == pytest.approx(12 / 23)
    assert boundary_f_measure(step, step_truth, bound_th=6) == 1.0
    empty = np.zeros((20, 20), dtype=bool)
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(empty, step_truth) == 0.0


def test_write_read_round_trip_is_atomic(tmp_path: Path):
    frames = _sequence()
    folder = tmp_path / "pred" / "seq"
    write_index_folder(folder, frames)
    with Image.open(folder / "00000.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]  # DAVIS colour of object 1
    read = read_index_folder(folder)
    assert list(read) == sorted(frames)
    for name, index in frames.items():
        np.testing.assert_array_equal(read[name], index)
    # Rewriting replaces the folder as a whole, leaving no temporary folders behind.
    write_index_folder(folder, {"00007": np.full((3, 5), 2, dtype=np.uint8)})
    assert sorted(path.name for path in folder.iterdir()) == ["00007.png"]
    assert [path.name for path in folder.parent.iterdir()] == ["seq"]
    with pytest.raises(ValueError, match="00009"):
        write_index_folder(folder, {"00009": np.full((3, 5), 300)})
    assert [path.name for path in folder.parent.iterdir()] == ["seq"]


def test_bad_input_names_the_file(tmp_path: Path):
    truth = _sequence()
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_index_folder(gt / "seq", truth)

    with pytest.raises(ValueError, match="nowhere"):
        evaluate_vos(tmp_path / "nowhere", pred)
    write_index_folder(pred / "seq", _prediction(truth))
    with pytest.raises(ValueError, match="other"):
        evaluate_vos(gt, pred, sequences=["other"])

    # The last frame is not scored by default, so only the full protocol misses it.
    (pred / "seq" / "00003.png").unlink()
    assert evaluate_vos(gt, pred, sequences=["seq"]).j.mean == 1.0
    with pytest.raises(ValueError, match="00003.png"):
        evaluate_vos(gt, pred, exclude_first_last=False)
    (pred / "seq" / "00002.png").unlink()
    with pytest.raises(ValueError, match="00002.png"):
        evaluate_vos(gt, pred)

    write_index_folder(pred / "seq", _prediction(truth))
    (pred / "seq" / "00001.png").write_bytes(encode_index_png(np.zeros((16, 16), np.uint8)))
    with pytest.raises(ValueError, match="00001.png"):
        evaluate_vos(gt, pred)

    write_index_folder(
        pred / "seq", {**_prediction(truth), "00001": np.full((32, 32), 3, np.uint8)}
    )
    with pytest.raises(ValueError, match="00001.png"):
        evaluate_vos(gt, pred)  # index 3 is no object of the truth

    write_index_folder(pred / "seq", _prediction(truth))
    write_index_folder(pred / "unknown", _prediction(truth))
    with pytest.raises(ValueError, match="unknown"):
        evaluate_vos(gt, pred)


def test_writing_a_sequence_replaces_only_a_folder_of_pngs(tmp_path):
    truth = _sequence(2)
    folder = tmp_path / "results" / "seq"
    write_index_folder(folder, truth)
    write_index_folder(folder, {"00000": truth["00000"]})  # an earlier answer: replaced whole
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png"]
    (folder / "README").write_text("not a result")
    with pytest.raises(FileExistsError, match="README"):
        write_index_folder(folder, truth)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "README"]
    (tmp_path / "results" / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_index_folder(tmp_path / "results" / "file", truth)
    assert (tmp_path / "results" / "file").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["file", "seq"]
