"""Results as JSON: per-image records, and the COCO-style ``predictions.json`` assembled from
them as a stream."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipercept.data.io import atomic_file
from unipercept.predict.job import CATEGORY_TASKS, EXPRESSION_TASKS, Job


def annotation_records(instances, with_masks: bool) -> list[dict[str, Any]]:
    from unipercept.structures import RLEMasks, rle_encode

    fields = instances.fields()
    count = len(instances)
    boxes = fields["boxes"].tolist() if "boxes" in fields else [[0.0] * 4] * count
    scores = fields["scores"].tolist() if "scores" in fields else [1.0] * count
    labels = fields["labels"].tolist() if "labels" in fields else [0] * count
    tracks = fields["track_ids"].tolist() if "track_ids" in fields else None
    rles = None
    if with_masks and "masks" in fields:
        masks = fields["masks"]
        rles = masks.rles if isinstance(masks, RLEMasks) else rle_encode(masks.cpu())
    out = []
    for i in range(count):
        x0, y0, x1, y1 = boxes[i]
        record: dict[str, Any] = {
            "category_id": int(labels[i]) + 1,
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(scores[i]), 5),
        }
        if tracks is not None:
            record["track_id"] = int(tracks[i])
        if rles is not None:
            rle = rles[i]
            counts = rle["counts"]
            record["segmentation"] = {
                "size": list(rle["size"]),
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            }
        out.append(record)
    return out


def instances_from_record(record: dict[str, Any]):
    """Instances (boxes, scores, labels, masks, track ids) back from a stored record."""
    import torch

    from unipercept.structures import Instances, RLEMasks

    annotations = record["annotations"]
    size = (record["height"], record["width"])
    boxes = torch.tensor(
        [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)],
        dtype=torch.float32,
    ).reshape(-1, 4)
    fields: dict[str, Any] = {
        "boxes": boxes,
        "scores": torch.tensor([a["score"] for a in annotations], dtype=torch.float32),
        "labels": torch.tensor([a["category_id"] - 1 for a in annotations], dtype=torch.int64),
    }
    if annotations and "track_id" in annotations[0]:
        fields["track_ids"] = torch.tensor([a["track_id"] for a in annotations])
    if annotations and "segmentation" in annotations[0]:
        fields["masks"] = RLEMasks([a["segmentation"] for a in annotations], size)
    return Instances(size, **fields)


def category_names(job: Job, objects: int = 1) -> list[str]:
    from unipercept.structures import CategoryPrompt

    if job.task in CATEGORY_TASKS:
        return list(CategoryPrompt.parse(job.prompt or "").names)
    if job.task in EXPRESSION_TASKS:
        return [job.prompt or ""]
    return [f"object {i + 1}" for i in range(objects)]


def job_info(job: Job) -> dict[str, Any]:
    from unipercept import __version__

    return {"unipercept_version": __version__, **job.key()}


@dataclass(frozen=True)
class Written:
    """What a predictions file holds: its path and how many images and annotations."""

    path: Path
    images: int
    annotations: int


def write_predictions(
    path: Path,
    job: Job,
    names: Sequence[str],
    records: Iterable[dict[str, Any]],
    *,
    video: dict[str, Any] | None = None,
    tracks: list[dict[str, Any]] | None = None,
) -> Written:
    """Writes the COCO-style ``predictions.json`` (``info``, ``categories``, ``images``,
    ``annotations``; ``videos`` and ``tracks`` for a video) from per-image records, atomically.

    ``records`` (one per image or frame: ``file_name``, ``height``, ``width``, ... and its
    ``annotations``) is consumed once, one record at a time, and none is kept: the images go
    straight into the file and the annotations into a temporary spool file that is copied after
    them, so a video of any length is assembled in constant memory. The text is what
    ``json.dumps`` gives for the whole dictionary.
    """
    from unipercept.structures import rle_area

    images = annotations = 0
    with atomic_file(path) as out, tempfile.TemporaryFile("w+", dir=path.parent) as spool:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        out.write(f'{{"info": {json.dumps(job_info(job))}, ')
        out.write(f'"categories": {json.dumps(categories)}, "images": [')
        for image_id, record in enumerate(records, start=1):
            image = {k: v for k, v in record.items() if k != "annotations"}
            image["id"] = image_id
            if video is not None:
                image["video_id"] = 1
            out.write((", " if images else "") + json.dumps(image))
            images += 1
            for annotation in record["annotations"]:
                _, _, w, h = annotation["bbox"]
                if "segmentation" in annotation:
                    area = float(rle_area([annotation["segmentation"]])[0])
                else:
                    area = round(w * h, 2)
                entry = {
                    "id": annotations + 1,
                    "image_id": image_id,
                    "iscrowd": 0,
                    "area": area,
                    **annotation,
                }
                spool.write((", " if annotations else "") + json.dumps(entry))
                annotations += 1
        out.write('], "annotations": [')
        spool.seek(0)
        shutil.copyfileobj(spool, out)
        out.write("]")
        if video is not None:
            out.write(f', "videos": {json.dumps([{"id": 1, **video}])}')
        if tracks:
            out.write(f', "tracks": {json.dumps(tracks)}')
        out.write("}")
    return Written(path, images, annotations)


def track_summaries(summary: Any) -> list[dict[str, Any]] | None:
    """``tracks`` of a video's predictions from its session's :class:`VideoSummary`: each
    track's id, category and score (None when the session gives none)."""
    if summary is None or not summary.track_labels:
        return None
    return [
        {"track_id": t, "category_id": label + 1, "score": round(score, 5)}
        for t, (label, score) in sorted(summary.track_labels.items())
    ]
