"""Trivial predictors that score what doing nothing scores, run through the same loops and
scorers as a model (``evaluate --model copy-first``).

``copy-first`` answers every video task with the first frame's ground truth in every frame:
the annotation itself for sot and vos (the first-frame box or masks, which are the prompt);
the first frame's ground-truth objects with their ids for mot and mots (boxes, and MOTS masks);
each object present in the first frame with its mask and category (score 1) for vis; the
referred target's first-frame mask for rvos. It is the baseline a model must beat to be
following anything.

A model never sees the ground truth: the loops start sessions through :func:`start_session`,
which hands the sequence's first-frame truth (read only then) to a baseline and to nothing else.
The readers here read it as the scorers do (:mod:`unipercept.evaluation.mot_files`,
:func:`unipercept.evaluation.vis.load_vis_ground_truth`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads when a baseline runs, not when the CLI parses --help
    from torch import Tensor

    from unipercept.evaluation.vis import VisGroundTruth
    from unipercept.structures import AnnotationPrompt, Instances
    from unipercept.tasks.session import VideoSummary

# --model names that are baselines, not models, and the tasks they answer.
BASELINES = ("copy-first",)
BASELINE_TASKS = ("sot", "vos", "mot", "mots", "vis", "rvos")
# The tasks whose prompt is the first frame's truth; the others get it from start_session.
_ANNOTATION_TASKS = ("sot", "vos")
# The number of a sequence's first image in MOTChallenge and MOTS txt files, as the result
# writers number it (write_mot_txt, write_mots_txt): the frame the scorers pair with it.
_FIRST_FRAME = 1


class FirstFrameSession:
    """Answers every frame with the same instances: the first frame's truth (scores 1)."""

    def __init__(self, answer: Instances) -> None:
        self.answer = answer
        self.frames = 0

    def step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        expected = self.answer.image_size
        if size != expected:
            raise ValueError(
                f"frame is {size[1]}x{size[0]}, the first frame's truth {expected[1]}x{expected[0]}"
            )
        self.frames += 1
        return self.answer

    def close(self) -> VideoSummary:
        """The frames answered, and each track's first-frame category with score 1 (vis)."""
        from unipercept.tasks.session import VideoSummary

        answer = self.answer
        labels = {}
        if answer.labels is not None and answer.track_ids is not None:
            labels = {
                int(track): (int(label), 1.0)
                for track, label in zip(answer.track_ids, answer.labels, strict=True)
            }
        return VideoSummary(frames=self.frames, track_labels=labels)

    def __enter__(self) -> FirstFrameSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CopyFirstPredictor:
    """The copy-first-frame baseline with a predictor's ``start`` (every video task)."""

    def start(
        self,
        task: str,
        prompt: Any,
        *,
        first_truth: Instances | None = None,
        **options: Any,
    ) -> FirstFrameSession:
        """A session answering the first frame's truth in every frame.

        Args:
            task: a video task (sot, vos, mot, mots, vis, rvos).
            prompt: sot, vos: the first frame's AnnotationPrompt(s), which are the answer;
                otherwise unused (the categories or the expression).
            first_truth: mot, mots, vis, rvos: the sequence's first-frame ground truth, as
                :func:`start_session` gives it.
            options: the task options a model's session takes; unused.

        Raises:
            ValueError: an image task, or the truth the task needs is missing.
        """
        from unipercept.structures import AnnotationPrompt

        if task not in BASELINE_TASKS:
            raise ValueError(
                f"the copy-first baseline answers the video tasks ({', '.join(BASELINE_TASKS)}): "
                f"{task} has no first frame"
            )
        if task in _ANNOTATION_TASKS:
            prompts = [prompt] if isinstance(prompt, AnnotationPrompt) else list(prompt)
            if not prompts or not all(isinstance(p, AnnotationPrompt) for p in prompts):
                raise ValueError("the copy-first baseline needs first-frame annotations")
            return FirstFrameSession(annotation_truth(prompts))
        if first_truth is None:
            raise ValueError(f"the copy-first baseline needs the first frame's truth for {task}")
        return FirstFrameSession(first_truth)


def start_session(
    predictor: Any,
    task: str,
    prompt: Any,
    first_truth: Callable[[], Instances],
    **options: Any,
):
    """``predictor.start(task, prompt, **options)``; a baseline (:class:`CopyFirstPredictor`)
    also gets the sequence's first-frame ground truth, which ``first_truth`` reads only then.

    The loops start every session through this, so that a model and a baseline run the same
    loop and a model never sees the truth."""
    if isinstance(predictor, CopyFirstPredictor):
        return predictor.start(task, prompt, first_truth=first_truth(), **options)
    return predictor.start(task, prompt, **options)


def annotation_truth(prompts: Sequence[AnnotationPrompt]) -> Instances:
    """sot, vos: one instance per annotated object (its box and mask, or box-filled mask),
    track ids 1..N in prompt order."""
    import torch

    from unipercept.structures import Instances, boxes_to_masks

    size = prompts[0].image_size
    masks = [
        p.mask if p.mask is not None else boxes_to_masks(p.box[None], p.image_size)[0]
        for p in prompts
    ]
    return Instances(
        size,
        boxes=torch.stack([p.box for p in prompts]).float(),
        scores=torch.ones(len(prompts)),
        labels=torch.zeros(len(prompts), dtype=torch.int64),
        masks=torch.stack(masks).bool(),
        track_ids=torch.arange(1, len(prompts) + 1),
    )


