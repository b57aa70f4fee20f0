"""``python -m unipercept.predict``: any of the ten tasks on your images and videos.

    python -m unipercept.predict --task det --prompt "cat. dog" --input photos/ --output out/
    python -m unipercept.predict --task rvos --prompt "the man in red" --input clip.mp4 \\
        --output out/ --save-video
    python -m unipercept.predict --task sot --box 10,20,50,80 --input clip.mp4 --output out/

``--input`` is an image, a folder of images, a glob pattern (quoted) or a video file. Image tasks
(det, insseg, rec, res) answer each image, or each frame of a video; video tasks (sot, vos, mot,
mots, vis, rvos) follow the objects through the frames of one video (a video file, or a folder
or glob of frames).

The output folder gets ``predictions.json``, COCO style (``images``, ``categories``,
``annotations`` with ``bbox`` x,y,w,h, ``score``, RLE ``segmentation`` for mask tasks,
``track_id`` for video tasks; ``videos`` and ``tracks`` for video tasks), and overlays:
``overlays/<name>.png`` per image, ``<video>.overlay.mp4`` per video with ``--save-video``.
Work streams frame by frame; finished images and frames are kept under ``.unipercept-job/``, so
running the same command again after an interruption resumes where it stopped (a video task
from its last saved session state). ``predictions.json`` appears, atomically, when all is done.

Bad input (a missing path, an unreadable image or video, an empty prompt, a box outside the
frame, a mask of the wrong size) exits with code 2 and one line, leaving no output behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unipercept.modeling.unipercept import UniPercept

logger = logging.getLogger("unipercept.predict")

IMAGE_TASKS = ("det", "insseg", "rec", "res")
VIDEO_TASKS = ("sot", "vos", "mot", "mots", "vis", "rvos")
CATEGORY_TASKS = ("det", "insseg", "mot", "mots", "vis")
EXPRESSION_TASKS = ("rec", "res", "rvos")
ANNOTATION_TASKS = ("sot", "vos")
MASK_TASKS = ("insseg", "res", "vos", "mots", "vis", "rvos")
PREDICTIONS = "predictions.json"
JOB_DIR = ".unipercept-job"
SNAPSHOT_EVERY = 25


class InputError(ValueError):
    """Input the job cannot use (reported as one line, exit code 2)."""


@dataclass(frozen=True)
class Job:
    """One predict command's arguments, as they identify the job for resuming."""

    task: str
    input: str
    prompt: str | None = None
    box: tuple[float, float, float, float] | None = None
    mask: str | None = None
    checkpoint: str = "unipercept-tiny"
    score_threshold: float | None = None

    def key(self) -> dict[str, Any]:
        """The arguments as JSON data (what ``job.json`` holds)."""
        return json.loads(json.dumps(asdict(self)))


# --- inputs -------------------------------------------------------------------------------------


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _image_files(path: str) -> list[Path] | None:
    """The image files of an image, a folder or a pattern (None for a video file)."""
    from unipercept.data.video import IMAGE_SUFFIXES, image_files

    candidate = Path(path)
    if candidate.is_file():
        return [candidate] if candidate.suffix.lower() in IMAGE_SUFFIXES else None
    if not candidate.is_dir() and not _is_pattern(path):
        raise InputError(f"--input {path}: no such file, folder or pattern")
    files = image_files(path)
    if not files:
        what = "the folder holds" if candidate.is_dir() else "the pattern matches"
        raise InputError(f"--input {path}: {what} no image file (jpg, png, bmp, webp)")
    return files


def _check_images(files: Sequence[Path]) -> list[tuple[int, int]]:
    """(height, width) of every image, read from its header (fails early on a non-image)."""
    from unipercept.data.io import image_size

    sizes = []
    for file in files:
        try:
            sizes.append(image_size(file))
        except (ValueError, OSError) as error:
            raise InputError(f"--input: {error}") from None
    return sizes


def _open_video(path: str):
    from unipercept.data.video import open_frames

    try:
        return open_frames(path)
    except (ValueError, OSError) as error:
        raise InputError(f"--input {path}: {error}") from None


def _first_frame(path: str):
    from unipercept.data.datasets.base import DatasetError

    source = _open_video(path)
    try:
        for _, frame in source:
            return frame
    except DatasetError as error:
        raise InputError(f"--input: {error}") from None
    finally:
        source.close()
    raise InputError(f"--input {path}: the video has no frame")


def _parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers x,y,w,h (pixels)") from None
    if not all(map(lambda v: v == v and abs(v) != float("inf"), (x, y, w, h))):
        raise InputError(f"--box {text!r}: expected finite numbers")
    if w <= 0 or h <= 0:
        raise InputError(f"--box {text!r}: width and height must be positive")
    return x, y, w, h


