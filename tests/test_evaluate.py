"""``python -m unipercept.evaluate``: result files scored through the command line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unipercept import evaluate


def test_coco_fixture_through_the_command_line(fixtures_dir, tmp_path, capsys):
    folder = fixtures_dir / "coco_val2014_100"
    out = tmp_path / "scores.json"
    code = evaluate.main(
        [
            "insseg",
            "--gt",
            str(folder / "instances_val2014_100.json"),
            "--results",
            str(folder / "instances_val2014_fakesegm100_results.json"),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    scores = json.loads(out.read_text())
    assert scores["task"] == "insseg"
    # The pinned segm AP of the cocoapi demo (fixtures/README.md).
    assert scores["segm"]["ap"] == pytest.approx(0.3195453, abs=1e-6)
    assert "bbox" not in scores  # these results carry no boxes
    assert "ap:" in capsys.readouterr().out


def test_davis_fixture_through_the_command_line(fixtures_dir, tmp_path):
    root = fixtures_dir / "davis2016_blackswan"
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt" / "blackswan").symlink_to(root / "Annotations")
    (tmp_path / "pred" / "blackswan").symlink_to(root / "osvos")
    out = tmp_path / "vos.json"
    args = ["vos", "--gt", str(tmp_path / "gt"), "--results", str(tmp_path / "pred")]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["J"]["mean"] == pytest.approx(0.943020, abs=1e-4)
    assert scores["F"]["mean"] == pytest.approx(0.974096, abs=1e-4)


def test_mot15_through_the_command_line(tmp_path):
    spec = importlib.util.find_spec("motmetrics")
    if spec is None or spec.origin is None:
        pytest.skip("motmetrics is not installed (its package data holds the MOT15 files)")
    data = Path(spec.origin).parent / "data"
    if not (data / "TUD-Campus" / "gt.txt").is_file():
        pytest.skip(f"motmetrics' TUD-Campus data not found under {data}")
    (tmp_path / "gt" / "TUD-Campus").mkdir(parents=True)
    (tmp_path / "gt" / "TUD-Campus" / "gt.txt").write_bytes(
        (data / "TUD-Campus" / "gt.txt").read_bytes()
    )
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "TUD-Campus.txt").write_bytes(
        (data / "TUD-Campus" / "test.txt").read_bytes()
    )
    out = tmp_path / "mot.json"
    args = ["mot", "--gt", str(tmp_path / "gt"), "--results", str(tmp_path / "res"), "--mot15"]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    # TUD-Campus as pinned in fixtures/README.md (percent there, fractions here).
    assert scores["mota"] == pytest.approx(0.5264624, abs=1e-5)
    assert scores["idf1"] == pytest.approx(0.5576592, abs=1e-5)
    # Without --mot15 the MOT16+ preprocessing refuses MOT15's class-less ground truth.
    assert evaluate.main(args[:-1]) == 2


def test_sot_perfect_lasot_folder(tmp_path):
    boxes = np.array([[10, 10, 20, 20], [12, 11, 20, 20], [14, 12, 20, 20]], dtype=np.int64)
    sequence = tmp_path / "gt" / "cat" / "cat-1"
    sequence.mkdir(parents=True)
    lines = "\n".join(",".join(map(str, b)) for b in boxes) + "\n"
    (sequence / "groundtruth.txt").write_text(lines)
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "cat-1.txt").write_text(lines)
    out = tmp_path / "sot.json"
    args = ["sot", "--gt", str(tmp_path / "gt"), "--results", str(tmp_path / "res")]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    # IoU > threshold is strict (pytracking), so the curve is 0 at threshold 1: AUC 20/21.
    assert scores["success_auc"] == pytest.approx(20 / 21)
    assert scores["precision_20"] == 1.0 and scores["sequences"] == 1
    (tmp_path / "res" / "dog-2.txt").write_text(lines)
    assert evaluate.main(args) == 2


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "scores.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unipercept.evaluate",
            "vis",
            "--gt",
            str(tmp_path / "missing.json"),
            "--results",
            str(tmp_path / "r.json"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "missing.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_referring_tasks_have_no_results_file():
    with pytest.raises(ValueError, match="no official results file"):
        evaluate.evaluate_files("rec", "a", "b")


def _tiny_coco(root: Path) -> tuple[Path, Path]:
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    entries, annotations = [], []
    for index in range(3):
        pixels = np.full((64, 80, 3), 40, dtype=np.uint8)
        x = 10 + 15 * index
        pixels[20:44, x : x + 24] = (220, 40, 40)
        Image.fromarray(pixels).save(images / f"{index:03d}.png")
        entries.append(
            {"id": 100 + index, "file_name": f"{index:03d}.png", "height": 64, "width": 80}
        )
        annotations.append(
            {
                "id": index + 1,
                "image_id": 100 + index,
                "category_id": 7,
                "bbox": [x, 20, 24, 24],
                "area": 576,
                "iscrowd": 0,
                "segmentation": [[x, 20, x + 24, 20, x + 24, 44, x, 44]],
            }
        )
    categories = [{"id": 7, "name": "square"}, {"id": 9, "name": "circle"}]
    gt = root / "instances.json"
    gt.write_text(
        json.dumps({"images": entries, "annotations": annotations, "categories": categories})
    )
    return gt, images


def test_model_mode_runs_the_model_writes_results_and_scores(tmp_path):
    import torch
    from safetensors.torch import save_model

    from unipercept import config
    from unipercept.api import Predictor
    from unipercept.data.io import load_image
    from unipercept.data.preprocess import ImagePreprocessor

    gt, images = _tiny_coco(tmp_path)
    torch.manual_seed(0)
    model = config.instantiate(config.compose_group_option("model", "unipercept_tiny")).eval()
    weights = tmp_path / "model.safetensors"
    save_model(model, str(weights))
    results, out = tmp_path / "out" / "results.json", tmp_path / "scores.json"
    args = ["insseg", "--gt", str(gt), "--results", str(results), "--images", str(images)]
    args += [
        "--model",
        "unipercept_tiny",
        "--weights",
        str(weights),
        "--short-size",
        "64",
        "--max-size",
        "96",
    ]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    entries = json.loads(results.read_text())
    assert {e["image_id"] for e in entries} <= {100, 101, 102} and entries
    assert {e["category_id"] for e in entries} <= {7, 9}
    assert all("segmentation" in e and "bbox" in e for e in entries)
    scores = json.loads(out.read_text())
    assert set(scores) == {"task", "segm", "bbox"}
    assert 0.0 <= scores["segm"]["ap"] <= 1.0
    # The saved weights were the ones used: the same model gives the same first detection.
    predictor = Predictor(model, preprocess=ImagePreprocessor(short_size=64, max_size=96))
    direct = predictor.predict(
        load_image(images / "000.png"), ["square", "circle"], task="insseg", score_threshold=0.05
    )
    first = [e for e in entries if e["image_id"] == 100]
    assert len(first) == len(direct)
    assert first[0]["score"] == pytest.approx(float(direct.scores[0]), abs=1e-6)
    # A missing weights file is one line and exit 2, and the earlier results stay as they were.
    before = results.read_bytes()
    bad = [
        *args[:-6],
        "--model",
        "unipercept_tiny",
        "--weights",
        str(tmp_path / "nope.safetensors"),
    ]
    assert evaluate.main(bad) == 2
    assert results.read_bytes() == before


def test_model_mode_vos_on_blackswan(fixtures_dir, tmp_path):
    """VOS end to end on the real DAVIS sequence: first-frame mask in, palette PNGs out, scored.
    The untrained tiny model's J is whatever it is; the first frame answers the annotation."""
    from unipercept.data.io import load_index_png

    root = fixtures_dir / "davis2016_blackswan"
    frames = sorted((root / "JPEGImages").glob("*.jpg"))[:4]
    for folder, files, suffix in (("images", frames, ".jpg"), ("gt", frames, ".png")):
        (tmp_path / folder / "blackswan").mkdir(parents=True)
        source = root / ("JPEGImages" if folder == "images" else "Annotations")
        for frame in files:
            name = frame.stem + suffix
            (tmp_path / folder / "blackswan" / name).symlink_to(source / name)
    out = tmp_path / "vos.json"
    args = ["vos", "--gt", str(tmp_path / "gt"), "--images", str(tmp_path / "images")]
    args += ["--results", str(tmp_path / "pred"), "--short-size", "96", "--max-size", "160"]
    args += ["--model", "unipercept_tiny"]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    written = sorted(p.name for p in (tmp_path / "pred" / "blackswan").glob("*.png"))
    assert written == [f"{f.stem}.png" for f in frames]
    first = load_index_png(tmp_path / "pred" / "blackswan" / "00000.png")
    truth = load_index_png(root / "Annotations" / "00000.png")
    assert np.array_equal(first == 1, truth == 255)  # the annotated frame is the annotation
    scores = json.loads(out.read_text())
    assert scores["objects"] == 1 and 0.0 <= scores["J&F"] <= 1.0
    # Scored against all 50 ground-truth frames, the 4 predicted ones are a clear error.
    (tmp_path / "gt" / "blackswan").rename(tmp_path / "gt4")
    (tmp_path / "gt" / "blackswan").symlink_to(root / "Annotations")
    assert evaluate.main(args) == 2


