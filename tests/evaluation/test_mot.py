from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from unipercept.evaluation.mot import (
    evaluate_mot,
    evaluate_mots,
    read_mot_txt,
    read_mots_txt,
    write_mot_txt,
    write_mots_txt,
)
from unipercept.structures import Instances

pytest.importorskip("trackeval", reason="MOT metrics are computed by TrackEval")

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
# MOTA, IDF1, HOTA (percent), FP, FN, IDs: the official devkit's, /work/shared/fixtures/README.md.
PINNED = {
    "TUD-Campus": (52.646, 55.766, 39.140, 13, 150, 7),
    "TUD-Stadtmitte": (56.401, 64.462, 39.785, 45, 452, 7),
    "combined": (55.512, 62.43, 39.996, 58, 602, 14),
}


def _motmetrics_data() -> Path:
    # find_spec locates the package without importing it (its import needs pandas).
    spec = importlib.util.find_spec("motmetrics")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("motmetrics (pip install --no-deps motmetrics==1.4.0) ships the MOT15 data")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not all((data / s / f).is_file() for s in SEQUENCES for f in ("gt.txt", "test.txt")):
        pytest.skip(f"motmetrics has no TUD-Campus / TUD-Stadtmitte data under {data}")
    return data


def test_tud_agrees_with_the_devkit():
    data = _motmetrics_data()
    result = evaluate_mot(
        {s: data / s / "gt.txt" for s in SEQUENCES},
        {s: data / s / "test.txt" for s in SEQUENCES},
        preprocess=False,  # MOT15 ground truth has no classes
    )
    assert set(result.sequences) == set(SEQUENCES)
    for name, (mota, idf1, hota, fp, fn, ids) in PINNED.items():
        got = result if name == "combined" else result.sequences[name]
        assert 100 * got.mota == pytest.approx(mota, abs=1e-3), name
        assert 100 * got.idf1 == pytest.approx(idf1, abs=1e-3), name
        assert 100 * got.hota == pytest.approx(hota, abs=1e-3), name
        assert (got.false_positives, got.false_negatives, got.id_switches) == (fp, fn, ids)


def test_mot15_ground_truth_needs_preprocessing_off():
    data = _motmetrics_data()
    with pytest.raises(ValueError, match="preprocess=False"):
        evaluate_mot({"s": data / "TUD-Stadtmitte" / "gt.txt"}, {"s": data / "TUD-Campus/gt.txt"})


