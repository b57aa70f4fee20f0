"""Image tasks on image files: the images answered a batch at a time, each kept as
``items/<index>.json`` as soon as it is answered, so that an interrupted job resumes image by
image whatever the batch size."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from unipercept.predict.frames import image_answerer, progress
from unipercept.predict.inputs import check_images
from unipercept.predict.job import MASK_TASKS, PREDICTIONS, InputError, Job, JobFolder
from unipercept.predict.records import Written, annotation_records, write_predictions

if TYPE_CHECKING:
    from unipercept.api import Predictor


def overlay_name(files: Sequence[Path], index: int) -> str:
    stems = [f.stem for f in files]
    stem = files[index].stem
    return f"{stem}.png" if stems.count(stem) == 1 else f"{index:06d}_{stem}.png"


def run_images(
    job: Job,
    folder: JobFolder,
    predictor: Predictor,
    files: list[Path],
    names: list[str],
    *,
    batch_size: int = 1,
) -> Written:
    """Answers the image files not answered yet, ``batch_size`` per forward pass; writes an
    overlay per image and, at the end, ``predictions.json``."""
    from unipercept.data.io import load_image, write_text_atomic
    from unipercept.visualize import draw_instances, save_png

    sizes = check_images(files)
    items = folder.state / "items"
    items.mkdir(exist_ok=True)
    overlays = folder.make_dir("overlays")
    answer = image_answerer(job, predictor)
    done = {int(p.stem) for p in items.glob("*.json")}
    for index in sorted(done):
        saved = json.loads((items / f"{index:06d}.json").read_text(encoding="utf-8"))
        if index >= len(files) or saved["file_name"] != str(files[index]):
            raise InputError(
                f"--input {job.input}: the images differ from those of the interrupted run in "
                f"{folder.output}; pass --overwrite to start over"
            )
    pending = [index for index in range(len(files)) if index not in done]
    with progress(len(files), job.task, initial=len(done), unit="image") as bar:
        for first in range(0, len(pending), batch_size):
            chunk = pending[first : first + batch_size]
            images = []
            for index in chunk:
                try:
                    images.append(load_image(files[index]))
                except ValueError as error:
                    raise InputError(f"--input: {error}") from None
            for index, image, found in zip(chunk, images, answer(images), strict=True):
                record = {
                    "file_name": str(files[index]),
                    "height": sizes[index][0],
                    "width": sizes[index][1],
                    "annotations": annotation_records(found, job.task in MASK_TASKS),
                }
                overlay = overlays / overlay_name(files, index)
                save_png(draw_instances(image, found, names=names), overlay)
                write_text_atomic(items / f"{index:06d}.json", json.dumps(record))
                bar.update(1)
    records = (
        json.loads((items / f"{index:06d}.json").read_text(encoding="utf-8"))
        for index in range(len(files))
    )
    return write_predictions(folder.output / PREDICTIONS, job, names, records)
