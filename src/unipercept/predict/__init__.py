"""``python -m unipercept.predict``: any of the ten tasks on your images, videos and cameras.

    python -m unipercept.predict --task det --prompt "cat. dog" --input photos/ --output out/ \\
        --batch-size 8
    python -m unipercept.predict --task rvos --prompt "the man in red" --input clip.mp4 \\
        --output out/ --save-video
    python -m unipercept.predict --task sot --box 10,20,50,80 --input clip.mp4 --output out/
    python -m unipercept.predict --task mot --prompt person --input clips/ --output out/
    python -m unipercept.predict --task mot --prompt person --input rtsp://camera/stream \\
        --output out/ --max-frames 1000

``--input`` is an image, a folder of images, a glob pattern (quoted), a video file, a folder of
videos (video tasks), or a live source (a capture device such as ``/dev/video0`` or ``0``, an
``rtsp://``, ``http://`` or ``https://`` stream). Image tasks (det, insseg, rec, res) answer each
image, ``--batch-size`` at a time, or each frame of a video; video tasks (sot, vos, mot, mots,
vis, rvos) follow the objects through the frames of a video (a video file, or a folder or glob
of frames), or of each video of a folder of videos. ``--dtype bfloat16`` (or float16) runs the
forward passes in reduced precision.

The output folder gets ``predictions.json``, COCO style (``images``, ``categories``,
``annotations`` with ``bbox`` x,y,w,h, ``score``, RLE ``segmentation`` for mask tasks,
``track_id`` for video tasks; ``videos`` and ``tracks`` for video tasks), and overlays:
``overlays/<name>.png`` per image, ``<video>.overlay.mp4`` per video with ``--save-video``. A
folder of videos gets ``predictions/<video>.json`` per video and ``predictions.json`` as their
index. Work streams frame by frame, written as it comes (a video of any length runs in constant
memory); finished images, frames and videos are kept under ``.unipercept-job/``, so running the
same command again after an interruption resumes where it stopped (a video task from its last
saved session state). ``predictions.json`` appears, atomically, when all is done. A live source
is not resumable: Ctrl-C ends it cleanly with the frames so far.

Bad input (a missing path or device, an unreadable image or video, an empty prompt, a box
outside the frame, a mask of the wrong size) exits with code 2 and one line, leaving no output
behind.
"""

from __future__ import annotations

from unipercept.predict.cli import main
from unipercept.predict.frames import render_video
from unipercept.predict.inputs import parse_box
from unipercept.predict.job import (
    ANNOTATION_TASKS,
    CATEGORY_TASKS,
    DTYPES,
    EXPRESSION_TASKS,
    IMAGE_TASKS,
    JOB_DIR,
    MASK_TASKS,
    PREDICTIONS,
    SNAPSHOT_EVERY,
    VIDEO_TASKS,
    InputError,
    Job,
    validate,
)
from unipercept.predict.records import write_predictions
from unipercept.predict.runner import Outcome, run, run_job

__all__ = [
    "ANNOTATION_TASKS",
    "CATEGORY_TASKS",
    "DTYPES",
    "EXPRESSION_TASKS",
    "IMAGE_TASKS",
    "JOB_DIR",
    "MASK_TASKS",
    "PREDICTIONS",
    "SNAPSHOT_EVERY",
    "VIDEO_TASKS",
    "InputError",
    "Job",
    "Outcome",
    "main",
    "parse_box",
    "render_video",
    "run",
    "run_job",
    "validate",
    "write_predictions",
]
