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

from unipercept.predict.cli import main
from unipercept.predict.inputs import parse_box
from unipercept.predict.job import (
    ANNOTATION_TASKS,
    CATEGORY_TASKS,
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
from unipercept.predict.runner import render_video, run

__all__ = [
    "ANNOTATION_TASKS",
    "CATEGORY_TASKS",
    "EXPRESSION_TASKS",
    "IMAGE_TASKS",
    "JOB_DIR",
    "MASK_TASKS",
    "PREDICTIONS",
    "SNAPSHOT_EVERY",
    "VIDEO_TASKS",
    "InputError",
    "Job",
    "main",
    "parse_box",
    "render_video",
    "run",
    "validate",
]