def _annotation_prompts(job: Job, first_frame):
    """The first frame's AnnotationPrompt(s) from --box or --mask."""
    import numpy as np
    import torch

    from unipercept.structures import AnnotationPrompt

    height, width = first_frame.shape[1:]
    if job.box is not None:
        x, y, w, h = job.box
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise InputError(
                f"--box {x:g},{y:g},{w:g},{h:g} is outside the first frame ({width}x{height})"
            )
        return [AnnotationPrompt(first_frame, box=[x, y, x + w, y + h])]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(job.mask) as image:
            array = np.array(image.convert("L") if image.mode not in ("P", "L", "1") else image)
    except FileNotFoundError:
        raise InputError(f"--mask {job.mask}: file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"--mask {job.mask}: cannot be read as an image ({error})") from None
    if array.shape[:2] != (height, width):
        raise InputError(
            f"--mask {job.mask} is {array.shape[1]}x{array.shape[0]}, the first frame "
            f"{width}x{height}"
        )
    values = [int(v) for v in np.unique(array) if v != 0]
    if not values:
        raise InputError(f"--mask {job.mask}: the mask is empty (all zero)")
    # 255 is DAVIS's "void" beside object indices, and the object in a 0/255 binary mask.
    objects = [v for v in values if v != 255] or values
    if job.task == "sot" and len(objects) > 1:
        raise InputError(
            f"--mask {job.mask}: sot follows one target, the mask has {len(objects)} objects "
            "(use --task vos)"
        )
    return [
        AnnotationPrompt(first_frame, mask=torch.from_numpy(array == value)) for value in objects
    ]


# --- results as JSON ----------------------------------------------------------------------------


def _annotations(instances, with_masks: bool) -> list[dict[str, Any]]:
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


def _instances_from_record(record: dict[str, Any]):
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


def _category_names(job: Job, objects: int = 1) -> list[str]:
    from unipercept.structures import CategoryPrompt

    if job.task in CATEGORY_TASKS:
        return list(CategoryPrompt.parse(job.prompt or "").names)
    if job.task in EXPRESSION_TASKS:
        return [job.prompt or ""]
    return [f"object {i + 1}" for i in range(objects)]


# --- the job folder -----------------------------------------------------------------------------


class JobFolder:
    """The output folder and its hidden job state (``.unipercept-job/``)."""

    def __init__(self, output: Path, job: Job) -> None:
        self.output = output
        self.state = output / JOB_DIR
        self.job = job
        self.created: list[Path] = []  # what this run made, removed again on bad input

    def prepare(self, overwrite: bool) -> bool:
        """Creates or checks the folders; True when an unfinished run of this job is resumed."""
        from unipercept.data.io import write_text_atomic

        if self.output.exists() and not self.output.is_dir():
            raise InputError(f"--output {self.output} is a file, not a folder")
        job_file = self.state / "job.json"
        if job_file.is_file():
            saved = json.loads(job_file.read_text(encoding="utf-8"))
            if saved == self.job.key() and not overwrite:
                logger.info("resuming the unfinished job in %s", self.output)
                return True
            if not overwrite:
                raise InputError(
                    f"--output {self.output} holds an unfinished job with other arguments "
                    f"({job_file}); rerun that command to finish it, or pass --overwrite"
                )
            shutil.rmtree(self.state)
        if (self.output / PREDICTIONS).is_file() and not overwrite:
            raise InputError(
                f"--output {self.output} already holds {PREDICTIONS}; pass --overwrite to "
                "replace it, or choose another folder"
            )
        if not self.output.exists():
            self.output.mkdir(parents=True)
            self.created.append(self.output)
        self.state.mkdir(exist_ok=True)
        if self.output not in self.created:
            self.created.append(self.state)
        write_text_atomic(job_file, json.dumps(self.job.key(), indent=1))
        return False

    def discard(self) -> None:
        """Removes what this run created (bad input found after the start)."""
        for path in reversed(self.created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def finish(self, predictions: dict[str, Any]) -> Path:
        from unipercept.data.io import write_text_atomic

        path = write_text_atomic(self.output / PREDICTIONS, json.dumps(predictions))
        shutil.rmtree(self.state, ignore_errors=True)
        return path


# --- running ------------------------------------------------------------------------------------


def _progress(total: int | None, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="frame", dynamic_ncols=True)


def _info(job: Job) -> dict[str, Any]:
    from unipercept import __version__

    return {"unipercept_version": __version__, **job.key()}


def _overlay_name(files: Sequence[Path], index: int) -> str:
    stems = [f.stem for f in files]
    stem = files[index].stem
    return f"{stem}.png" if stems.count(stem) == 1 else f"{index:06d}_{stem}.png"


def _run_images(job: Job, folder: JobFolder, model, files: list[Path], names: list[str]) -> dict:
    """Image tasks on image files: each answered once, kept as items/<index>.json."""
    from unipercept.data.io import load_image, write_text_atomic
    from unipercept.visualize import draw_instances, save_png

    sizes = _check_images(files)
    items = folder.state / "items"
    items.mkdir(exist_ok=True)
    overlays = folder.output / "overlays"
    if not overlays.exists():
        overlays.mkdir()
        folder.created.append(overlays)
    answer = _image_answerer(job, model)
    done = {int(p.stem) for p in items.glob("*.json")}
    for index in sorted(done):
        saved = json.loads((items / f"{index:06d}.json").read_text(encoding="utf-8"))
        if index >= len(files) or saved["file_name"] != str(files[index]):
            raise InputError(
                f"--input {job.input}: the images differ from those of the interrupted run in "
                f"{folder.output}; pass --overwrite to start over"
            )
    with _progress(len(files), job.task, initial=len(done)) as bar:
        for index, file in enumerate(files):
            if index in done:
                continue
            try:
                image = load_image(file)
            except ValueError as error:
                raise InputError(f"--input: {error}") from None
            found = answer(image)
            record = {
                "file_name": str(file),
                "height": sizes[index][0],
                "width": sizes[index][1],
                "annotations": _annotations(found, job.task in MASK_TASKS),
            }
            save_png(
                draw_instances(image, found, names=names), overlays / _overlay_name(files, index)
            )
            write_text_atomic(items / f"{index:06d}.json", json.dumps(record))
            bar.update(1)
    records = [json.loads((items / f"{i:06d}.json").read_text()) for i in range(len(files))]
    return _coco(job, names, records)


def _coco(
    job: Job,
    names: list[str],
    records: list[dict[str, Any]],
    video: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from unipercept.structures import rle_area

    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        image = {k: v for k, v in record.items() if k != "annotations"}
        image["id"] = image_id
        if video is not None:
            image["video_id"] = 1
        images.append(image)
        for annotation in record["annotations"]:
            _, _, w, h = annotation["bbox"]
            if "segmentation" in annotation:
                area = float(rle_area([annotation["segmentation"]])[0])
            else:
                area = round(w * h, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "iscrowd": 0,
                    "area": area,
                    **annotation,
                }
            )
    result: dict[str, Any] = {
        "info": _info(job),
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "images": images,
        "annotations": annotations,
    }
    if video is not None:
        result["videos"] = [{"id": 1, **video}]
    return result


def _task_options(job: Job) -> dict[str, Any]:
    return {} if job.score_threshold is None else {"score_threshold": job.score_threshold}


def _image_answerer(job: Job, model: UniPercept):
    """image -> Instances for an image task, the prompt encoded once for all images."""
    from unipercept.api import Predictor, as_image, resolve_task

    task = resolve_task(job.task, **_task_options(job))
    predictor = Predictor(model, preprocess=model.default_preprocess())
    embedding = predictor.encode(job.prompt, task)
    return lambda image: predictor.predict(as_image(image), embedding, task=task)


def _read_lines(path: Path, count: int | None = None) -> list[dict[str, Any]]:
    """The finished records of a JSON-lines file: the first ``count``, or every complete one.
    The file is cut to them (a line half-written when the job was killed is dropped)."""
    if not path.is_file():
        if count:
            raise InputError(f"{path} is missing: delete {path.parent} to start the job over")
        return []
    records = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if count is not None and len(records) == count:
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if count is not None and len(records) < count:
        raise InputError(f"{path} holds fewer frames than its snapshot; delete {path.parent}")
    with open(path, "w", encoding="utf-8") as file:
        file.write("".join(json.dumps(record) + "\n" for record in records))
    return records


def _run_video(
    job: Job,
    folder: JobFolder,
    model,
    frames_path: str,
    names: list[str],
    *,
    image_task: bool,
    annotations: list | None = None,
    snapshot_every: int = SNAPSHOT_EVERY,
) -> dict[str, Any]:
    """A video (file, folder or pattern of frames): a session for a video task, or each frame
    answered alone for an image task. ``annotations``: sot/vos's first-frame prompts. Returns
    the predictions."""
    from unipercept.data.datasets.base import DatasetError
    from unipercept.tasks.snapshot import load_snapshot, save_snapshot

    source = _open_video(frames_path)
    info = source.info
    lines_path = folder.state / "frames.jsonl"
    snapshot_path = folder.state / "session.pt"
    options = _task_options(job)
    session = None
    summary = None
    done = 0
    frames_iter = iter(source)
    try:
        if not image_task:
            try:
                first_index, first = next(frames_iter)
            except StopIteration:
                raise InputError(f"--input {frames_path}: the video has no frame") from None
            if job.task in ANNOTATION_TASKS:
                prompt = annotations
                names[:] = _category_names(job, len(prompt))
            else:
                prompt = job.prompt
            session = model.start(job.task, prompt, **options)
            pending = [(first_index, first)]
            if snapshot_path.is_file():
                extra = load_snapshot(snapshot_path, session)
                done = int(extra["frames"])
            records = _read_lines(lines_path, done)
        else:
            answer = _image_answerer(job, model)
            pending = []
            records = _read_lines(lines_path)
            done = len(records)

        def stream() -> Iterator[tuple[int, Any]]:
            yield from pending
            yield from frames_iter

        with (
            open(lines_path, "a", encoding="utf-8") as lines,
            _progress(info.num_frames, job.task, initial=done) as bar,
        ):
            stepping = False  # a session interrupted inside step() may be half-updated
            try:
                for index, frame in stream():
                    if index < done:
                        continue
                    if session is not None:
                        stepping = True
                        found = session.step(frame)
                        stepping = False
                    else:
                        found = answer(frame)
                    record = {
                        "file_name": f"{Path(frames_path).name}#{index}",
                        "frame_index": index,
                        "height": int(frame.shape[1]),
                        "width": int(frame.shape[2]),
                        "annotations": _annotations(found, job.task in MASK_TASKS),
                    }
                    lines.write(json.dumps(record) + "\n")
                    records.append(record)
                    done += 1
                    bar.update(1)
                    if session is not None and done % snapshot_every == 0:
                        lines.flush()
                        os.fsync(lines.fileno())
                        save_snapshot(snapshot_path, session, {"frames": done})
            except KeyboardInterrupt:
                # Between frames the session is whole and is saved; inside a step it is not,
                # and the last periodic snapshot stands (the frames after it are redone).
                if session is not None and not stepping:
                    lines.flush()
                    os.fsync(lines.fileno())
                    save_snapshot(snapshot_path, session, {"frames": done})
                raise
        if session is not None:
            summary = session.close()
    except DatasetError as error:
        raise InputError(f"--input: {error}") from None
    finally:
        source.close()
    video = {"file_name": frames_path, "length": done, "height": info.height, "width": info.width}
    if info.fps:
        video["fps"] = info.fps
    predictions = _coco(job, names, records, video=video)
    if summary is not None and summary.track_labels:
        predictions["tracks"] = [
            {"track_id": t, "category_id": label + 1, "score": round(score, 5)}
            for t, (label, score) in sorted(summary.track_labels.items())
        ]
    return predictions


def render_video(
    frames_path: str, predictions: dict[str, Any], names: Sequence[str], out: Path
) -> Path:
    """Draws the predictions on the video's frames into an MP4 (colours per track id)."""
    from unipercept.data.video import VideoWriter
    from unipercept.visualize import draw_instances

    source = _open_video(frames_path)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in predictions["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    info = source.info
    images = predictions["images"]
    with source, VideoWriter(out, fps=info.fps or 10.0, width=info.width, height=info.height) as w:
        for index, frame in source:
            if index >= len(images):
                break
            record = {**images[index], "annotations": by_image.get(images[index]["id"], [])}
            w.write(draw_instances(frame, _instances_from_record(record), names=names))
    return out


def _device(text: str):
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"--device {text!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {text}: CUDA is not available on this machine")
    return device


def validate(job: Job) -> None:
    """Checks the prompt arguments against the task (before anything is loaded or written)."""
    if job.task not in IMAGE_TASKS + VIDEO_TASKS:
        raise InputError(
            f"--task {job.task!r}: expected one of {', '.join(IMAGE_TASKS + VIDEO_TASKS)}"
        )
    if job.task in ANNOTATION_TASKS:
        if job.prompt is not None:
            raise InputError(f"--task {job.task} takes --box or --mask, not --prompt")
        if (job.box is None) == (job.mask is None):
            raise InputError(f"--task {job.task} needs exactly one of --box x,y,w,h or --mask PNG")
        return
    if job.box is not None or job.mask is not None:
        raise InputError(f"--task {job.task} takes --prompt, not --box or --mask")
    if job.prompt is None or not job.prompt.strip():
        kind = 'category names ("cat. dog")' if job.task in CATEGORY_TASKS else "an expression"
        raise InputError(f"--task {job.task} needs --prompt with {kind}; it is empty")
    if job.task in CATEGORY_TASKS:
        from unipercept.structures import CategoryPrompt

        try:
            CategoryPrompt.parse(job.prompt)
        except ValueError:
            raise InputError(f"--prompt {job.prompt!r}: no category name in it") from None
    if job.score_threshold is not None and job.task in ("rec", "res", "rvos"):
        raise InputError(f"--score-threshold does not apply to {job.task} (one answer per frame)")


def run(
    job: Job,
    output: Path,
    *,
    device: str = "auto",
    save_video: bool = False,
    overwrite: bool = False,
    snapshot_every: int = SNAPSHOT_EVERY,
    model: UniPercept | None = None,
) -> Path:
    """Runs a predict job into ``output``; returns the path of ``predictions.json``.

    ``model`` is a model already loaded (for several jobs in one process); by default
    ``job.checkpoint`` is loaded onto ``device``.

    Raises:
        InputError: bad input (nothing this run wrote is left behind).
        KeyboardInterrupt: interrupted; the finished work stays for a rerun to resume.
    """
    from unipercept.modeling.pretrained import PretrainedError, load_model

    validate(job)
    files = None if job.task in VIDEO_TASKS else _image_files(job.input)
    annotations = None
    if files is not None:
        _check_images(files)
    elif job.task in ANNOTATION_TASKS:  # --box / --mask checked against the first frame
        annotations = _annotation_prompts(job, _first_frame(job.input))
    else:
        _open_video(job.input).close()
    if model is None:
        torch_device = _device(device)
        try:
            model = load_model(job.checkpoint, device=torch_device)
        except (PretrainedError, OSError) as error:
            raise InputError(f"--checkpoint: {error}") from None

    folder = JobFolder(output, job)
    folder.prepare(overwrite)
    names = _category_names(job)
    try:
        if files is not None:
            predictions = _run_images(job, folder, model, files, names)
            video_out = None
        else:
            predictions = _run_video(
                job,
                folder,
                model,
                job.input,
                names,
                image_task=job.task in IMAGE_TASKS,
                annotations=annotations,
                snapshot_every=snapshot_every,
            )
            stem = "frames" if _is_pattern(job.input) else Path(job.input.rstrip("/")).stem
            video_out = folder.output / f"{stem}.overlay.mp4"
        if save_video and video_out is not None:
            render_video(job.input, predictions, names, video_out)
    except InputError:
        folder.discard()
        raise
    return folder.finish(predictions)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        logger.error("error: %s (see --help)", message)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m unipercept.predict",
        description="Run one of the ten tasks on images or a video; writes predictions.json "
        "(COCO style, RLE masks, track ids) and overlays.",
    )
    parser.add_argument("--task", required=True, choices=IMAGE_TASKS + VIDEO_TASKS)
    parser.add_argument("--input", required=True, help="image, folder, glob pattern or video")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    parser.add_argument("--prompt", help='category names ("cat. dog") or an expression')
    parser.add_argument("--box", help="sot/vos: the target's first-frame box x,y,w,h (pixels)")
    parser.add_argument(
        "--mask", help="sot/vos: first-frame mask PNG (non-zero = object; palette ids = objects)"
    )
    parser.add_argument(
        "--checkpoint",
        default="unipercept-tiny",
        help="a bundled model's name or a save_pretrained folder (default: unipercept-tiny)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--save-video", action="store_true", help="also write <video>.overlay.mp4 for a video"
    )
    parser.add_argument("--score-threshold", type=float, help="keep results at least this sure")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier predictions in --output"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0 done, 2 bad input, 130 interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, reported by _Parser)
        return int(exit_.code or 0)
    try:
        box = _parse_box(args.box) if args.box is not None else None
        job = Job(
            task=args.task,
            input=args.input,
            prompt=args.prompt,
            box=box,
            mask=args.mask,
            checkpoint=args.checkpoint,
            score_threshold=args.score_threshold,
        )
        path = run(
            job,
            args.output,
            device=args.device,
            save_video=args.save_video,
            overwrite=args.overwrite,
        )
    except InputError as error:
        logger.error("error: %s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: run the same command again to resume")
        return 130
    predictions = json.loads(path.read_text(encoding="utf-8"))
    sys.stdout.write(
        f"{args.task}: {len(predictions['annotations'])} results on "
        f"{len(predictions['images'])} image(s) -> {path}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
