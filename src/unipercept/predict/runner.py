"""Running a job: image tasks image by image, video tasks through a session, frame by frame,
with the finished work kept for resuming."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.predict.inputs import (
    annotation_prompts,
    check_images,
    first_frame,
    image_inputs,
    is_pattern,
    open_video,
    parse_device,
)
from unipercept.predict.job import (
    ANNOTATION_TASKS,
    IMAGE_TASKS,
    MASK_TASKS,
    SNAPSHOT_EVERY,
    VIDEO_TASKS,
    InputError,
    Job,
    JobFolder,
    read_lines,
    task_options,
    validate,
)
from unipercept.predict.records import (
    annotation_records,
    category_names,
    coco_predictions,
    instances_from_record,
)

if TYPE_CHECKING:
    from unipercept.modeling.unipercept import UniPercept


def _progress(total: int | None, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="frame", dynamic_ncols=True)


def _overlay_name(files: Sequence[Path], index: int) -> str:
    stems = [f.stem for f in files]
    stem = files[index].stem
    return f"{stem}.png" if stems.count(stem) == 1 else f"{index:06d}_{stem}.png"


def _prompt_flag(job: Job) -> str:
    if job.task not in ANNOTATION_TASKS:
        return "--prompt"
    return "--box" if job.box is not None else "--mask"


def _image_answerer(job: Job, model: UniPercept):
    """image -> Instances for an image task, the prompt encoded once for all images."""
    from unipercept.api import Predictor, as_image, resolve_task

    task = resolve_task(job.task, model=model, **task_options(job))
    predictor = Predictor(model, preprocess=model.default_preprocess())
    try:
        embedding = predictor.encode(job.prompt, task)
    except ValueError as error:  # e.g. more tokens than the text encoder takes
        raise InputError(f"{_prompt_flag(job)}: {error}") from None
    return lambda image: predictor.predict(as_image(image), embedding, task=task)


def _start_session(job: Job, model: UniPercept, prompt: Any, options: dict[str, Any]):
    # model.start resizes as the model's default_preprocess: a UNINEXT model at its video
    # resolution (video=True), a UniPercept at its one resolution.
    try:
        return model.start(job.task, prompt, **options)
    except ValueError as error:  # the prompt does not fit the model
        raise InputError(f"{_prompt_flag(job)}: {error}") from None


class _InterruptBetweenFrames:
    """Holds a Ctrl-C (SIGINT) that arrives while a frame is processed until the frame is
    done, so the session saved on interrupt is whole; a second Ctrl-C stops at once. Only in
    the main thread (where Python delivers signals); elsewhere it changes nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _InterruptBetweenFrames:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raises the held KeyboardInterrupt (call between frames)."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _run_images(job: Job, folder: JobFolder, model, files: list[Path], names: list[str]) -> dict:
    """Image tasks on image files: each answered once, kept as items/<index>.json."""
    from unipercept.data.io import load_image, write_text_atomic
    from unipercept.visualize import draw_instances, save_png

    sizes = check_images(files)
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
                "annotations": annotation_records(found, job.task in MASK_TASKS),
            }
            save_png(
                draw_instances(image, found, names=names), overlays / _overlay_name(files, index)
            )
            write_text_atomic(items / f"{index:06d}.json", json.dumps(record))
            bar.update(1)
    records = [json.loads((items / f"{i:06d}.json").read_text()) for i in range(len(files))]
    return coco_predictions(job, names, records)


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

    source = open_video(frames_path)
    info = source.info
    lines_path = folder.state / "frames.jsonl"
    snapshot_path = folder.state / "session.pt"
    options = task_options(job)
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
                names[:] = category_names(job, len(prompt))
            else:
                prompt = job.prompt
            session = _start_session(job, model, prompt, options)
            pending = [(first_index, first)]
            if snapshot_path.is_file():
                try:
                    done = int(load_snapshot(snapshot_path, session)["frames"])
                except (ValueError, KeyError, TypeError) as error:  # KeyError: no frames
                    raise InputError(
                        f"--output {folder.output}: the unfinished job's session snapshot is "
                        f"damaged ({error}); pass --overwrite to start over"
                    ) from None
            records = read_lines(lines_path, done)
        else:
            answer = _image_answerer(job, model)
            pending = []
            records = read_lines(lines_path)
            done = len(records)

        def stream() -> Iterator[tuple[int, Any]]:
            yield from pending
            yield from frames_iter

        with (
            open(lines_path, "a", encoding="utf-8") as lines,
            _progress(info.num_frames, job.task, initial=done) as bar,
            _InterruptBetweenFrames() as interrupt,
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
                        "annotations": annotation_records(found, job.task in MASK_TASKS),
                    }
                    lines.write(json.dumps(record) + "\n")
                    records.append(record)
                    done += 1
                    bar.update(1)
                    if session is not None and done % snapshot_every == 0:
                        lines.flush()
                        os.fsync(lines.fileno())
                        save_snapshot(snapshot_path, session, {"frames": done})
                    interrupt.check()  # a Ctrl-C held during this frame stops here
            except KeyboardInterrupt:
                # Between frames the session is whole and is saved; inside a step (a second
                # Ctrl-C, or one outside the main thread) it is not, and the last periodic
                # snapshot stands (the frames after it are redone).
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
    predictions = coco_predictions(job, names, records, video=video)
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

    source = open_video(frames_path)
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
            w.write(draw_instances(frame, instances_from_record(record), names=names))
    return out


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
        Exception: any other failure; finished work stays for a rerun, and a job that
            finished nothing leaves nothing behind.
    """
    from unipercept.export import load_model
    from unipercept.modeling.pretrained import PretrainedError
    from unipercept.offline import MissingWeightsError

    validate(job)
    files = None if job.task in VIDEO_TASKS else image_inputs(job.input)
    annotations = None
    if files is not None:
        check_images(files)
    elif job.task in ANNOTATION_TASKS:  # --box / --mask checked against the first frame
        annotations = annotation_prompts(job, first_frame(job.input))
    else:
        open_video(job.input).close()
    if model is None:
        torch_device = parse_device(device)
        try:
            model = load_model(job.checkpoint, device=torch_device)
        except (PretrainedError, OSError) as error:
            raise InputError(f"--checkpoint: {error}") from None
        except MissingWeightsError as error:
            raise InputError(str(error)) from None

    folder = JobFolder(output, job)
    folder.prepare(overwrite)
    names = category_names(job)
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
            stem = "frames" if is_pattern(job.input) else Path(job.input.rstrip("/")).stem
            video_out = folder.output / f"{stem}.overlay.mp4"
        if save_video and video_out is not None:
            render_video(job.input, predictions, names, video_out)
    except InputError:
        folder.discard()
        raise
    except Exception:
        if not folder.has_progress():  # nothing to resume: a rerun starts afresh
            folder.discard()
        raise
    return folder.finish(predictions)
