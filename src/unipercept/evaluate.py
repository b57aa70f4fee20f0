"""``python -m unipercept.evaluate TASK --gt PATH --results PATH``: scores result files.

Scores existing prediction files, in the formats the benchmarks' servers take, against ground
truth, with the metrics of :mod:`unipercept.evaluation`:

| task | --gt | --results |
|---|---|---|
| det, insseg | COCO annotation json | COCO results json (insseg: masks; boxes optional) |
| sot | LaSOT folder (sequence folders holding groundtruth.txt) | folder of <sequence>.txt |
| vos | DAVIS / YouTube-VOS Annotations folder | folder of palette PNG folders |
| rvos | Ref-YouTube-VOS layout (Annotations/<video>/<exp>/) | the same layout |
| mot | MOTChallenge folder (<seq>/gt/gt.txt) | folder of <seq>.txt |
| mots | MOTS txt folder | folder of <seq>.txt |
| vis | YouTube-VIS annotation json | YouTube-VIS results json |

With ``--images DIR`` (det, insseg, vos, sot, mot, mots, vis) a model is run first. For det and
insseg every image of the ground-truth json is read from DIR, the model (``--model``, a
``conf/model`` name, with ``--weights``) is prompted with all the json's category names, and its
detections are written to ``--results`` as a COCO results json (atomically) before being scored.
For vos, DIR holds ``<seq>/*.jpg``, the first ground-truth PNG of each sequence gives the
objects, and the masks are written as palette PNG folders under ``--results``. For sot, mot and
mots, DIR is the dataset folder itself (LaSOT: ``<seq>/img/`` beside ``groundtruth.txt``;
MOTChallenge: ``<seq>/img1/``) and the result files go under ``--results``. For vis, DIR holds
the json's ``file_names`` and ``--results`` is the results json.

rvos with ``--data NAME`` runs the model on an annotated referring video dataset and scores
J&F per expression (``--results DIR`` also writes the submission layout). rec and res have no
official results file: ``--data NAME`` (a ``conf/data`` referring dataset,
``--data-override reader.split=val``) runs the model on every expression and reports P@0.5, or
overall and mean IoU.

Prints the scores; ``--json PATH`` also writes them (atomically). Bad input exits with status 2
and one line naming the file and entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unipercept.api import Predictor

logger = logging.getLogger("unipercept.evaluate")

TASKS = ("det", "insseg", "sot", "vos", "rvos", "mot", "mots", "vis")


def _coco(gt: Path, results: Path, iou_types: Sequence[str]) -> dict[str, Any]:
    from unipercept.evaluation.coco import evaluate_coco

    scores = {}
    for iou_type in iou_types:
        result = evaluate_coco(gt, results, iou_type)
        scores[iou_type] = {
            f.name: getattr(result, f.name)
            for f in dataclasses.fields(result)
            if f.name != "iou_type"
        }
    return scores


def _all_have_boxes(results: Path) -> bool:
    try:
        entries = json.loads(results.read_text())
    except (OSError, json.JSONDecodeError):
        return False  # evaluate_coco reports the unreadable file, naming it
    return isinstance(entries, list) and all(isinstance(e, dict) and "bbox" in e for e in entries)


def _sot(gt: Path, results: Path, names: Sequence[str] | None = None) -> dict[str, Any]:
    from unipercept.evaluation.sot import evaluate_sot

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    if not results.is_dir():
        raise ValueError(f"results folder {results} does not exist")
    sequences = {p.parent.name: p.parent for p in sorted(gt.rglob("groundtruth.txt"))}
    if not sequences:
        raise ValueError(f"{gt}: no sequence folder holds a groundtruth.txt")
    if names is not None:
        missing = sorted(set(names) - set(sequences))
        if missing:
            raise ValueError(f"{gt}: no sequence folder for {missing[:5]} (--sequences)")
        sequences = {name: sequences[name] for name in names}
    predictions = {name: results / f"{name}.txt" for name in sequences}
    known = sequences if names is None else {p.parent.name for p in gt.rglob("groundtruth.txt")}
    unknown = sorted(p.stem for p in results.glob("*.txt") if p.stem not in known)
    if unknown:
        raise ValueError(f"{results}: results for sequences not in {gt}: {unknown[:5]}")
    result = evaluate_sot(sequences, predictions)
    return {
        "success_auc": result.success_auc,
        "precision_20": result.precision_20,
        "normalized_precision": result.normalized_precision,
        "sequences": len(sequences),
    }


def _vos(result) -> dict[str, Any]:
    return {
        "J&F": result.j_and_f,
        "J": dataclasses.asdict(result.j),
        "F": dataclasses.asdict(result.f),
        "objects": len(result.objects),
    }


def _mot(result) -> dict[str, Any]:
    names = ("hota", "deta", "assa", "mota", "motp", "idf1", "smota")
    scores = {name: getattr(result, name) for name in names}
    scores["id_switches"] = result.id_switches
    scores["sequences"] = {
        name: {n: getattr(seq, n) for n in names} for name, seq in result.sequences.items()
    }
    return scores


def build_predictor(
    model_name: str, weights: Path | None, short_size: int | None, max_size: int | None
) -> Predictor:
    """A Predictor for ``model_name``: a bundled model ("unipercept-tiny") or a save_pretrained
    folder, at its own resolution unless sizes are given; or a ``conf/model`` option built
    with ``weights`` loaded (at 800/1333 unless given)."""
    from unipercept import config
    from unipercept.api import Predictor
    from unipercept.data.preprocess import ImagePreprocessor
    from unipercept.modeling.pretrained import META_FILE, bundled_models, load_model

    if model_name in bundled_models() or (Path(model_name) / META_FILE).is_file():
        if weights is not None:
            raise ValueError(
                f"--weights is for a conf/model name; {model_name} is a pretrained model with "
                "its own weights"
            )
        model = load_model(model_name)
        settings = {**model.preprocess_settings}
    else:
        options = [n.split("/", 1)[1] for n in config.list_configs() if n.startswith("model/")]
        if model_name not in options:
            raise ValueError(
                f"--model {model_name}: not a bundled model ({', '.join(bundled_models())}), "
                f"a save_pretrained folder, nor a conf/model option ({', '.join(options)})"
            )
        model = config.instantiate(config.compose_group_option("model", model_name))
        if weights is not None:
            from unipercept.engine.checkpoint import load_model_weights

            load_model_weights(model, weights)
        else:
            logger.warning("warning: no --weights: the model's weights are as built")
        settings = {}
    if short_size is not None:
        settings["short_size"] = short_size
    if max_size is not None:
        settings["max_size"] = max_size
    return Predictor(model, preprocess=ImagePreprocessor(**settings))


def predict_vos(
    gt: Path,
    images: Path,
    results: Path,
    predictor: Predictor,
    sequences: Sequence[str] | None = None,
) -> Path:
    """Runs VOS on DAVIS-style folders: each sequence's objects are given by the first
    ground-truth PNG, followed through ``images/<seq>/*.jpg``, and written as palette PNG
    folders ``results/<seq>/`` (each atomically)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from unipercept.data.io import load_image, load_index_png
    from unipercept.evaluation.davis import VOID, write_index_folder
    from unipercept.structures import AnnotationPrompt

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    names = sorted(p.name for p in gt.iterdir() if p.is_dir()) if sequences is None else sequences
    for name in tqdm(names, desc="vos", unit="sequence"):
        frames = sorted((images / name).glob("*.jpg")) or sorted((images / name).glob("*.png"))
        if not frames:
            raise ValueError(f"{images / name}: no frames (.jpg or .png) for sequence {name}")
        first = gt / name / f"{frames[0].stem}.png"
        if not first.is_file():
            raise ValueError(f"{first}: sequence {name} has no first-frame annotation")
        index = load_index_png(first)
        values = [int(v) for v in np.unique(index) if v != 0]
        binary = values == [VOID]  # DAVIS-2016: one object marked 255
        ids = [VOID] if binary else [v for v in values if v != VOID]
        if not ids:
            raise ValueError(f"{first}: the first frame annotates no object")
        image = load_image(frames[0])
        prompts = [AnnotationPrompt(image, mask=torch.from_numpy(index == i)) for i in ids]
        written: dict[str, np.ndarray] = {}
        with predictor.start("vos", prompts) as session:
            for path in frames:
                found = session.step(load_image(path))
                out = np.zeros(found.image_size, dtype=np.uint8)
                # Lower scores first, so the most confident object owns an overlap.
                for k in torch.argsort(found.scores).tolist():
                    label = 1 if binary else ids[int(found.track_ids[k]) - 1]
                    out[found.masks[k].numpy()] = label
                written[path.stem] = out
        write_index_folder(results / name, written)
    return results


def _frames(folder: Path, sequence: str) -> list[Path]:
    frames = sorted(folder.glob("*.jpg")) or sorted(folder.glob("*.png"))
    if not frames:
        raise ValueError(f"{folder}: no frames (.jpg or .png) for sequence {sequence}")
    return frames


def predict_sot(
    gt: Path, results: Path, predictor: Predictor, sequences: Sequence[str] | None = None
) -> Path:
    """Runs SOT on a LaSOT-style folder: each sequence folder (the one holding
    ``groundtruth.txt``) has its frames in ``img/``; the first ground-truth box starts the
    tracker; ``results/<sequence>.txt`` gets one ``x,y,w,h`` per frame (0,0,0,0 where the
    target is reported absent), each file atomically."""
    import numpy as np
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.sot import read_boxes_txt, write_boxes_txt
    from unipercept.structures import AnnotationPrompt

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    folders = sorted(p.parent for p in gt.rglob("groundtruth.txt"))
    if not folders:
        raise ValueError(f"{gt}: no sequence folder holds a groundtruth.txt")
    if sequences is not None:
        folders = [f for f in folders if f.name in set(sequences)]
    for folder in tqdm(folders, desc="sot", unit="sequence"):
        x, y, w, h = read_boxes_txt(folder / "groundtruth.txt")[0]
        frames = _frames(folder / "img", folder.name)
        first = load_image(frames[0])
        prompt = AnnotationPrompt(first, box=[x, y, x + w, y + h])
        boxes = np.zeros((len(frames), 4))
        with predictor.start("sot", prompt) as session:
            for t, path in enumerate(frames):
                found = session.step(first if t == 0 else load_image(path))
                if len(found):
                    x0, y0, x1, y1 = found.boxes[0].tolist()
                    boxes[t] = (x0, y0, x1 - x0, y1 - y0)
        write_boxes_txt(results / f"{folder.name}.txt", boxes)
    return results


def predict_mot(
    gt: Path,
    results: Path,
    predictor: Predictor,
    categories: Sequence[str] = ("person",),
    with_masks: bool = False,
) -> Path:
    """Runs MOT (or MOTS with ``with_masks``) on a MOTChallenge folder (``<seq>/img1/*.jpg``),
    prompted with ``categories``; ``results/<seq>.txt`` in the MOTChallenge (or MOTS) txt
    format, each file atomically. MOTS frames are kept as RLE until the file is written."""
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.mot import write_mot_txt, write_mots_txt
    from unipercept.structures.masks import RLEMasks

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    sequences = sorted(p for p in gt.iterdir() if (p / "img1").is_dir())
    if not sequences:
        raise ValueError(f"{gt}: no <sequence>/img1/ frame folders")
    for folder in tqdm(sequences, desc="mot", unit="sequence"):
        tracked = []
        with predictor.start("mots" if with_masks else "mot", list(categories)) as session:
            for path in _frames(folder / "img1", folder.name):
                found = session.step(load_image(path)).replace(embeddings=None)
                # Kept until the file is written: boxes and ids, and masks as RLE (MOTS).
                masks = RLEMasks.from_dense(found.masks) if with_masks else None
                tracked.append(found.replace(masks=masks))
        target = results / f"{folder.name}.txt"
        if with_masks:
            write_mots_txt(target, tracked)
        else:
            write_mot_txt(target, tracked)
    return results


def predict_vis(gt: Path, images: Path, results: Path, predictor: Predictor) -> Path:
    """Runs VIS on every video of a YouTube-VIS annotation json (frames ``images/<file_name>``),
    prompted with all its category names; each track becomes one YouTube-VIS result (its
    category and score from the whole video), written to ``results`` as one json, atomically.

    The results json needs each track's mask in every frame, so the session's tracks are
    gathered per video as compressed RLE (a few hundred bytes per mask), not as pixels.
    """
    from tqdm import tqdm

    from unipercept.data.io import load_image, load_json
    from unipercept.evaluation.vis import VisPrediction, write_vis_results
    from unipercept.structures.masks import rle_encode

    if not gt.is_file():
        raise ValueError(f"ground-truth file {gt} does not exist")
    content = load_json(gt)
    categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    if not categories or "videos" not in content:
        raise ValueError(f"{gt}: needs 'videos' and 'categories'")
    names = [c["name"] for c in categories]
    predictions = []
    for video in tqdm(content["videos"], desc="vis", unit="video"):
        length = len(video["file_names"])
        tracks: dict[int, list] = {}
        with predictor.start("vis", names) as session:
            for t, name in enumerate(video["file_names"]):
                path = images / name
                if not path.is_file():
                    raise ValueError(f"{gt}: video {video['id']}: no frame file {path}")
                found = session.step(load_image(path))
                for track, rle in zip(
                    found.track_ids.tolist(), rle_encode(found.masks), strict=True
                ):
                    tracks.setdefault(track, [None] * length)[t] = rle
            summary = session.close()
        for track, segmentations in tracks.items():
            label, score = summary.track_labels[track]
            predictions.append(
                VisPrediction(
                    video_id=video["id"],
                    category_id=categories[label]["id"],
                    score=score,
                    segmentations=tuple(segmentations),
                )
            )
    results.parent.mkdir(parents=True, exist_ok=True)
    write_vis_results(results, predictions)
    return results


def _referring_spec(data: str, overrides: Sequence[str]):
    """The DatasetSpec of ``conf/data/<data>`` with ``key=value`` overrides; expressions only."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from unipercept import config

    try:
        composed = config.compose_group_option("data", data)
        OmegaConf.set_struct(composed, False)
        for override in overrides:
            key, _, value = override.partition("=")
            if not value:
                raise ValueError(f"--data-override {override!r}: expected key=value")
            OmegaConf.update(composed, key, value, merge=True)
        spec = config.instantiate(composed)
    except HydraException as error:
        raise ValueError(f"--data {data}: {error}") from error
    if spec.prompt_kind != "expression":
        raise ValueError(f"--data {data} trains {spec.prompt_kind} prompts, not expressions")
    return spec


def evaluate_rvos_model(
    data: str,
    predictor: Predictor,
    overrides: Sequence[str] = (),
    results: Path | None = None,
) -> dict[str, Any]:
    """R-VOS J&F of a model on an annotated referring video dataset (``conf/data``, e.g.
    ``refytvos`` on its train split or a split with masks): each expression runs an online
    session over its video; its top-1 masks are scored on the annotated frames against the
    union of the target's masks, and, with ``results``, written in the submission layout."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.davis import VosResult, evaluate_sequence
    from unipercept.evaluation.rvos import RefYouTubeVosSubmission
    from unipercept.structures.masks import RLEMasks

    spec = _referring_spec(data, overrides)
    submission = RefYouTubeVosSubmission(results) if results is not None else None
    objects = []
    for sample in tqdm(spec.read(), desc="rvos", unit="video"):
        annotated = [frame for frame in sample.frames if frame.annotated]
        if not annotated:
            raise ValueError(f"--data {data}: video {sample.sample_id} has no masks to score")
        names = [frame.image.stem for frame in sample.frames]
        for number, expression in enumerate(sample.expressions):
            predicted, truth = {}, {}
            with predictor.start("rvos", expression.text) as session:
                for frame, name in zip(sample.frames, names, strict=True):
                    found = session.step(load_image(frame.image))
                    predicted[name] = found.masks[0].numpy().astype(np.uint8)
                    if frame.annotated:
                        instances = frame.instances
                        masks = instances.masks
                        masks = masks.decode() if isinstance(masks, RLEMasks) else masks
                        target = torch.isin(
                            instances.track_ids, torch.tensor(expression.target_ids)
                        )
                        truth[name] = masks[target].any(0).numpy().astype(np.uint8)
            sequence = f"{sample.sample_id}/{number}"
            objects.extend(evaluate_sequence(truth, predicted, sequence=sequence))
            if submission is not None:
                masks = torch.from_numpy(np.stack([predicted[n] for n in names]).astype(bool))
                submission.write(sample.sample_id, str(number), names, masks)
    result = VosResult(tuple(objects))
    return {
        "J&F": result.j_and_f,
        "J": result.j.mean,
        "F": result.f.mean,
        "expressions": len(objects),
    }


def evaluate_referring(
    task: str, data: str, predictor: Predictor, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """REC (P@0.5) or RES (overall and mean IoU) of a model on a referring dataset named by its
    ``conf/data`` config (e.g. ``refcoco`` with ``reader.split=val``): every expression of every
    image is answered with the top-1 box or mask and compared with its target."""
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.referring import referring_box_precision, referring_mask_iou
    from unipercept.structures.masks import RLEMasks

    spec = _referring_spec(data, overrides)
    predicted, expected = [], []
    for sample in tqdm(spec.read(), desc=task, unit="image"):
        frame = sample.frames[0]
        image = load_image(frame.image)
        for expression in sample.expressions:
            target = frame.instances[frame.instances.track_ids == expression.target_ids[0]]
            found = predictor.predict(image, expression.text, task=task)
            if task == "rec":
                predicted.append(found.boxes[0])
                expected.append(target.boxes[0])
            else:
                masks = target.masks
                masks = masks.decode() if isinstance(masks, RLEMasks) else masks
                predicted.append(found.masks[0])
                expected.append(masks[0])
    if task == "rec":
        return dataclasses.asdict(referring_box_precision(predicted, expected))
    return dataclasses.asdict(referring_mask_iou(predicted, expected))


def predict_coco(
    gt: Path,
    images: Path,
    results: Path,
    *,
    model_name: str = "unipercept_tiny",
    weights: Path | None = None,
    with_masks: bool = False,
    short_size: int | None = None,
    max_size: int | None = None,
    score_threshold: float = 0.05,
) -> Path:
    """Runs a model on every image of a COCO json and writes its COCO results json."""
    import torch
    from tqdm import tqdm

    from unipercept.data.io import load_image, load_json
    from unipercept.evaluation.coco import coco_results, write_coco_results
    from unipercept.tasks import DetectionTask, InstanceSegmentationTask

    if not gt.is_file():
        raise ValueError(f"ground-truth file {gt} does not exist")
    if not images.is_dir():
        raise ValueError(f"images folder {images} does not exist")
    content = load_json(gt)
    categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{gt}: no categories to prompt the model with")
    task_type = InstanceSegmentationTask if with_masks else DetectionTask
    task = task_type(score_threshold=score_threshold, top_k=100)
    predictor = build_predictor(model_name, weights, short_size, max_size)
    prompt = task.make_prompt([c["name"] for c in categories])
    category_ids = [c["id"] for c in categories]
    entries = []
    with torch.no_grad():
        for image in tqdm(content.get("images", []), desc="predict", unit="image"):
            path = images / image["file_name"]
            if not path.is_file():
                raise ValueError(f"{gt}: image {image['id']}: no file {path}")
            found = predictor.predict(load_image(path), prompt, task=task)
            entries.extend(coco_results(image["id"], found, category_ids))
    results.parent.mkdir(parents=True, exist_ok=True)
    return write_coco_results(results, entries, gt)


def evaluate_files(task: str, gt: str | Path, results: str | Path, **options: Any) -> dict:
    """The scores of ``results`` against ``gt`` for ``task`` (see the module docstring)."""
    gt, results = Path(gt), Path(results)
    if task == "det":
        return _coco(gt, results, ["bbox"])
    if task == "insseg":
        # Mask AP, and box AP too when every result carries its box (COCO segm results may not).
        return _coco(gt, results, ["segm", "bbox"] if _all_have_boxes(results) else ["segm"])
    if task == "sot":
        return _sot(gt, results, options.get("sequences"))
    if task == "vos":
        from unipercept.evaluation.davis import evaluate_vos

        return _vos(evaluate_vos(gt, results, options.get("sequences")))
    if task == "rvos":
        from unipercept.evaluation.rvos import evaluate_rvos

        return _vos(evaluate_rvos(gt, results))
    if task == "mot":
        from unipercept.evaluation.mot import evaluate_mot

        return _mot(evaluate_mot(gt, results, preprocess=options.get("preprocess", True)))
    if task == "mots":
        from unipercept.evaluation.mot import evaluate_mots

        return _mot(evaluate_mots(gt, results))
    if task == "vis":
        from unipercept.evaluation.vis import evaluate_vis

        return dataclasses.asdict(evaluate_vis(gt, results))
    if task in ("rec", "res"):
        raise ValueError(
            f"{task} has no official results file to score; use "
            "unipercept.evaluation.referring_box_precision / referring_mask_iou"
        )
    raise ValueError(f"unknown task {task!r}; tasks with result files are {list(TASKS)}")


def _format(scores: dict, indent: str = "") -> str:
    """The scores as indented ``key: value`` lines."""
    lines = []
    for key, value in scores.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:\n{_format(value, indent + '  ')}")
        elif isinstance(value, float):
            lines.append(
                f"{indent}{key}: {value:.6f}" if math.isfinite(value) else f"{indent}{key}: nan"
            )
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def _read_sequences(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"--sequences {path}: no such file")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"--sequences {path}: the file names no sequence")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    from unipercept.data.io import write_text_atomic

    # Errors and warnings are single lines on stderr; the scores go to stdout.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    parser = argparse.ArgumentParser(
        prog="python -m unipercept.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("task", choices=(*TASKS, "rec", "res"))
    parser.add_argument("--gt", type=Path, help="ground truth (see --help)")
    parser.add_argument("--results", type=Path, help="the predictions")
    parser.add_argument(
        "--data", help="rec/res/rvos: a conf/data referring dataset to run the model on"
    )
    parser.add_argument(
        "--data-override", nargs="*", default=[], help="rec/res: key=value, e.g. reader.split=val"
    )
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--images", type=Path, help="det/insseg: run a model on these images first")
    parser.add_argument(
        "--model",
        default="unipercept-tiny",
        help="the model that --images/--data runs: a bundled model (default unipercept-tiny), "
        "a save_pretrained folder, or a conf/model name with --weights",
    )
    parser.add_argument("--weights", type=Path, help="checkpoint folder or .safetensors")
    parser.add_argument(
        "--categories", nargs="+", default=["person"], help="mot --images: the prompt's names"
    )
    parser.add_argument(
        "--sequences",
        type=Path,
        help="sot/vos: a file naming the sequences to run and score, one per line (DAVIS's "
        "ImageSets/2017/val.txt, LaSOT's testing_set.txt)",
    )
    parser.add_argument(
        "--short-size", type=int, help="inference size (default: the model's, or 800)"
    )
    parser.add_argument("--max-size", type=int, help="(default: the model's, or 1333)")
    parser.add_argument(
        "--mot15",
        action="store_true",
        help="mot: MOT15 ground truth (no classes, so no distractor preprocessing)",
    )
    args = parser.parse_args(argv)
    try:
        sequences = _read_sequences(args.sequences) if args.sequences is not None else None
        if args.task in ("rec", "res") or (args.task == "rvos" and args.data is not None):
            if args.data is None:
                raise ValueError(f"{args.task} is scored by running a model: give --data")
            predictor = build_predictor(args.model, args.weights, args.short_size, args.max_size)
            if args.task == "rvos":
                scores = evaluate_rvos_model(args.data, predictor, args.data_override, args.results)
            else:
                scores = evaluate_referring(args.task, args.data, predictor, args.data_override)
            sys.stdout.write(_format(scores) + "\n")
            if args.json:
                write_text_atomic(args.json, json.dumps({"task": args.task, **scores}, indent=2))
            return 0
        if args.gt is None or args.results is None:
            raise ValueError(f"{args.task} needs --gt and --results")
        if args.images is not None:
            runners = ("det", "insseg", "vos", "sot", "mot", "mots", "vis")
            if args.task not in runners:
                raise ValueError(f"--images runs a model for {', '.join(runners)}, not {args.task}")
            if args.task in ("vos", "sot", "mot", "mots", "vis"):
                predictor = build_predictor(
                    args.model, args.weights, args.short_size, args.max_size
                )
                if args.task == "vos":
                    predict_vos(args.gt, args.images, args.results, predictor, sequences)
                elif args.task == "vis":
                    predict_vis(args.gt, args.images, args.results, predictor)
                elif args.task == "sot":
                    predict_sot(args.images, args.results, predictor, sequences)
                else:
                    with_masks = args.task == "mots"
                    predict_mot(args.images, args.results, predictor, args.categories, with_masks)
            else:
                predict_coco(
                    args.gt,
                    args.images,
                    args.results,
                    model_name=args.model,
                    weights=args.weights,
                    with_masks=args.task == "insseg",
                    short_size=args.short_size,
                    max_size=args.max_size,
                )
        scores = evaluate_files(
            args.task, args.gt, args.results, preprocess=not args.mot15, sequences=sequences
        )
    except (ValueError, FileNotFoundError) as error:
        logger.error("error: %s", error)
        return 2
    sys.stdout.write(_format(scores) + "\n")
    if args.json:
        write_text_atomic(args.json, json.dumps({"task": args.task, **scores}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