def _frames_folder(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for t in range(count):
        pixels = np.full((64, 80, 3), 30, dtype=np.uint8)
        pixels[20:40, 10 + 4 * t : 30 + 4 * t] = (200, 200, 50)
        Image.fromarray(pixels).save(folder / f"{t + 1:06d}.png")


def test_model_mode_sot_and_mot_on_generated_folders(tmp_path, tiny_weights):
    sequence = tmp_path / "lasot" / "bird" / "bird-1"
    _frames_folder(sequence / "img", 3)
    (sequence / "groundtruth.txt").write_text("10,20,20,20\n14,20,20,20\n18,20,20,20\n")
    common = [
        "--model",
        "unipercept_tiny",
        "--weights",
        str(tiny_weights),
        "--short-size",
        "64",
        "--max-size",
        "96",
    ]
    lasot = str(tmp_path / "lasot")
    sot = ["sot", "--gt", lasot, "--images", lasot, "--results", str(tmp_path / "sot")]
    assert evaluate.main([*sot, *common, "--json", str(tmp_path / "sot.json")]) == 0
    lines = (tmp_path / "sot" / "bird-1.txt").read_text().splitlines()
    assert len(lines) == 3 and [float(v) for v in lines[0].split(",")] == [10, 20, 20, 20]
    assert 0.0 <= json.loads((tmp_path / "sot.json").read_text())["success_auc"] <= 1.0

    mot_root = tmp_path / "mot"
    _frames_folder(mot_root / "SEQ-01" / "img1", 3)
    (mot_root / "SEQ-01" / "gt").mkdir()
    gt_rows = [f"{t},1,{10 + 4 * t},20,20,20,1,1,1\n" for t in (1, 2, 3)]
    (mot_root / "SEQ-01" / "gt" / "gt.txt").write_text("".join(gt_rows))
    mot = ["mot", "--gt", str(mot_root), "--images", str(mot_root)]
    mot += ["--results", str(tmp_path / "res"), "--categories", "box", "ball"]
    assert evaluate.main([*mot, *common, "--json", str(tmp_path / "mot.json")]) == 0
    assert (tmp_path / "res" / "SEQ-01.txt").is_file()
    scores = json.loads((tmp_path / "mot.json").read_text())
    assert set(scores["sequences"]) == {"SEQ-01"} and scores["mota"] <= 1.0


def test_model_mode_vis_on_a_generated_youtube_vis_json(tmp_path, tiny_weights):
    from pycocotools import mask as mask_utils

    _frames_folder(tmp_path / "JPEGImages" / "vid", 3)
    names = [f"vid/{t + 1:06d}.png" for t in range(3)]
    segmentations = []
    for t in range(3):
        mask = np.zeros((64, 80), dtype=np.uint8, order="F")
        mask[20:40, 10 + 4 * t : 30 + 4 * t] = 1
        rle = mask_utils.encode(mask)
        segmentations.append({"size": rle["size"], "counts": rle["counts"].decode()})
    gt = tmp_path / "instances.json"
    gt.write_text(
        json.dumps(
            {
                "videos": [{"id": 5, "height": 64, "width": 80, "length": 3, "file_names": names}],
                "categories": [{"id": 3, "name": "box"}, {"id": 4, "name": "ball"}],
                "annotations": [
                    {
                        "id": 1,
                        "video_id": 5,
                        "category_id": 3,
                        "iscrowd": 0,
                        "segmentations": segmentations,
                        "areas": [400.0] * 3,
                        "bboxes": [[10 + 4 * t, 20, 20, 20] for t in range(3)],
                    }
                ],
            }
        )
    )
    results = tmp_path / "out" / "results.json"
    args = ["vis", "--gt", str(gt), "--images", str(tmp_path / "JPEGImages")]
    args += [
        "--results",
        str(results),
        "--model",
        "unipercept_tiny",
        "--weights",
        str(tiny_weights),
    ]
    args += ["--short-size", "64", "--max-size", "96", "--json", str(tmp_path / "vis.json")]
    assert evaluate.main(args) == 0
    entries = json.loads(results.read_text())
    for entry in entries:
        assert entry["video_id"] == 5 and entry["category_id"] in (3, 4)
        assert len(entry["segmentations"]) == 3
    scores = json.loads((tmp_path / "vis.json").read_text())
    assert set(scores) == {"task", "ap", "ap50", "ap75", "ar1", "ar10"}


@pytest.mark.parametrize("task", ["rec", "res"])
def test_model_mode_referring_on_the_generated_refcoco(tmp_path, tiny_weights, monkeypatch, task):
    from unipercept import config
    from unipercept.data.synthetic import generate

    generate(tmp_path / "synthetic", seed=0, size="small")
    monkeypatch.setenv("UNIPERCEPT_DATA", str(tmp_path))
    spec = config.instantiate(config.compose_group_option("data", "synthetic_refcoco"))
    expressions = sum(len(s.expressions) for s in spec.read())
    out = tmp_path / "scores.json"
    args = [
        task,
        "--data",
        "synthetic_refcoco",
        "--model",
        "unipercept_tiny",
        "--weights",
        str(tiny_weights),
    ]
    args += ["--short-size", "64", "--max-size", "96"]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["count"] == expressions > 0
    key = "precision" if task == "rec" else "overall_iou"
    assert 0.0 <= scores[key] <= 1.0
    # A dataset of category prompts, or no dataset at all, is a one-line error.
    assert (
        evaluate.main(
            [
                task,
                "--data",
                "synthetic_coco",
                "--model",
                "unipercept_tiny",
                "--weights",
                str(tiny_weights),
            ]
        )
        == 2
    )
    assert evaluate.main([task]) == 2


def test_model_mode_mots_writes_non_overlapping_masks(tmp_path, tiny_weights):
    from pycocotools import mask as mask_utils

    from unipercept.evaluation.mot import read_mots_txt

    root = tmp_path / "mots"
    _frames_folder(root / "0002" / "img1", 3)
    (root / "0002" / "gt").mkdir()
    gt_rows = []
    for t in range(3):
        mask = np.zeros((64, 80), dtype=np.uint8, order="F")
        mask[20:40, 10 + 4 * t : 30 + 4 * t] = 1
        counts = mask_utils.encode(mask)["counts"].decode()
        gt_rows.append(f"{t + 1} 2001 2 64 80 {counts}\n")
    (root / "0002" / "gt" / "gt.txt").write_text("".join(gt_rows))
    args = ["mots", "--gt", str(root), "--images", str(root), "--results", str(tmp_path / "res")]
    args += [
        "--model",
        "unipercept_tiny",
        "--weights",
        str(tiny_weights),
        "--short-size",
        "64",
        "--max-size",
        "96",
    ]
    assert evaluate.main([*args, "--json", str(tmp_path / "mots.json")]) == 0
    rows = read_mots_txt(tmp_path / "res" / "0002.txt")
    for frame in set(rows.frames.tolist()):
        chosen = rows.frames == frame
        masks = [mask_utils.decode(r) for r, keep in zip(rows.rles, chosen, strict=True) if keep]
        assert (np.sum(masks, axis=0) <= 1).all()  # MOTS masks never overlap
    scores = json.loads((tmp_path / "mots.json").read_text())
    assert "smota" in scores and set(scores["sequences"]) == {"0002"}


def test_model_mode_rvos_on_the_generated_refytvos(tmp_path, tiny_weights, monkeypatch):
    from unipercept import config
    from unipercept.data.synthetic import generate
    from unipercept.evaluation.rvos import read_submission_masks

    generate(tmp_path / "synthetic", seed=0, size="small")
    monkeypatch.setenv("UNIPERCEPT_DATA", str(tmp_path))
    samples = config.instantiate(config.compose_group_option("data", "synthetic_refytvos")).read()
    out, submission = tmp_path / "rvos.json", tmp_path / "submission"
    args = [
        "rvos",
        "--data",
        "synthetic_refytvos",
        "--model",
        "unipercept_tiny",
        "--weights",
        str(tiny_weights),
    ]
    args += ["--short-size", "64", "--max-size", "96", "--results", str(submission)]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["expressions"] == sum(len(s.expressions) for s in samples) > 0
    assert 0.0 <= scores["J&F"] <= 1.0
    first = samples[0]
    masks = read_submission_masks(submission / "Annotations" / first.sample_id / "0")
    assert list(masks) == [frame.image.stem for frame in first.frames]