def mask_truth(
    masks: Tensor, labels: Sequence[int] | None = None, track_ids: Sequence[int] | None = None
) -> Instances:
    """(N, H, W) bool masks as instances with their boxes, scores 1, the given labels and track
    ids (default 1..N)."""
    import torch

    from unipercept.structures import Instances, masks_to_boxes

    count = masks.shape[0]
    ids = torch.arange(1, count + 1) if track_ids is None else torch.tensor(track_ids)
    return Instances(
        (int(masks.shape[1]), int(masks.shape[2])),
        boxes=masks_to_boxes(masks),
        scores=torch.ones(count),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64).reshape(-1),
        masks=masks,
        track_ids=ids.reshape(-1).to(torch.int64),
    )


def mot_truth_file(gt: Path, sequence: str) -> Path:
    """The ground-truth txt of ``sequence`` in a MOTChallenge or MOTS folder, where the scorer
    finds it: ``<seq>/gt/gt.txt``, ``<seq>/gt.txt`` or ``<seq>.txt``.

    Raises:
        ValueError: none of them exists.
    """
    candidates = (gt / sequence / "gt" / "gt.txt", gt / sequence / "gt.txt", gt / f"{sequence}.txt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"{gt}: no ground truth for sequence {sequence} ({candidates[0]})")


def mot_first_frame(gt: Path, sequence: str, first_image: Path, with_masks: bool) -> Instances:
    """The objects the scorer evaluates in the first frame of a MOTChallenge (or, with
    ``with_masks``, MOTS) sequence, with their ground-truth ids.

    MOT: the boxes of frame 1 whose ``conf`` is not 0 and, in ground truth with MOTChallenge
    classes, of class 1 (pedestrian), the rows :func:`~unipercept.evaluation.mot.evaluate_mot`
    scores (MOT15 ground truth has no classes: every row with ``conf`` not 0). MOTS: the
    masks of frame 1 of class 2 (pedestrian; ignore regions are not objects), the ones
    :func:`~unipercept.evaluation.mot.evaluate_mots` scores.

    Args:
        gt: the MOTChallenge folder (mot) or MOTS txt folder (mots) of the ground truth.
        sequence: the sequence's name.
        first_image: the sequence's first frame (its size is the boxes' image size).
        with_masks: MOTS.
    """
    import numpy as np
    import torch

    from unipercept.data.io import load_image
    from unipercept.evaluation.mot import (
        MOTS_PEDESTRIAN,
        PEDESTRIAN,
        read_mot_txt,
        read_mots_txt,
    )
    from unipercept.structures import Instances
    from unipercept.structures.masks import rle_decode

    path = mot_truth_file(gt, sequence)
    size = tuple(int(s) for s in load_image(first_image).shape[1:])
    if with_masks:
        rows = read_mots_txt(path)
        keep = np.flatnonzero((rows.frames == _FIRST_FRAME) & (rows.classes == MOTS_PEDESTRIAN))
        masks = rle_decode([rows.rles[i] for i in keep], size)
        return mask_truth(masks, track_ids=rows.ids[keep].tolist())
    boxes = read_mot_txt(path)
    keep = (boxes.frames == _FIRST_FRAME) & (boxes.scores != 0)
    if (boxes.classes >= 1).any():
        keep &= boxes.classes == PEDESTRIAN
    xywh = torch.from_numpy(boxes.boxes[keep]).float()  # (N, 4) x, y, w, h
    return Instances(
        size,  # type: ignore[arg-type]
        boxes=torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1),  # (N, 4) xyxy
        scores=torch.ones(len(xywh)),
        track_ids=torch.from_numpy(boxes.ids[keep]),
    )


def vis_first_frame(truth: VisGroundTruth, video_id: int, category_ids: Sequence[int]) -> Instances:
    """Each object of a YouTube-VIS video that is in its first frame (crowds aside): its
    first-frame mask, its category as an index into ``category_ids`` (the prompt's order),
    track ids 1..N; objects absent from frame 0 give nothing.

    Raises:
        ValueError: the video is not in the ground truth, or an object's category is not in
            ``category_ids``.
    """
    from unipercept.structures.masks import rle_decode

    video = next((v for v in truth.videos if v.id == video_id), None)
    if video is None:
        raise ValueError(f"{truth.source}: no video {video_id}")
    objects = [
        i
        for i in truth.instances
        if i.video_id == video_id and i.segmentations[0] is not None and not i.iscrowd
    ]
    unknown = sorted({i.category_id for i in objects} - set(category_ids))
    if unknown:
        raise ValueError(f"{truth.source}: video {video_id}: unknown category ids {unknown}")
    masks = rle_decode([i.segmentations[0] for i in objects], (video.height, video.width))
    labels = [list(category_ids).index(i.category_id) for i in objects]
    return mask_truth(masks, labels=labels)
