from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unipercept.evaluation.coco import (
    coco_results,
    evaluate_coco,
    write_coco_results,
)
from unipercept.structures import Instances, RLEMasks, rle_decode, rle_encode

# pycocotools 2.0.11 on the fixture, as /work/shared/fixtures/README.md pins them (7 decimals).
EXPECTED_STATS = {
    "bbox": (
        0.5045807, 0.6969727, 0.5729817, 0.5856257, 0.5193997, 0.5013979,
        0.3868128, 0.5936796, 0.5953530, 0.6398110, 0.5664206, 0.5642906,
    ),
    "segm": (
        0.3195453, 0.5622884, 0.2989265, 0.3873740, 0.3101827, 0.3269339,
        0.2682297, 0.4154487, 0.4168395, 0.4694499, 0.3767592, 0.3814715,
    ),
}  # fmt: skip
RESULT_FILES = {
    "bbox": "instances_val2014_fakebbox100_results.json",
    "segm": "instances_val2014_fakesegm100_results.json",
}
STAT_NAMES = (
    *("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"),
    *("ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large"),
)
CATEGORY_IDS = (3, 7)  # not contiguous, as in COCO
IMAGE_SIZES = {11: (40, 60), 12: (120, 100), 13: (30, 70)}  # image_id: (height, width)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_agrees_with_pinned_pycocotools_stats(fixtures_dir, iou_type):
    folder = fixtures_dir / "coco_val2014_100"
    result = evaluate_coco(
        folder / "instances_val2014_100.json", folder / RESULT_FILES[iou_type], iou_type
    )
    assert result.iou_type == iou_type
    assert len(result.stats) == 12
    assert tuple(getattr(result, name) for name in STAT_NAMES) == result.stats
    assert result.stats == pytest.approx(EXPECTED_STATS[iou_type], abs=1e-6)


def test_fixture_through_writer_and_coco_object(fixtures_dir, tmp_path):
    """Results written by write_coco_results (checked against the ground truth) evaluate the
    same; a loaded COCO object works as ground truth."""
    folder = fixtures_dir / "coco_val2014_100"
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(folder / "instances_val2014_100.json"))
    results = json.loads((folder / RESULT_FILES["segm"]).read_text())
    path = write_coco_results(tmp_path / "segm.json", results, ground_truth)
    result = evaluate_coco(ground_truth, path, "segm")
    assert result.stats == pytest.approx(EXPECTED_STATS["segm"], abs=1e-6)


def rectangle(size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """(H, W) bool mask of the xyxy integer box."""
    mask = torch.zeros(size, dtype=torch.bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def make_truth() -> tuple[dict, dict[int, Instances]]:
    """A small COCO instances dataset (small, medium and large objects, an image without
    objects) and its objects as Instances (labels index CATEGORY_IDS)."""
    objects = {
        11: [((2, 3, 12, 20), 0), ((30, 2, 58, 40), 1), ((20, 22, 29, 31), 0)],
        12: [((0, 0, 100, 110), 1), ((10, 10, 20, 20), 1)],
        13: [],
    }
    images, annotations, truth = [], [], {}
    for image_id, boxes in objects.items():
        height, width = IMAGE_SIZES[image_id]
        images.append({"id": image_id, "height": height, "width": width, "file_name": "x.jpg"})
        masks = [rectangle((height, width), box) for box, _ in boxes]
        rles = rle_encode(torch.stack(masks)) if masks else []
        for (box, label), rle in zip(boxes, rles, strict=True):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": rle,
                    "iscrowd": 0,
                }
            )
        truth[image_id] = Instances(
            (height, width),
            boxes=torch.tensor([box for box, _ in boxes], dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([label for _, label in boxes], dtype=torch.int64),
            masks=torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=bool),
        )
    categories = [{"id": i, "name": f"thing{i}"} for i in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, truth


@pytest.fixture
def truth(tmp_path):
    dataset, instances = make_truth()
    path = tmp_path / "truth" / "instances.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dataset))
    return path, instances


def predictions(instances: dict[int, Instances], shift: int = 0) -> list[dict]:
    results = []
    for image_id, inst in instances.items():
        # Masks moved with their boxes leave the image: empty masks overlap nothing.
        masks = torch.zeros_like(inst.masks) if shift else inst.masks
        predicted = inst.replace(
            boxes=inst.boxes + shift, scores=torch.ones(len(inst)), masks=masks
        )
        results += coco_results(image_id, predicted, CATEGORY_IDS)
    return results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_predictions_give_one_and_wrong_ones_zero(truth, iou_type):
    path, instances = truth
    perfect = evaluate_coco(path, predictions(instances), iou_type)
    # Averaging over categories and IoU thresholds leaves 1.0 up to rounding.
    for name in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar10", "ar100"):
        assert getattr(perfect, name) == pytest.approx(1.0, abs=1e-12), name
    wrong = evaluate_coco(path, predictions(instances, shift=1000), iou_type)
    assert wrong.ap == wrong.ap50 == wrong.ar100 == 0.0
    assert all(s in (0.0, -1.0) for s in wrong.stats)
    assert evaluate_coco(path, [], iou_type).stats == (0.0,) * 12


def test_round_trip_instances_to_file_to_stats(truth, tmp_path):
    path, instances = truth
    generator = torch.Generator().manual_seed(0)
    results = []
    for image_id, inst in instances.items():
        # Jitter the truth and mix in false positives, so that AP is neither 0 nor 1.
        jitter = torch.randint(-3, 4, inst.boxes.shape, generator=generator).float()
        boxes = torch.cat((inst.boxes + jitter, torch.tensor([[1.0, 1, 9, 9]])))
        masks = torch.cat((inst.masks, rectangle(inst.image_size, (1, 1, 9, 9))[None]))
        masks[: len(inst), :2] = False  # (N+1, H, W)
        predicted = Instances(
            inst.image_size,
            boxes=boxes,
            scores=torch.rand(len(boxes), generator=generator),
            labels=torch.cat((inst.labels, torch.tensor([1]))),
            masks=RLEMasks.from_dense(masks) if image_id == 12 else masks,
        )
        converted = coco_results(image_id, predicted, CATEGORY_IDS)
        assert [r["category_id"] for r in converted] == [CATEGORY_IDS[i] for i in predicted.labels]
        xywh = torch.tensor([r["bbox"] for r in converted])
        assert torch.allclose(xywh[:, :2], boxes[:, :2]) and torch.allclose(
            xywh[:, 2:], boxes[:, 2:] - boxes[:, :2]
        )
        assert all(isinstance(r["segmentation"]["counts"], str) for r in converted)
        decoded = rle_decode([r["segmentation"] for r in converted], inst.image_size)
        assert torch.equal(decoded, masks)
        results += converted
    written = write_coco_results(tmp_path / "results.json", results, path)
    assert json.loads(written.read_text()) == results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "truth"]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(path))
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(written)), iou_type)
            if iou_type == "segm":
                # Our segm evaluation takes a detection's area from its mask, not its box.
                evaluator.cocoDt = ground_truth.loadRes(
                    [{k: v for k, v in r.items() if k != "bbox"} for r in results]
                )
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            ours = evaluate_coco(path, written, iou_type)
            assert 0.0 < ours.ap < 1.0
            assert ours.stats == pytest.approx(tuple(evaluator.stats), abs=1e-12)


