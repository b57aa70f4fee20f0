"""Running a job: its inputs checked, the model loaded, then image files, one video (a file, a
folder or pattern of frames, a live source) or a folder of videos, with the finished work kept
for resuming and ``predictions.json`` written last."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.predict.frames import LINES, SNAPSHOT, FramesDone, render_video, run_frames
from unipercept.predict.images import run_images
from unipercept.predict.inputs import (
    Video,
    annotation_prompts,
    check_images,
    image_inputs,
    open_video,
    parse_device,
    video_inputs,
    video_name,
)
from unipercept.predict.job import (
    ANNOTATION_TASKS,
    IMAGE_TASKS,
    PREDICTIONS,
    SNAPSHOT_EVERY,
    VIDEO_TASKS,
    InputError,
    Job,
    JobFolder,
    iter_lines,
    validate,
)
from unipercept.predict.records import category_names, job_info, write_predictions

if TYPE_CHECKING:
    from unipercept.api import Predictor
    from unipercept.modeling.unipercept import UniPercept

VIDEOS_DIR = "predictions"  # a folder of videos: predictions/<video>.json


@dataclass(frozen=True)
class Outcome:
    """What a finished job wrote.

    Attributes:
        path: ``predictions.json`` (for a folder of videos, the index of ``predictions/``).
        images: images or frames answered.
        annotations: results over all of them.
        videos: the number of videos of a folder of videos, else None.
        stopped: why a live source stopped early ("Ctrl-C", a broken stream), else None.
    """

    path: Path
    images: int
    annotations: int
    videos: int | None = None
    stopped: str | None = None


def run(
    job: Job,
    output: Path,
    *,
    device: str = "auto",
    save_video: bool = False,
    overwrite: bool = False,
    snapshot_every: int = SNAPSHOT_EVERY,
    model: UniPercept | None = None,
    batch_size: int = 1,
    on_frame: Callable[[int], None] | None = None,
) -> Path:
    """Runs a predict job into ``output``; returns the path of ``predictions.json``.

    ``model`` is a model already loaded (for several jobs in one process); by default
    ``job.checkpoint`` is loaded onto ``device``. ``batch_size``: images (or an image task's
    video frames) per forward pass. ``on_frame``: called with the frames done so far after
    each frame of a video.

    Raises:
        InputError: bad input (nothing this run wrote is left behind).
        KeyboardInterrupt: interrupted; the finished work stays for a rerun to resume, and a
            job that finished nothing leaves nothing behind (a live source stops cleanly on the
            first Ctrl-C instead, and is never resumed).
        Exception: any other failure; finished work stays for a rerun, and a job that
            finished nothing leaves nothing behind.
    """
    return run_job(
        job,
        output,
        device=device,
        save_video=save_video,
        overwrite=overwrite,
        snapshot_every=snapshot_every,
        model=model,
        batch_size=batch_size,
        on_frame=on_frame,
    ).path


def run_job(
    job: Job,
    output: Path,
    *,
    device: str = "auto",
    save_video: bool = False,
    overwrite: bool = False,
    snapshot_every: int = SNAPSHOT_EVERY,
    model: UniPercept | None = None,
    batch_size: int = 1,
    on_frame: Callable[[int], None] | None = None,
) -> Outcome:
    """:func:`run`, returning what was written (the command line reports it)."""
    from unipercept.data.video import is_stream

    validate(job)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a whole number of at least 1, got {batch_size}")
    if batch_size > 1 and job.task in VIDEO_TASKS:
        raise InputError(
            f"--batch-size applies to the image tasks ({', '.join(IMAGE_TASKS)}); a {job.task} "
            "session steps through the frames one at a time"
        )
    live = is_stream(job.input)
    files = videos = video = annotations = None
    if not live and job.task in IMAGE_TASKS:
        files = image_inputs(job.input)  # None for a video file
    elif not live:
        videos = video_inputs(job.input)  # None for one video
    if files is not None:
        if job.max_frames is not None:
            raise InputError(
                f"--max-frames applies to a video or a live source; --input {job.input} is "
                "images (each is answered)"
            )
        check_images(files)
    elif videos is not None:
        if job.task in ANNOTATION_TASKS:
            raise InputError(
                f"--input {job.input} is a folder of {len(videos)} videos; {job.task} follows a "
                "target given in one video's first frame: give that video"
            )
        for _, location in videos:  # every header read before any work
            open_video(location).close()
    else:
        video = Video(job.input)
    try:
        if video is not None and job.task in ANNOTATION_TASKS:
            # --box / --mask checked against the first frame (which the session then starts on)
            annotations = annotation_prompts(job, video.first_frame())
        predictor = _predictor(job, model, device)
        outputs = [] if videos is None else [f"{VIDEOS_DIR}/{name}.json" for name, _ in videos]
        if save_video and files is None:
            named = [video_name(job.input)] if videos is None else [n for n, _ in videos]
            outputs += [f"{name}.overlay.mp4" for name in named]
        folder = JobFolder(output, job, resumable=not live, outputs=outputs)
        folder.prepare(overwrite)
    except BaseException:
        if video is not None:
            video.close()
        raise
    names = category_names(job, len(annotations or [None]))
    try:
        if files is not None:
            written = run_images(job, folder, predictor, files, names, batch_size=batch_size)
            outcome = Outcome(written.path, written.images, written.annotations)
        elif videos is not None:
            outcome = _run_videos(
                job,
                folder,
                predictor,
                videos,
                names,
                save_video=save_video,
                batch_size=batch_size,
                snapshot_every=snapshot_every,
                on_frame=on_frame,
            )
        else:
            assert video is not None
            outcome = _run_video(
                job,
                folder,
                predictor,
                video,
                names,
                prompt=annotations if annotations is not None else job.prompt,
                live=live,
                save_video=save_video,
                batch_size=batch_size,
                snapshot_every=snapshot_every,
                on_frame=on_frame,
            )
    except InputError:
        folder.discard()
        raise
    except BaseException:  # a failure, or Ctrl-C (KeyboardInterrupt)
        if not folder.has_progress():  # nothing to resume: a rerun starts afresh
            folder.discard()
        raise
    folder.finish()
    return outcome


def _predictor(job: Job, model: UniPercept | None, device: str) -> Predictor:
    """The job's predictor: ``model``, or the job's checkpoint loaded onto ``device``, at the
    job's precision. (Its default preprocessing is the model's own: for a UNINEXT model the
    image resolution for images and the video resolution for sessions.)"""
    from unipercept.api import Predictor
    from unipercept.export import load_model
    from unipercept.modeling.pretrained import PretrainedError
    from unipercept.offline import MissingWeightsError

    if model is None:
        torch_device = parse_device(device)
        try:
            model = load_model(job.checkpoint, device=torch_device)
        except (PretrainedError, OSError) as error:
            raise InputError(f"--checkpoint: {error}") from None
        except MissingWeightsError as error:
            raise InputError(str(error)) from None
    return Predictor(model, dtype=job.dtype)


def _video_entry(location: str, video: Video, done: FramesDone) -> dict[str, Any]:
    info = video.info
    entry = {"file_name": location, "length": done.frames, "height": info.height}
    entry["width"] = info.width
    if info.fps:
        entry["fps"] = info.fps
    return entry


def _run_video(
    job: Job,
    folder: JobFolder,
    predictor: Predictor,
    video: Video,
    names: list[str],
    *,
    prompt: Any,
    live: bool,
    save_video: bool,
    **options: Any,
) -> Outcome:
    """One video into ``predictions.json``, assembled from ``frames.jsonl`` one frame at a
    time (and its overlay video with ``save_video``)."""
    overlay = folder.output / f"{video_name(job.input)}.overlay.mp4" if save_video else None
    done = run_frames(
        job,
        predictor,
        video,
        folder.state,
        names=names,
        prompt=prompt,
        live=live,
        overlay=overlay if live else None,
        **options,
    )
    lines = folder.state / LINES
    if overlay is not None and not live:
        render_video(job.input, iter_lines(lines), names, overlay)
    written = write_predictions(
        folder.output / PREDICTIONS,
        job,
        names,
        iter_lines(lines),
        video=_video_entry(job.input, video, done),
        tracks=done.tracks,
    )
    return Outcome(written.path, written.images, written.annotations, stopped=done.stopped)


def _run_videos(
    job: Job,
    folder: JobFolder,
    predictor: Predictor,
    videos: list[tuple[str, str]],
    names: list[str],
    *,
    save_video: bool,
    **options: Any,
) -> Outcome:
    """A folder of videos: each into ``predictions/<name>.json`` as it finishes (a rerun skips
    the finished ones and resumes the one interrupted), then ``predictions.json``, their index.
    """
    from unipercept.data.io import write_text_atomic

    out = folder.make_dir(VIDEOS_DIR)
    entries = []
    for number, (name, location) in enumerate(videos, start=1):
        state = folder.state / "videos" / name
        finished = state / "done.json"
        if not finished.is_file():
            state.mkdir(parents=True, exist_ok=True)
            video = Video(location)
            desc = f"{job.task} {number}/{len(videos)} {name}"
            done = run_frames(
                job, predictor, video, state, names=names, prompt=job.prompt, desc=desc, **options
            )
            lines = state / LINES
            if save_video:
                overlay = folder.output / f"{name}.overlay.mp4"
                render_video(location, iter_lines(lines), names, overlay)
            written = write_predictions(
                out / f"{name}.json",
                job,
                names,
                iter_lines(lines),
                video=_video_entry(location, video, done),
                tracks=done.tracks,
            )
            entry = {
                "name": name,
                "file_name": location,
                "predictions": f"{VIDEOS_DIR}/{name}.json",
                "length": written.images,
                "annotations": written.annotations,
            }
            write_text_atomic(finished, json.dumps(entry))
            lines.unlink()
            (state / SNAPSHOT).unlink(missing_ok=True)
        entries.append({"id": number, **json.loads(finished.read_text(encoding="utf-8"))})
    index = {"info": job_info(job), "videos": entries}
    path = write_text_atomic(folder.output / PREDICTIONS, json.dumps(index, indent=1))
    return Outcome(
        path,
        images=sum(e["length"] for e in entries),
        annotations=sum(e["annotations"] for e in entries),
        videos=len(entries),
    )
