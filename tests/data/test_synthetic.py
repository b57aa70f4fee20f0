"""The generated world: deterministic, and written in formats the real tools read (pycocotools,
TrackEval, PIL), with unambiguous referring expressions."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import unipercept.data.synthetic as synthetic
from unipercept.data.synthetic import generate
from unipercept.data.synthetic.encoding import davis_palette
from unipercept.data.synthetic.expressions import Facts, candidate_expressions
from unipercept.data.synthetic.world import CATEGORIES, COLOURS, SIZES, TEXTURES

from ..conftest import REPO_ROOT

SEED = 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> synthetic.WorldSummary:
    return generate(tmp_path_factory.mktemp("synthetic") / "world", SEED, "small")


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _box(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    expected = _hashes(world.root)
    assert len(expected) > 300
    assert _hashes(generate(tmp_path / "again", SEED, "small").root) == expected
    other = _hashes(generate(tmp_path / "other", SEED + 1, "small").root)
    shared = set(other) & set(expected)
    assert "coco/annotations/instances_train.json" in shared
    assert sum(other[name] != expected[name] for name in shared) > 0.9 * len(shared) - 10


def test_summary(world):
    assert world.images == synthetic.PRESETS["small"].images
    assert world.annotations > sum(world.images.values())
    assert world.refs > 0 and world.video_expressions > 0
    for root in (world.coco, world.refcoco, world.ytvis, world.davis, world.lasot, world.mot):
        assert root.is_dir() and root.parent == world.root
    record = json.loads((world.root / "summary.json").read_text())
    assert record["annotations"] == world.annotations and record["coco"] == "coco"


def _check_coco(coco: COCO, image_folder: Path) -> dict[str, int]:
    """Decodes every annotation; returns how many of each encoding there are."""
    kinds = {"polygon": 0, "rle": 0, "crowd": 0}
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    for image in coco.dataset["images"]:
        with Image.open(image_folder / image["file_name"]) as pixels:
            assert (pixels.height, pixels.width) == (image["height"], image["width"])
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (image["height"], image["width"])
        assert mask.any() and ann["bbox"] == _box(mask)
        assert ann["area"] == int(mask.sum())
        segmentation = ann["segmentation"]
        if ann["iscrowd"]:
            assert isinstance(segmentation["counts"], list)
            kinds["crowd"] += 1
        elif isinstance(segmentation, list):
            assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in segmentation)
            kinds["polygon"] += 1
        else:
            assert isinstance(segmentation["counts"], str)
            assert segmentation["size"] == [image["height"], image["width"]]
            kinds["rle"] += 1
    return kinds


def test_coco_loads_and_decodes(world):
    for split in ("train", "val"):
        coco = COCO(str(world.coco / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == world.images[split]
        kinds = _check_coco(coco, world.coco / split)
        assert kinds["polygon"] > kinds["rle"] > 0
        assert kinds["crowd"] >= 1


def test_refcoco_refs_are_plain_and_point_at_annotations(world):
    coco = COCO(str(world.refcoco / "instances.json"))
    _check_coco(coco, world.refcoco / "images")
    assert all(
        name.startswith("COCO_train2014_") for name in (i["file_name"] for i in coco.imgs.values())
    )
    with (world.refcoco / "refs(unc).p").open("rb") as handle:
        refs = pickle.load(handle)

    def walk(value):
        assert type(value) in (dict, list, str, int), type(value)
        if isinstance(value, dict):
            for key, item in value.items():
                assert type(key) is str
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(refs)
    assert len(refs) == world.refs
    sent_ids = [s["sent_id"] for ref in refs for s in ref["sentences"]]
    assert len(sent_ids) == len(set(sent_ids))
    assert {ref["split"] for ref in refs} <= {"train", "val", "testA", "testB"}
    assert {"train", "val"} <= {ref["split"] for ref in refs}
    for ref in refs:
        ann = coco.anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        assert ann["iscrowd"] == 0
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        image_name = coco.imgs[ref["image_id"]]["file_name"]
        assert ref["file_name"].startswith(image_name.removesuffix(".jpg") + "_")
        for sentence in ref["sentences"]:
            assert sentence["tokens"] == sentence["sent"].split() and sentence["raw"]


def test_ytvis_segmentations_decode_and_match_davis(world):
    for split, folder in (("train", "train"), ("val", "valid")):
        data = json.loads((world.ytvis / f"{folder}.json").read_text())
        assert len(data["videos"]) == world.videos[split]
        assert [c["id"] for c in data["categories"]] == list(range(1, len(CATEGORIES) + 1))
        videos = {video["id"]: video for video in data["videos"]}
        for ann in data["annotations"]:
            video = videos[ann["video_id"]]
            size = (video["height"], video["width"])
            assert len(ann["segmentations"]) == len(ann["bboxes"]) == video["length"]
            name = video["file_names"][0].split("/")[0]
            davis = [
                np.array(Image.open(world.davis / "Annotations" / "480p" / name / f"{t:05d}.png"))
                for t in range(video["length"])
            ]
            track_id = None
            for t, (rle, box, area) in enumerate(
                zip(ann["segmentations"], ann["bboxes"], ann["areas"], strict=True)
            ):
                assert (rle is None) == (box is None) == (area is None)
                if rle is None:
                    continue
                mask = mask_utils.decode(mask_utils.frPyObjects(rle, *size)).astype(bool)
                assert mask.shape == size and box == _box(mask) and area == int(mask.sum())
                # The same object keeps one DAVIS id over the video: track continuity.
                track_id = track_id or int(np.bincount(davis[t][mask]).argmax())
                assert np.array_equal(mask, davis[t] == track_id)
            assert track_id is not None
            for file_name in video["file_names"]:
                assert (world.ytvis / folder / "JPEGImages" / file_name).is_file()


def test_davis_palette_pngs_and_image_sets(world):
    palette = davis_palette()
    assert palette[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    listed = []
    for split in ("train", "val"):
        names = (world.davis / "ImageSets" / "2017" / f"{split}.txt").read_text().split()
        assert len(names) == world.videos[split]
        listed += names
    assert sorted(listed) == sorted(
        p.name for p in (world.davis / "Annotations" / "480p").iterdir()
    )
    for name in listed:
        pngs = sorted((world.davis / "Annotations" / "480p" / name).glob("*.png"))
        jpgs = sorted((world.davis / "JPEGImages" / "480p" / name).glob("*.jpg"))
        assert (
            [p.stem for p in pngs]
            == [p.stem for p in jpgs]
            == [f"{t:05d}" for t in range(len(jpgs))]
        )
        ids = set()
        for path in pngs:
            with Image.open(path) as image:
                assert image.mode == "P" and image.getpalette()[:30] == palette[:30]
                ids |= set(np.unique(np.array(image)).tolist())
        # Object ids are 1..K, each used in some frame.
        assert ids - {0} == set(range(1, max(ids) + 1))


def test_lasot_groundtruth(world):
    for split, file_name in (("train", "training_set.txt"), ("val", "testing_set.txt")):
        names = (world.lasot / file_name).read_text().split()
        assert len(names) == world.lasot_sequences[split] > 0
        for name in names:
            folder = world.lasot / name.rsplit("-", 1)[0] / name
            frames = sorted((folder / "img").glob("*.jpg"))
            assert [p.name for p in frames] == [f"{t:08d}.jpg" for t in range(1, len(frames) + 1)]
            with Image.open(frames[0]) as image:
                width, height = image.size
            boxes = [
                [int(v) for v in line.split(",")]
                for line in (folder / "groundtruth.txt").read_text().splitlines()
            ]
            out_of_view, occluded = (
                [int(v) for v in (folder / f"{flags}.txt").read_text().strip().split(",")]
                for flags in ("out_of_view", "full_occlusion")
            )
            assert len(boxes) == len(out_of_view) == len(occluded) == len(frames)
            assert out_of_view[0] == occluded[0] == 0
            assert not any(a and b for a, b in zip(out_of_view, occluded, strict=True))
            # Boxes stay inside the image, also the repeated last box of out-of-view frames.
            for x, y, w, h in boxes:
                assert w > 0 and h > 0
                assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert (folder / "nlp.txt").read_text().strip().startswith("the ")


def test_trackeval_scores_gt_against_itself(world, tmp_path):
    trackeval = pytest.importorskip("trackeval", reason="TrackEval is not installed")
    for split in ("train", "val"):
        benchmark_split = f"MOTSynth-{split}"
        sequences = (world.mot / "seqmaps" / f"{benchmark_split}.txt").read_text().split()[1:]
        assert len(sequences) == world.mot_sequences[split]
        data = tmp_path / split / benchmark_split / "gt_copy" / "data"
        data.mkdir(parents=True)
        for sequence in sequences:
            lines = (
                (world.mot / benchmark_split / sequence / "gt" / "gt.txt").read_text().splitlines()
            )
            # A tracker reports only the evaluated class, with a confidence.
            kept = [line for line in lines if line.split(",")[7] == "1"]
            assert kept
            (data / f"{sequence}.txt").write_text("\n".join(kept) + "\n")
        dataset = trackeval.datasets.MotChallenge2DBox(
            {
                "GT_FOLDER": str(world.mot),
                "TRACKERS_FOLDER": str(tmp_path / split),
                "BENCHMARK": "MOTSynth",
                "SPLIT_TO_EVAL": split,
                "PRINT_CONFIG": False,
            }
        )
        evaluator = trackeval.Evaluator(
            {
                "USE_PARALLEL": False,
                "PRINT_RESULTS": False,
                "PRINT_CONFIG": False,
                "OUTPUT_SUMMARY": False,
                "OUTPUT_DETAILED": False,
                "PLOT_CURVES": False,
                "TIME_PROGRESS": False,
                "DISPLAY_LESS_PROGRESS": True,
            }
        )
        results, _ = evaluator.evaluate([dataset], [trackeval.metrics.HOTA()])
        hota = results["MotChallenge2DBox"]["gt_copy"]["COMBINED_SEQ"]["pedestrian"]["HOTA"]["HOTA"]
        assert np.allclose(hota, 1.0)


def test_mot_files(world):
    for sequence in (world.mot / "MOTSynth-train").iterdir():
        info = (sequence / "seqinfo.ini").read_text().splitlines()
        assert info[0] == "[Sequence]" and f"name={sequence.name}" in info and "imDir=img1" in info
        length = int(next(line for line in info if line.startswith("seqLength=")).split("=")[1])
        assert len(list((sequence / "img1").glob("*.jpg"))) == length
        assert (sequence / "img1" / "000001.jpg").is_file()
        for line in (sequence / "gt" / "gt.txt").read_text().splitlines():
            frame, _, _, _, w, h, flag, number, visibility = line.split(",")
            assert 1 <= int(frame) <= length and int(w) > 0 and int(h) > 0
            assert int(flag) == int(int(number) == 1) and 0.0 <= float(visibility) <= 1.0
        for line in (sequence / "det" / "det.txt").read_text().splitlines():
            fields = line.split(",")
            assert len(fields) == 10 and fields[1] == "-1" and 1 <= int(fields[0]) <= length


def test_mots_ground_truth_matches_the_mot_tracks(world):
    """Each MOT sequence has MOTS masks: the pedestrian tracks (class 2, id 2000 + track id)
    in the frames where the MOT ground truth sees them (bar a pixel-less sliver), the rest as
    the ignore region (class 10); the masks of a frame never overlap."""
    from unipercept.evaluation.mot import read_mots_txt

    for split in ("MOTSynth-train", "MOTSynth-val"):
        for sequence in (world.mot / split).iterdir():
            visible = set()
            for line in (sequence / "gt" / "gt.txt").read_text().splitlines():
                frame, track, *_, flag, _, visibility = line.split(",")
                if flag == "1" and float(visibility) > 0:
                    visible.add((int(frame), 2000 + int(track)))
            mots = world.mot.parent / "mots" / split / sequence.name / "gt" / "gt.txt"
            rows = [line.split(" ") for line in mots.read_text().splitlines()]
            found = {(int(r[0]), int(r[1])) for r in rows if r[2] == "2"}
            # A track the MOT ground truth calls barely visible may have no pixel left.
            assert found <= visible and len(found) >= 0.9 * len(visible)
            assert all(r[1] == "10000" for r in rows if r[2] == "10")
            truth = read_mots_txt(mots)
            assert len(truth.frames) > 0


def test_refytvos_meta_reference_existing_frames_and_objects(world):
    for folder in ("train", "valid"):
        meta = json.loads((world.refytvos / folder / "meta.json").read_text())["videos"]
        expressions = json.loads(
            (world.refytvos / "meta_expressions" / folder / "meta_expressions.json").read_text()
        )["videos"]
        assert set(meta) == set(expressions)
        for name, video in expressions.items():
            assert video["expressions"]
            for frame in video["frames"]:
                assert (world.refytvos / folder / "JPEGImages" / name / f"{frame}.jpg").is_file()
            for expression in video["expressions"].values():
                assert expression["obj_id"] in meta[name]["objects"] and expression["exp"]
            for obj_id, obj in meta[name]["objects"].items():
                assert obj["category"] in CATEGORIES and obj["frames"]
                for frame in obj["frames"]:
                    labels = np.array(
                        Image.open(world.refytvos / folder / "Annotations" / name / f"{frame}.png")
                    )
                    assert (labels == int(obj_id)).sum() >= 30


def _evaluate(text: str, scene: list[Facts]) -> list[int]:
    """An independent reading of an expression: the indices of the objects it describes.

    Grammar: ``the [size] [colour] [texture] <category> [moving <direction>]`` followed by
    nothing, ``at the <left|right|top|bottom>`` (the extreme of the phrase's matches), or
    ``<left of|right of|above|below> <phrase>`` (a relation to the unique object the phrase
    names). Positions compare strictly.
    """
    words = text.split()
    assert words[0] == "the", text
    wanted: dict[str, str] = {}
    index = 1
    while words[index] not in CATEGORIES:
        word = words[index]
        kind = "size" if word in SIZES else "colour" if word in COLOURS else "texture"
        assert word in (*SIZES, *COLOURS, *TEXTURES) and kind not in wanted, text
        wanted[kind] = word
        index += 1
    wanted["category"] = words[index]
    rest = words[index + 1 :]
    if rest[:1] == ["moving"]:
        wanted["motion"], rest = rest[1], rest[2:]
    matches = [k for k, f in enumerate(scene) if all(getattr(f, a) == v for a, v in wanted.items())]
    if not rest:
        return matches
    x = {k: scene[k].centre[0] for k in range(len(scene))}
    y = {k: scene[k].centre[1] for k in range(len(scene))}
    if rest[:2] == ["at", "the"]:
        assert len(rest) == 3, text
        key = {"left": x, "right": {k: -v for k, v in x.items()}, "top": y}.get(
            rest[2], {k: -v for k, v in y.items()}
        )
        best = min(key[k] for k in matches)
        return [k for k in matches if key[k] == best]
    relation = " ".join(rest[:2]) if rest[0] in ("left", "right") else rest[0]
    anchor_words = rest[2:] if rest[0] in ("left", "right") else rest[1:]
    anchors = _evaluate(" ".join(anchor_words), scene)
    assert len(anchors) == 1, f"anchor of {text!r} is ambiguous"
    a = anchors[0]
    holds = {
        "left of": lambda k: x[k] < x[a],
        "right of": lambda k: x[k] > x[a],
        "above": lambda k: y[k] < y[a],
        "below": lambda k: y[k] > y[a],
    }[relation]
    return [k for k in matches if k != a and holds(k)]


@pytest.mark.parametrize("spatial", [True, False], ids=["image", "video"])
def test_every_expression_names_exactly_its_target(spatial):
    rng = np.random.default_rng(1)
    forms = {"attribute": 0, "extreme": 0, "relation": 0}
    for _ in range(150):
        # Few attribute values, so that many objects share phrases and need relations.
        scene = [
            Facts(
                category=str(rng.choice(CATEGORIES[:2])),
                colour=str(rng.choice(["red", "blue"])),
                size=str(rng.choice(SIZES[:2])),
                texture=str(rng.choice(TEXTURES)),
                centre=(float(rng.uniform()), float(rng.uniform())),
                motion=None if spatial else str(rng.choice(["left", "up"])),
            )
            for _ in range(int(rng.integers(1, 8)))
        ]
        # The objects after the named ones play crowd members: they only compete.
        num_named = int(rng.integers(1, len(scene) + 1))
        for target in range(num_named):
            found = candidate_expressions(scene, target, spatial=spatial, num_named=num_named)
            for form, texts in found.items():
                forms[form] += len(texts)
                for text in texts:
                    assert _evaluate(text, scene) == [target], text
    assert forms["attribute"] > 0
    assert (forms["extreme"] > 0 and forms["relation"] > 0) == spatial


def test_identical_objects_are_told_apart_only_by_position():
    twin = Facts("star", "red", "large", "striped", (0.2, 0.5))
    ring = Facts("ring", "blue", "small", "solid", (0.5, 0.5))
    scene = [twin, Facts("star", "red", "large", "striped", (0.8, 0.5)), ring]
    found = candidate_expressions(scene, 0)
    assert found["attribute"] == []
    assert "the star at the left" in found["extreme"]
    assert "the star left of the ring" in found["relation"]
    # A crowd member (not named) is no anchor.
    assert candidate_expressions(scene, 0, num_named=2)["relation"] == []
    assert candidate_expressions(scene, 0, spatial=False) == {
        "attribute": [],
        "extreme": [],
        "relation": [],
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "unipercept.data.synthetic", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
    )


def test_cli_refuses_a_non_empty_folder_and_replaces_only_an_earlier_world(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    refused = _cli("--out", str(out), "--seed", "3")
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "--overwrite" in refused.stderr
    assert (out / "keep.txt").is_file()
    # --overwrite replaces an earlier world, never a folder of other files.
    refused = _cli("--out", str(out), "--seed", "3", "--overwrite")
    assert refused.returncode == 2
    assert (
        len(refused.stderr.strip().splitlines()) == 1 and "not a generated world" in refused.stderr
    )
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert _cli("--out", str(out), "--seed", "3").returncode == 0
    replaced = _cli("--out", str(out), "--seed", "4", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert '"seed": 4' in (out / "summary.json").read_text() and (out / "coco").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_overwrite_refuses_a_file_in_the_way(tmp_path):
    out = tmp_path / "world"
    out.write_text("a file")
    with pytest.raises(FileExistsError, match="not a generated world"):
        generate(out, SEED, "small", overwrite=True)
    assert out.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(root: Path, *args: object) -> None:
        (root / "partial.txt").write_text("half")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(synthetic, "_build", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate(tmp_path / "world", SEED, "small")
    assert list(tmp_path.iterdir()) == []