def _write(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def _track(num_frames: int = 10, ids: tuple[int, ...] = (1, 2), shift: float = 0.0) -> list:
    """MOT rows of objects moving right, object k at y = 100 k, 1-based frames."""
    return [
        (t, k, 10 + 5 * t + shift, 100 * k, 40, 80, 1, 1, 1.0)
        for t in range(1, num_frames + 1)
        for k in ids
    ]


def test_perfect_tracks_score_one(tmp_path):
    gt = _write(tmp_path / "gt" / "seq" / "gt" / "gt.txt", _track())
    _write(tmp_path / "res" / "seq.txt", _track())
    result = evaluate_mot(tmp_path / "gt", tmp_path / "res")
    assert (result.mota, result.idf1, result.hota, result.motp) == pytest.approx((1, 1, 1, 1))
    assert result.false_positives == result.false_negatives == result.id_switches == 0
    assert result.sequences["seq"].num_gt_dets == 20 and gt.is_file()


def test_wrong_tracks_score_zero(tmp_path):
    # Every result box is far from every true box: 20 FN and 20 FP, so MOTA = 1 - 40/20.
    _write(tmp_path / "gt" / "seq.txt", _track())
    _write(tmp_path / "res" / "seq.txt", _track(shift=500.0))
    result = evaluate_mot(tmp_path / "gt", tmp_path / "res")
    assert result.mota == pytest.approx(-1.0)
    assert (result.idf1, result.hota, result.deta) == (0.0, 0.0, 0.0)


def test_swapped_ids_half_way_cost_identity(tmp_path):
    rows = _track()
    swapped = [(t, 3 - k if t > 5 else k, *rest) for t, k, *rest in rows]
    _write(tmp_path / "gt" / "seq.txt", rows)
    _write(tmp_path / "res" / "seq.txt", swapped)
    result = evaluate_mot(tmp_path / "gt", tmp_path / "res")
    assert result.id_switches == 2 and result.mota == pytest.approx(1 - 2 / 20)
    assert result.idf1 == pytest.approx(0.5) and result.deta == pytest.approx(1.0)


def test_distractors_and_zero_marked_gt_are_not_evaluated(tmp_path):
    gt = [(1, 1, 0, 0, 10, 10, 1, 1, 1.0), (1, 2, 50, 0, 10, 10, 1, 8, 1.0)]
    gt.append((1, 3, 100, 0, 10, 10, 0, 1, 1.0))  # conf 0: not evaluated
    res = [(1, 7, 0, 0, 10, 10, 1), (1, 8, 50, 0, 10, 10, 1), (1, 9, 100, 0, 10, 10, 1)]
    _write(tmp_path / "gt" / "seq.txt", gt)
    _write(tmp_path / "res" / "seq.txt", res)
    result = evaluate_mot(tmp_path / "gt", tmp_path / "res")
    # The distractor's match is dropped; the zero-marked box's match is a false positive.
    assert (result.num_gt_dets, result.num_tracker_dets, result.false_positives) == (1, 2, 1)


def test_write_read_round_trip(tmp_path):
    frames = [
        Instances(
            (480, 640),
            boxes=torch.tensor([[10.5, 20.25, 50.0, 120.125], [300.1, 40.0, 360.7, 200.3]]),
            scores=torch.tensor([0.9, 0.3]),
            track_ids=torch.tensor([3, 7]),
        ),
        Instances((480, 640), boxes=torch.zeros(0, 4), track_ids=torch.zeros(0).long()),
        Instances((480, 640), boxes=torch.tensor([[1.0, 2, 3, 4]]), track_ids=torch.tensor([3])),
    ]
    path = tmp_path / "out" / "seq.txt"
    write_mot_txt(path, frames)
    assert path.read_text().splitlines()[0].endswith(",-1,-1,-1")
    rows = read_mot_txt(path)
    assert rows.frames.tolist() == [1, 1, 3] and rows.ids.tolist() == [3, 7, 3]
    xyxy = np.concatenate((rows.boxes[:, :2], rows.boxes[:, :2] + rows.boxes[:, 2:]), axis=1)
    expected = torch.cat([f.boxes for f in frames]).numpy()
    assert np.allclose(xyxy, expected, atol=1e-4)
    assert rows.scores.tolist() == pytest.approx([0.9, 0.3, 1.0])
    assert [p.name for p in path.parent.iterdir()] == ["seq.txt"]  # no temporary file left


def test_write_rejects_bad_frames_and_writes_nothing(tmp_path):
    path = tmp_path / "seq.txt"
    nan = Instances(
        (10, 10), boxes=torch.tensor([[0.0, 0, float("nan"), 1]]), track_ids=torch.tensor([1])
    )
    twice = Instances((10, 10), boxes=torch.ones(2, 4), track_ids=torch.tensor([1, 1]))
    no_ids = Instances((10, 10), boxes=torch.ones(1, 4))
    for bad, why in ((nan, "non-finite"), (twice, "twice"), (no_ids, "track_ids")):
        with pytest.raises(ValueError, match=f"frame 2: .*{why}"):
            write_mot_txt(path, [Instances((10, 10)), bad])
        assert not path.exists()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("1,1,0,0,10", "columns"),
        ("1,1,0,zero,10,10,1", "non-numeric"),
        ("1,1,0,nan,10,10,1", "non-finite"),
        ("0,1,0,0,10,10,1", "frame"),
        ("1,1.5,0,0,10,10,1", "id"),
        ("1,1,0,0,-10,10,1", "negative"),
        ("1,2,5,5,10,10,1", "twice"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, why):
    path = _write(tmp_path / "seq.txt", [(1, 2, 0, 0, 10, 10, 1)])
    path.write_text(path.read_text() + "\n" + line + "\n")  # line 3, after a blank line
    with pytest.raises(ValueError, match=rf"seq\.txt:3: .*{why}"):
        read_mot_txt(path)


def test_bad_folders_and_sequences_name_the_path(tmp_path):
    _write(tmp_path / "gt" / "seq.txt", _track())
    _write(tmp_path / "res" / "seq.txt", _track())
    stray = _write(tmp_path / "res" / "other.txt", _track())
    with pytest.raises(ValueError, match=f"{stray}.*'other'.*no ground truth"):
        evaluate_mot(tmp_path / "gt", tmp_path / "res")
    stray.unlink()
    with pytest.raises(ValueError, match="missing.*ground-truth folder not found"):
        evaluate_mot(tmp_path / "missing", tmp_path / "res")
    with pytest.raises(ValueError, match="no result file for sequence 'extra'"):
        evaluate_mot(
            {"seq": tmp_path / "gt/seq.txt", "extra": tmp_path / "gt/seq.txt"},
            {"seq": tmp_path / "res/seq.txt"},
        )


def _mots_rows(tracks: dict[int, list[np.ndarray]], label: int = 2) -> list[str]:
    """MOTS lines ``frame id class h w rle`` for per-id lists of (H, W) masks, frames from 1."""
    from pycocotools import mask as mask_utils

    lines = []
    for track, masks in tracks.items():
        for t, mask in enumerate(masks, start=1):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            height, width = mask.shape
            lines.append(f"{t} {track} {label} {height} {width} {rle['counts'].decode()}\n")
    return lines


def _square(x: int, y: int, size: int = 8) -> np.ndarray:
    mask = np.zeros((32, 48), dtype=bool)
    mask[y : y + size, x : x + size] = True
    return mask


def test_mots_perfect_and_ignored(tmp_path):
    pytest.importorskip("pycocotools")
    objects = {2001: [_square(2 * t, 4) for t in range(5)], 2002: [_square(30, 20)] * 5}
    ignore = {10000: [_square(0, 24, 8)] * 5}
    spurious = {2009: [_square(1, 25, 6)] * 5}  # inside the ignore region: removed
    (tmp_path / "gt.txt").write_text("".join(_mots_rows(objects) + _mots_rows(ignore, 10)))
    (tmp_path / "res.txt").write_text("".join(_mots_rows(objects) + _mots_rows(spurious)))
    result = evaluate_mots({"0000": tmp_path / "gt.txt"}, {"0000": tmp_path / "res.txt"})
    assert (result.smota, result.mota, result.idf1, result.hota) == pytest.approx((1, 1, 1, 1))
    assert result.num_tracker_dets == 10 and result.false_positives == 0


def test_mots_writer_resolves_overlaps_and_round_trips(tmp_path):
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 4:10, 4:10] = True  # overlaps object 0 on [4:8, 4:8]
    frame = Instances(
        (10, 12),
        boxes=torch.tensor([[2.0, 2, 8, 8], [4.0, 4, 10, 10]]),
        scores=torch.tensor([0.9, 0.5]),
        masks=masks,
        track_ids=torch.tensor([5, 7]),
    )
    path = tmp_path / "0001.txt"
    write_mots_txt(path, [frame, frame[:0]], first_frame=1)
    rows = read_mots_txt(path)
    assert rows.frames.tolist() == [1, 1] and rows.ids.tolist() == [5, 7]
    assert rows.classes.tolist() == [2, 2]
    decoded = [mask_utils.decode(rle).astype(bool) for rle in rows.rles]
    assert np.array_equal(decoded[0], masks[0].numpy())  # the higher score keeps the overlap
    assert np.array_equal(decoded[1], (masks[1] & ~masks[0]).numpy())
    assert not (decoded[0] & decoded[1]).any()
    # Perfect MOTS results of these (non-overlapping) masks score 1.
    gt = tmp_path / "gt.txt"
    gt.write_text(path.read_text().replace(" 5 2 ", " 2005 2 ").replace(" 7 2 ", " 2007 2 "))
    assert evaluate_mots({"s": gt}, {"s": path}).smota == pytest.approx(1.0)
    with pytest.raises(ValueError, match="frame 1: a track id appears twice"):
        write_mots_txt(tmp_path / "x.txt", [frame.replace(track_ids=torch.tensor([5, 5]))])
    assert not (tmp_path / "x.txt").exists()
