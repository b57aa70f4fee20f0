"""What identifies a predict job, its checks before any work, and its folder: the hidden job
state (``.unipercept-job/``) that lets an interrupted run resume."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("unipercept.predict")
IMAGE_TASKS = ("det", "insseg", "rec", "res")
VIDEO_TASKS = ("sot", "vos", "mot", "mots", "vis", "rvos")
CATEGORY_TASKS = ("det", "insseg", "mot", "mots", "vis")
EXPRESSION_TASKS = ("rec", "res", "rvos")
ANNOTATION_TASKS = ("sot", "vos")
MASK_TASKS = ("insseg", "res", "vos", "mots", "vis", "rvos")
DTYPES = ("float32", "bfloat16", "float16")  # unipercept.precision.DTYPE_CHOICES, torch unloaded
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
    dtype: str = "float32"
    max_frames: int | None = None

    def __post_init__(self) -> None:
        # "bf16" and "bfloat16" are one job: the identity holds the dtype's full name.
        from unipercept.precision import dtype_name, parse_dtype

        with contextlib.suppress(ValueError):  # validate() reports a bad name
            object.__setattr__(self, "dtype", dtype_name(parse_dtype(self.dtype)))

    def key(self) -> dict[str, Any]:
        """The arguments as JSON data (what ``job.json`` holds)."""
        return json.loads(json.dumps(asdict(self)))


# Options added since job.json was first written, with the value an older job.json means.
_LATER_OPTIONS = {"dtype": "float32", "max_frames": None}


def same_job(saved: Any, job: Job) -> bool:
    """Whether a ``job.json`` describes ``job`` (one written before an option existed means
    that option's default)."""
    return isinstance(saved, dict) and {**_LATER_OPTIONS, **saved} == job.key()


def validate(job: Job) -> None:
    """Checks the arguments against the task (before anything is loaded or written)."""
    if job.task not in IMAGE_TASKS + VIDEO_TASKS:
        raise InputError(
            f"--task {job.task!r}: expected one of {', '.join(IMAGE_TASKS + VIDEO_TASKS)}"
        )
    from unipercept.precision import parse_dtype

    try:
        parse_dtype(job.dtype)
    except ValueError:
        raise InputError(f"--dtype {job.dtype!r}: expected one of {', '.join(DTYPES)}") from None
    frames = job.max_frames
    if frames is not None and (
        isinstance(frames, bool) or not isinstance(frames, int) or frames < 1
    ):
        raise InputError(f"--max-frames must be a whole number of at least 1, got {frames}")
    if job.score_threshold is not None:
        if job.task in EXPRESSION_TASKS:
            raise InputError(
                f"--score-threshold does not apply to {job.task} (one answer per frame)"
            )
        from unipercept.tasks.base import check_fraction

        try:
            check_fraction("--score-threshold", job.score_threshold)
        except ValueError as error:
            raise InputError(str(error)) from None
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
    try:
        job.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell's locale could not decode
        raise InputError(
            f"--prompt {job.prompt!a}: not valid UTF-8 text (check the terminal's encoding)"
        ) from None
    if job.task in CATEGORY_TASKS:
        from unipercept.structures import CategoryPrompt

        try:
            CategoryPrompt.parse(job.prompt)
        except ValueError:
            raise InputError(f"--prompt {job.prompt!r}: no category name in it") from None


def task_options(job: Job) -> dict[str, Any]:
    """The task's options the job sets (``score_threshold``)."""
    return {} if job.score_threshold is None else {"score_threshold": job.score_threshold}


class JobFolder:
    """The output folder and its hidden job state (``.unipercept-job/``).

    Args:
        output: the output folder.
        job: the job it holds.
        resumable: False for a live source: an unfinished job there is never resumed.
        outputs: the files the job writes besides ``predictions.json`` (relative to
            ``output``), which a new job does not replace without ``overwrite``.
    """

    def __init__(
        self, output: Path, job: Job, *, resumable: bool = True, outputs: Sequence[str] = ()
    ) -> None:
        self.output = output
        self.state = output / JOB_DIR
        self.job = job
        self.resumable = resumable
        self.outputs = [PREDICTIONS, *outputs]
        self.created: list[Path] = []  # what this run made, removed again on bad input

    def prepare(self, overwrite: bool) -> bool:
        """Creates or checks the folders; True when an unfinished run of this job is resumed.

        Raises:
            InputError: ``--output`` is a file, cannot be created or written, holds a finished
                or another unfinished job, or an unfinished job on a live source (without
                ``overwrite``), or a damaged job state.
        """
        try:
            return self._prepare(overwrite)
        except OSError as error:
            self.discard()
            reason = error.strerror or str(error)
            raise InputError(f"--output {self.output}: cannot be written ({reason})") from None

    def _prepare(self, overwrite: bool) -> bool:
        from unipercept.data.io import write_text_atomic

        if self.output.exists() and not self.output.is_dir():
            raise InputError(f"--output {self.output} is a file, not a folder")
        job_file = self.state / "job.json"
        if job_file.is_file():
            try:
                saved = json.loads(job_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                saved = None
                if not overwrite:
                    raise InputError(
                        f"--output {self.output}: the unfinished job's {job_file} is damaged; "
                        "pass --overwrite to start over"
                    ) from None
            if not overwrite:
                if not same_job(saved, self.job):
                    raise InputError(
                        f"--output {self.output} holds an unfinished job with other arguments "
                        f"({job_file}); rerun that command to finish it, or pass --overwrite"
                    )
                if not self.resumable:
                    raise InputError(
                        f"--output {self.output} holds an unfinished job on the live source "
                        f"{self.job.input}, which cannot be resumed; pass --overwrite to start "
                        "over, or choose another folder"
                    )
                logger.info("resuming the unfinished job in %s", self.output)
                return True
            shutil.rmtree(self.state)
        if not overwrite:
            for name in self.outputs:
                if (self.output / name).is_file():
                    raise InputError(
                        f"--output {self.output} already holds {name}; pass --overwrite to "
                        "replace it, or choose another folder"
                    )
        if not self.output.exists():
            # The topmost folder this run creates, so that discard() leaves no empty parents.
            top = self.output
            while not top.parent.exists():
                top = top.parent
            self.output.mkdir(parents=True)
            self.created.append(top)
        self.state.mkdir(exist_ok=True)
        if not self.created:
            self.created.append(self.state)
        write_text_atomic(job_file, json.dumps(self.job.key(), indent=1))
        return False

    def make_dir(self, name: str) -> Path:
        """``output/name``, created (and then removed by :meth:`discard`) when missing."""
        path = self.output / name
        if not path.exists():
            path.mkdir()
            self.created.append(path)
        return path

    def has_progress(self) -> bool:
        """Whether finished images, frames or videos are kept for a rerun to resume."""
        return any(
            path.is_file() and path.stat().st_size > 0
            for pattern in ("items/*.json", "frames.jsonl", "videos/*/*")
            for path in self.state.glob(pattern)
        )

    def discard(self) -> None:
        """Removes what this run created (bad input found after the start, or a failure before
        any image or frame was finished)."""
        for path in reversed(self.created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def finish(self) -> Path:
        """Drops the job state once ``predictions.json`` is written; returns its path."""
        shutil.rmtree(self.state, ignore_errors=True)
        return self.output / PREDICTIONS


def cut_lines(path: Path, count: int | None = None) -> int:
    """Keeps the finished records of a JSON-lines file: the first ``count``, or every complete
    one; returns how many. The file is cut after them (a line half-written when the job was
    killed is dropped); the records are read one at a time, never all held.

    Raises:
        InputError: the file is missing or shorter than ``count`` records.
    """
    if not path.is_file():
        if count:
            raise InputError(f"{path} is missing: delete {path.parent} to start the job over")
        return 0
    kept = end = 0
    with open(path, "rb") as file:
        for line in file:
            if (count is not None and kept == count) or not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                break
            kept += 1
            end += len(line)
    if count is not None and kept < count:
        raise InputError(f"{path} holds fewer frames than its snapshot; delete {path.parent}")
    os.truncate(path, end)
    return kept


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file, one at a time."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)
