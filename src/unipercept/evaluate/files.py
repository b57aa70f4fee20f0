"""Scoring result files: the scores of ``--results`` against ``--gt`` for each task, with the
metrics of :mod:`unipercept.evaluation` (imported when a task is scored)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