def bad(results: list[dict], index: int, **changes) -> list[dict]:
    results = [dict(r) for r in results]
    results[index].update(changes)
    return results


BAD_INPUTS = {
    "unknown image": ({"image_id": 99}, r"result 1 \(image_id 99\): image_id 99"),
    "unknown category": ({"category_id": 5}, r"result 1 \(image_id 11\): category_id 5"),
    "mask size": (
        {"segmentation": rle_encode(torch.zeros(1, 40, 61, dtype=torch.bool))[0]},
        r"result 1 \(image_id 11\): mask size \(40, 61\) differs .* \(40, 60\)",
    ),
    "nan score": ({"score": math.nan}, r"result 1 \(image_id 11\): score .*nan"),
    "inf score": ({"score": math.inf}, r"result 1 \(image_id 11\): score .*inf"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_results_are_refused_naming_file_and_entry(truth, tmp_path, case):
    path, instances = truth
    changes, message = BAD_INPUTS[case]
    results = bad(predictions(instances), 1, **changes)
    output = tmp_path / "out" / "results.json"
    output.parent.mkdir()
    with pytest.raises(ValueError, match=message) as error:
        write_coco_results(output, results, path)
    assert str(output) in str(error.value) and str(path) in str(error.value)
    assert list(output.parent.iterdir()) == []  # no output, no temporary file
    iou_type = "segm" if case == "mask size" else "bbox"
    with pytest.raises(ValueError, match=message) as error:
        evaluate_coco(path, results, iou_type)
    assert str(path) in str(error.value)
    # Results from a file are named by it.
    results_file = tmp_path / "bad.json"
    results_file.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=message) as error:
        evaluate_coco(path, results_file, iou_type)
    assert str(results_file) in str(error.value)


def test_missing_files_are_named(truth, tmp_path):
    path, instances = truth
    results = predictions(instances)
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="ground-truth file .*missing.json does not exist"):
        evaluate_coco(missing, results)
    with pytest.raises(ValueError, match="results file .*missing.json does not exist"):
        evaluate_coco(path, missing)
    output = tmp_path / "out.json"
    with pytest.raises(ValueError, match="ground-truth file .*missing.json does not exist"):
        write_coco_results(output, results, missing)
    assert not output.exists()


def test_coco_results_refuses_bad_instances():
    inst = Instances(
        (10, 10),
        boxes=torch.tensor([[0.0, 0, 5, 5], [1, 1, 4, 4]]),
        scores=torch.tensor([0.5, math.nan]),
        labels=torch.tensor([0, 1]),
    )
    with pytest.raises(ValueError, match=r"image_id 4: instance 1 has score nan"):
        coco_results(4, inst, CATEGORY_IDS)
    inst = inst.replace(scores=torch.tensor([0.5, 0.7]), labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"image_id 4: instance 1 has label 2"):
        coco_results(4, inst, CATEGORY_IDS)
    with pytest.raises(ValueError, match="need scores and labels"):
        coco_results(4, inst.replace(scores=None), CATEGORY_IDS)
    assert coco_results(4, inst[:0], CATEGORY_IDS) == []


def test_failed_write_leaves_no_file(tmp_path):
    """Without a ground truth the form is still checked, and a failure while writing removes
    the temporary file and keeps the old output."""
    output = tmp_path / "results.json"
    output.write_text("[]")
    entry = {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}
    with pytest.raises(ValueError, match=r"result 0 \(image_id 1\): score"):
        write_coco_results(output, [{**entry, "score": math.inf}])
    with pytest.raises(TypeError):
        write_coco_results(output, [{**entry, "extra": object()}])
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert output.read_text() == "[]"
    write_coco_results(output, [entry])
    assert json.loads(output.read_text()) == [entry]
