"""One video through a job: a session for a video task, or its frames answered in batches for an
image task. Each frame's record is appended to ``frames.jsonl`` as it comes (nothing per frame is
kept in memory); a session is saved every few frames so that an interrupted job resumes."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.predict.inputs import Video, open_video
from unipercept.predict.interrupt import InterruptBetweenFrames
from unipercept.predict.job import (
    ANNOTATION_TASKS,
    IMAGE_TASKS,
    MASK_TASKS,
    SNAPSHOT_EVERY,
    InputError,
    Job,
    cut_lines,
    task_options,
)
from unipercept.predict.records import annotation_records, instances_from_record, track_summaries

if TYPE_CHECKING:
    from unipercept.api import Predictor

LINES = "frames.jsonl"
SNAPSHOT = "session.pt"


@dataclass(frozen=True)
class FramesDone:
    """How one video's run ended.

    Attributes:
        frames: frames answered (the video's length in the predictions).
        tracks: the session's track summaries (``tracks`` of the predictions), or None.
        stopped: why a live source stopped before its end (Ctrl-C, a broken stream), or None.
    """

    frames: int
    tracks: list[dict[str, Any]] | None = None
    stopped: str | None = None


def progress(total: int | None, desc: str, initial: int = 0, unit: str = "frame"):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


def prompt_flag(job: Job) -> str:
    if job.task not in ANNOTATION_TASKS:
        return "--prompt"
    return "--box" if job.box is not None else "--mask"


def image_answerer(job: Job, predictor: Predictor) -> Callable[[Sequence[Any]], list[Any]]:
    """images -> one Instances each for an image task, the prompt encoded once for all and the
    images answered together (:meth:`Predictor.predict_batch`)."""
    from unipercept.api import resolve_task

    task = resolve_task(job.task, model=predictor.model, **task_options(job))
    try:
        embedding = predictor.encode(job.prompt, task)
    except ValueError as error:  # e.g. more tokens than the text encoder takes
        raise InputError(f"{prompt_flag(job)}: {error}") from None
    return lambda images: predictor.predict_batch(list(images), embedding, task=task)


def start_session(job: Job, predictor: Predictor, prompt: Any):
    try:
        return predictor.start(job.task, prompt, **task_options(job))
    except ValueError as error:  # the prompt does not fit the model
        raise InputError(f"{prompt_flag(job)}: {error}") from None


def run_frames(
    job: Job,
    predictor: Predictor,
    video: Video,
    state: Path,
    *,
    names: Sequence[str],
    prompt: Any = None,
    live: bool = False,
    batch_size: int = 1,
    snapshot_every: int = SNAPSHOT_EVERY,
    on_frame: Callable[[int], None] | None = None,
    overlay: Path | None = None,
    desc: str | None = None,
) -> FramesDone:
    """Runs the job over ``video`` (closed at the end), its records appended to
    ``state/frames.jsonl`` and, for a video task, its session saved to ``state/session.pt``.

    A rerun resumes after the frames already in ``frames.jsonl`` (an image task) or from the
    saved session (a video task). A live source is never resumed: nothing is saved, Ctrl-C
    ends it cleanly (the frames answered so far are kept) and so does a stream that breaks
    after its first frame.

    Args:
        prompt: a video task's prompt (sot/vos: the first frame's AnnotationPrompts).
        batch_size: an image task's frames per forward pass.
        on_frame: called with the number of frames done after each frame.
        overlay: a live source's overlay video, drawn as the frames come (a file's is drawn
            afterwards from the records, by :func:`render_video`).

    Raises:
        InputError: a damaged video; KeyboardInterrupt: Ctrl-C on a file (the session is saved
            when the frame was whole).
    """
    from unipercept.data.datasets.base import DatasetError
    from unipercept.tasks.snapshot import load_snapshot, save_snapshot

    lines_path, snapshot_path = state / LINES, state / SNAPSHOT
    session = answer = None
    done = 0
    try:
        if job.task in IMAGE_TASKS:
            answer = image_answerer(job, predictor)
            done = cut_lines(lines_path)
        else:
            video.first_frame()  # an empty video is bad input before the session starts
            session = start_session(job, predictor, prompt)
            if not live and snapshot_path.is_file():
                try:
                    done = int(load_snapshot(snapshot_path, session)["frames"])
                except (ValueError, KeyError, TypeError) as error:  # KeyError: no frames
                    raise InputError(
                        f"--output: the unfinished job's session snapshot {snapshot_path} is "
                        f"damaged ({error}); pass --overwrite to start over"
                    ) from None
            done = cut_lines(lines_path, done)
        limit = job.max_frames
        total = video.info.num_frames
        if limit is not None:
            total = limit if total is None else min(total, limit)
        stopped = None
        with contextlib.ExitStack() as stack:
            lines = stack.enter_context(open(lines_path, "a", encoding="utf-8"))
            bar = stack.enter_context(progress(total, desc or job.task, initial=done))
            interrupt = stack.enter_context(InterruptBetweenFrames())
            writer = (
                None if overlay is None else stack.enter_context(_overlay_writer(video, overlay))
            )

            def save() -> None:
                lines.flush()
                os.fsync(lines.fileno())
                save_snapshot(snapshot_path, session, {"frames": done})

            def emit(index: int, frame: Any, found: Any) -> None:
                nonlocal done
                record = {
                    "file_name": f"{Path(video.location).name}#{index}",
                    "frame_index": index,
                    "height": int(frame.shape[1]),
                    "width": int(frame.shape[2]),
                    "annotations": annotation_records(found, job.task in MASK_TASKS),
                }
                lines.write(json.dumps(record) + "\n")
                if writer is not None:
                    from unipercept.visualize import draw_instances

                    writer.write(draw_instances(frame, found, names=names))
                done += 1
                bar.update(1)
                if session is not None and not live and done % snapshot_every == 0:
                    save()
                if on_frame is not None:
                    on_frame(done)

            def answer_batch() -> None:
                found = answer([frame for _, frame in batch])
                for (index, frame), instances in zip(batch, found, strict=True):
                    emit(index, frame, instances)
                batch.clear()

            batch: list[tuple[int, Any]] = []
            frames = iter(video)
            stepping = False  # a session interrupted inside step() may be half-updated
            try:
                while limit is None or done + len(batch) < limit:
                    if interrupt.requested:  # Ctrl-C during the last frame
                        break
                    try:
                        index, frame = next(frames)
                    except StopIteration:
                        break
                    except DatasetError as error:
                        if not live or done == 0:
                            raise
                        stopped = f"the stream broke: {error}"
                        break
                    if interrupt.requested:  # Ctrl-C while reading: this frame is not begun
                        break
                    if index < done:
                        continue
                    if session is None:
                        batch.append((index, frame))
                        if len(batch) >= batch_size:
                            answer_batch()
                        continue
                    stepping = True
                    found = session.step(frame)
                    stepping = False
                    emit(index, frame, found)
                if interrupt.requested:
                    if not live:
                        raise KeyboardInterrupt
                    stopped = "Ctrl-C"
                if batch:  # the last frames read, fewer than a batch
                    answer_batch()
            except KeyboardInterrupt:
                # Between frames the session is whole and is saved; inside a step (a second
                # Ctrl-C, or one outside the main thread) it is not, and the last periodic
                # snapshot stands (the frames after it are redone).
                if session is not None and not stepping and not live:
                    save()
                raise
        summary = None if session is None else session.close()
    except DatasetError as error:
        raise InputError(f"--input: {error}") from None
    finally:
        video.close()
    return FramesDone(done, track_summaries(summary), stopped)


def _overlay_writer(video: Video, out: Path):
    from unipercept.data.video import VideoWriter

    info = video.info
    return VideoWriter(out, fps=info.fps or 25.0, width=info.width, height=info.height)


def render_video(
    frames_path: str, records: Iterable[dict[str, Any]], names: Sequence[str], out: Path
) -> Path:
    """Draws a video's per-frame records (``frames.jsonl``'s, read one at a time) on its frames
    into an MP4 (colours per track id); stops at the shorter of the two."""
    from unipercept.data.video import VideoWriter
    from unipercept.visualize import draw_instances

    source = open_video(frames_path)
    info = source.info
    with source, VideoWriter(out, fps=info.fps or 10.0, width=info.width, height=info.height) as w:
        for (_, frame), record in zip(source, records, strict=False):
            w.write(draw_instances(frame, instances_from_record(record), names=names))
    return out
