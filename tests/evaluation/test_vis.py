from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unipercept.evaluation.vis import (
    VisGroundTruth,
    VisInstance,
    VisPrediction,
    VisVideo,
    evaluate_vis,
    load_vis_ground_truth,
    read_vis_results,
    spatiotemporal_iou,
    write_vis_results,
)
from unipercept.structures.masks import rle_decode, rle_encode


def _mask(rows: slice = slice(0, 0), cols: slice = slice(None), size: int = 4) -> dict:
    mask = np.zeros((1, size, size), dtype=bool)
    mask[0, rows, cols] = True
    return rle_encode(mask)[0]


def _truth(*instances: VisInstance, length: int = 3) -> VisGroundTruth:
    videos = tuple(VisVideo(id=v, height=4, width=4, length=length) for v in (1, 2))
    return VisGroundTruth(videos=videos, instances=instances, category_ids=(1, 2))


def test_spatiotemporal_iou_by_hand():
    true = (_mask(slice(0, 2)), _mask(slice(0, 2)), None)  # 8 px, 8 px, absent
    predicted = (_mask(slice(0, 1)), None, _mask(slice(0, 1)))  # 4 px inside, absent, 4 px
    # Intersection 4 (frame 0); union 8 (frame 0) + 8 (frame 1, truth only) + 4 (frame 2).
    assert spatiotemporal_iou(predicted, true) == pytest.approx(4 / 20)
    assert spatiotemporal_iou(true, true) == 1.0
    assert spatiotemporal_iou((None, None, None), (None, None, None)) == 0.0


def test_perfect_and_all_wrong():
    instances = (
        VisInstance(1, 1, (_mask(slice(0, 2)), _mask(slice(0, 3)), None)),
        VisInstance(1, 2, (None, _mask(slice(3, 4)), _mask(slice(2, 4)))),
        VisInstance(2, 1, (_mask(slice(1, 2)), _mask(slice(1, 3)), _mask(slice(1, 4)))),
    )
    truth = _truth(*instances)
    perfect = [VisPrediction(i.video_id, i.category_id, 0.9, i.segmentations) for i in instances]
    result = evaluate_vis(truth, perfect)
    scores = (result.ap, result.ap50, result.ap75, result.ar1, result.ar10)
    assert scores == pytest.approx((1, 1, 1, 1, 1))  # COCO's float accumulation: not exact

    def complement(masks):
        # Frames where the truth is absent get a mask, frames where it is present get none.
        return tuple(None if m else _mask(slice(0, 4)) for m in masks)

    wrong = [
        VisPrediction(i.video_id, i.category_id, 0.9, complement(i.segmentations))
        for i in instances
    ]
    result = evaluate_vis(truth, wrong)
    assert (result.ap, result.ap50, result.ap75, result.ar1, result.ar10) == (0, 0, 0, 0, 0)


def test_spatiotemporal_not_per_frame_iou():
    # Frame 0 is perfect on a 16 px mask, frame 1 misses a 1 px mask: per-frame IoUs average to
    # 0.5, but the spatio-temporal IoU is 16 / 18 = 0.889, which passes thresholds 0.5 .. 0.85.
    true = VisInstance(1, 1, (_mask(slice(0, 4)), _mask(slice(0, 1), slice(0, 1))))
    predicted = VisPrediction(1, 1, 0.5, (_mask(slice(0, 4)), _mask(slice(3, 4), slice(3, 4))))
    assert spatiotemporal_iou(predicted.segmentations, true.segmentations) == pytest.approx(16 / 18)
    result = evaluate_vis(_truth(true, length=2), [predicted])
    assert result.ap == pytest.approx(8 / 10)
    assert result.ap50 == pytest.approx(1.0) and result.ap75 == pytest.approx(1.0)


def test_ranking_and_recall():
    true = VisInstance(1, 1, (_mask(slice(0, 2)), None, None))
    good = VisPrediction(1, 1, 0.3, true.segmentations)
    bad = VisPrediction(1, 1, 0.9, (_mask(slice(2, 4)), None, None))
    result = evaluate_vis(_truth(true), [good, bad])
    # The false positive ranks first: precision 1/2 at recall 1, interpolated over all points.
    assert result.ap50 == pytest.approx(0.5)
    assert result.ar1 == 0.0 and result.ar10 == 1.0


def test_io_round_trip(tmp_path):
    polygon = [[0.0, 0.0, 4.0, 0.0, 4.0, 2.0, 0.0, 2.0]]  # the top two rows
    uncompressed = {"size": [4, 4], "counts": [0, 2, 2, 2, 2, 2, 2, 2, 2]}  # same, column-major
    annotation = {
        "videos": [{"id": 7, "height": 4, "width": 4, "length": 3}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {
                "id": 1,
                "video_id": 7,
                "category_id": 1,
                "segmentations": [polygon, uncompressed, None],
                "areas": [8, 8, None],
                "iscrowd": 0,
            }
        ],
    }
    gt_path = tmp_path / "instances.json"
    gt_path.write_text(json.dumps(annotation))
    truth = load_vis_ground_truth(gt_path)
    (instance,) = truth.instances
    top = np.zeros((4, 4), dtype=bool)
    top[:2] = True
    assert rle_decode(instance.segmentations[:2]).eq(torch.from_numpy(top)).all()
    assert instance.segmentations[2] is None

    predictions = [VisPrediction(7, 1, 0.75, instance.segmentations)]
    path = tmp_path / "out" / "results.json"
    write_vis_results(path, predictions)
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left
    assert read_vis_results(path) == predictions
    assert evaluate_vis(gt_path, path).ap == pytest.approx(1.0)


def test_bad_inputs(tmp_path):
    truth = _truth(VisInstance(1, 1, (_mask(slice(0, 2)), None, None)))

    ok = {"category_id": 1, "score": 0.5, "segmentations": [None] * 3}
    first = {"segmentations": [None] * 3}
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"video_id": 1, **ok}, {"video_id": 9, **ok}]))
    with pytest.raises(ValueError, match=r"results.json: entry 1: unknown video_id 9"):
        evaluate_vis(truth, path)
    path.write_text(json.dumps([{"video_id": 1, **ok, "segmentations": [None] * 2}]))
    with pytest.raises(ValueError, match=r"entry 0: 2 frames for video 1 of length 3"):
        evaluate_vis(truth, path)
    big = rle_encode(np.ones((1, 5, 4), dtype=bool))[0]
    path.write_text(json.dumps([{"video_id": 1, **ok, "segmentations": [None, big, None]}]))
    with pytest.raises(ValueError, match=r"entry 0: frame 1: mask size \[5, 4\]"):
        evaluate_vis(truth, path)
    path.write_text(json.dumps([{"video_id": 1, **ok, "score": float("nan")}]))
    with pytest.raises(ValueError, match=r"results.json: entry 0: score nan is not finite"):
        evaluate_vis(truth, path)
    path.write_text(json.dumps([{"video_id": 1, **first}]))
    with pytest.raises(ValueError, match=r"results.json: entry 0: bad entry"):
        read_vis_results(path)
    with pytest.raises(ValueError, match=r"missing.json: file not found"):
        load_vis_ground_truth(tmp_path / "missing.json")
