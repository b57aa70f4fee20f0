"""vos, sot, mot, mots and vis ``--images``: run a model through each sequence of a dataset
folder (or a YouTube-VIS json) and write the result files the scorer reads.

Frame folders are listed by :func:`unipercept.data.video.image_files`: every image suffix the
project reads, in natural order (``2.jpg`` before ``10.jpg``), as ``predict`` and the dataset
readers list them. A baseline (``--model copy-first``) runs the same loops: sessions start through
:func:`unipercept.evaluate.baselines.start_session`, which gives it the first-frame truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING

from unipercept.evaluate.answers import (
    AnswerLog,
    answering_options,
    sot_always_answer,
    sot_answers,
    vos_always_answer,
    vos_answers,
)
from unipercept.evaluate.baselines import mot_first_frame, start_session, vis_first_frame

if TYPE_CHECKING:
    import numpy as np

    from unipercept.api import Predictor
    from unipercept.structures import Instances


def _frames(folder: Path, sequence: str) -> list[Path]:
    """The frame images of one sequence's folder, in natural order (``2.jpg`` before
    ``10.jpg``).

    Raises:
        ValueError: the folder is missing or holds no image.
    """
    from unipercept.data.video import IMAGE_SUFFIXES, image_files

    frames = image_files(folder) if folder.is_dir() else []
    if not frames:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"{folder}: no frames ({suffixes}) for sequence {sequence}")
    return frames


def _label_map(found: Instances, ids: Sequence[int], binary: bool) -> np.ndarray:
    """(H, W) uint8 the objects of ``found`` painted with their ground-truth indices (1 for a
    binary sequence), lower scores first, so that the most confident object owns an overlap."""
    import numpy as np
    import torch

    out = np.zeros(found.image_size, dtype=np.uint8)
    for k in torch.argsort(found.scores).tolist():
        label = 1 if binary else ids[int(found.track_ids[k]) - 1]
        out[found.masks[k].numpy()] = label
    return out


def predict_vos(
    gt: Path,
    images: Path,
    results: Path,
    predictor: Predictor,
    sequences: Sequence[str] | None = None,
) -> AnswerLog:
    """Runs VOS on DAVIS-style folders: each sequence's objects are given by the first
    ground-truth PNG (the one named as the sequence's first frame), followed through the frames
    of ``images/<seq>/``, and written as palette PNG folders ``results/<seq>/`` (each
    atomically).

    Returns:
        Every object's answer in every later frame with a ground-truth PNG, with its score
        (also below the task's threshold) and whether it is a hit (mask IoU >= 0.5 with a
        visible object), and the J&F of label maps that report every answer (see
        :mod:`unipercept.evaluate.answers`).
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from unipercept.data.io import load_image, load_index_png
    from unipercept.evaluation.davis import VOID, VosResult, read_index_folder, write_index_folder
    from unipercept.structures import AnnotationPrompt

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    names = sorted(p.name for p in gt.iterdir() if p.is_dir()) if sequences is None else sequences
    threshold, options = answering_options(predictor, "vos")
    log = AnswerLog(threshold)
    always: list | None = []  # every object's DAVIS scores, reporting every answer
    for name in tqdm(names, desc="vos", unit="sequence"):
        frames = _frames(images / name, name)
        first = gt / name / f"{frames[0].stem}.png"
        if not first.is_file():
            raise ValueError(f"{first}: sequence {name} has no first-frame annotation")
        index = load_index_png(first)
        values = [int(v) for v in np.unique(index) if v != 0]
        binary = values == [VOID]  # DAVIS-2016: one object marked 255
        ids = [VOID] if binary else [v for v in values if v != VOID]
        if not ids:
            raise ValueError(f"{first}: the first frame annotates no object")
        truth = read_index_folder(gt / name)
        image = load_image(frames[0])
        prompts = [AnnotationPrompt(image, mask=torch.from_numpy(index == i)) for i in ids]
        written: dict[str, np.ndarray] = {}
        answered: dict[str, np.ndarray] = {}
        with predictor.start("vos", prompts, **options) as session:
            for t, path in enumerate(frames):
                found = session.step(load_image(path))
                written[path.stem] = _label_map(found[found.scores >= threshold], ids, binary)
                answered[path.stem] = _label_map(found, ids, binary)
                if t > 0 and path.stem in truth:
                    answers = {
                        int(track): (float(score), mask.numpy())
                        for track, score, mask in zip(
                            found.track_ids, found.scores, found.masks, strict=True
                        )
                    }
                    source = str(gt / name / f"{path.stem}.png")
                    vos_answers(log, truth[path.stem], ids, binary, answers, source)
        write_index_folder(results / name, written)
        scored = vos_always_answer(truth, answered, name)
        always = None if always is None or scored is None else [*always, *scored]
    if always:
        log.always_answer = {"J&F": VosResult(tuple(always)).j_and_f}
    return log


def predict_sot(
    gt: Path, results: Path, predictor: Predictor, sequences: Sequence[str] | None = None
) -> AnswerLog:
    """Runs SOT on a LaSOT-style folder: each sequence folder (the one holding
    ``groundtruth.txt``) has its frames in ``img/``; the first ground-truth box starts the
    tracker; ``results/<sequence>.txt`` gets one ``x,y,w,h`` per frame (0,0,0,0 where the
    target is reported absent), each file atomically.

    Returns:
        The answer in every later frame, with its score (also below the task's threshold)
        and whether it is a hit (box IoU >= 0.5 with a target the sequence's own ground truth
        marks present and visible), and the LaSOT scores of the answers reported in every
        frame (see :mod:`unipercept.evaluate.answers`).
    """
    import numpy as np
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.sot import load_lasot_sequence, write_boxes_txt
    from unipercept.structures import AnnotationPrompt

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    folders = sorted(p.parent for p in gt.rglob("groundtruth.txt"))
    if not folders:
        raise ValueError(f"{gt}: no sequence folder holds a groundtruth.txt")
    if sequences is not None:
        folders = [f for f in folders if f.name in set(sequences)]
    threshold, options = answering_options(predictor, "sot")
    log = AnswerLog(threshold)
    truths, answered = {}, {}
    for folder in tqdm(folders, desc="sot", unit="sequence"):
        truth = load_lasot_sequence(folder)
        x, y, w, h = truth.boxes[0]
        frames = _frames(folder / "img", folder.name)
        first = load_image(frames[0])
        prompt = AnnotationPrompt(first, box=[x, y, x + w, y + h])
        boxes = np.zeros((len(frames), 4))  # (T, 4) xywh, the best candidates
        scores = np.full(len(frames), -np.inf)  # (T,)
        with predictor.start("sot", prompt, **options) as session:
            for t, path in enumerate(frames):
                found = session.step(first if t == 0 else load_image(path))
                if len(found):
                    x0, y0, x1, y1 = found.boxes[0].tolist()
                    boxes[t] = (x0, y0, x1 - x0, y1 - y0)
                    scores[t] = float(found.scores[0])
        reported = (scores >= threshold)[:, None]  # (T, 1)
        write_boxes_txt(results / f"{folder.name}.txt", np.where(reported, boxes, 0.0))
        sot_answers(log, truth, boxes, scores)
        truths[folder.name], answered[folder.name] = truth, boxes
    log.always_answer = sot_always_answer(truths, answered)
    return log


def predict_mot(
    gt: Path,
    results: Path,
    predictor: Predictor,
    categories: Sequence[str] = ("person",),
    with_masks: bool = False,
    truth: Path | None = None,
) -> Path:
    """Runs MOT (or MOTS with ``with_masks``) on a MOTChallenge folder (``<seq>/img1/*.jpg``),
    prompted with ``categories``; ``results/<seq>.txt`` in the MOTChallenge (or MOTS) txt
    format, each file atomically. MOTS frames are kept as RLE until the file is written.

    ``truth`` is the ground truth the scorer reads (default ``gt``; for MOTS its txt folder):
    only a baseline predictor sees it, its first frame (see
    :func:`unipercept.evaluate.baselines.start_session`)."""
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.mot import write_mot_txt, write_mots_txt
    from unipercept.structures.masks import RLEMasks

    if not gt.is_dir():
        raise ValueError(f"ground-truth folder {gt} does not exist")
    sequences = sorted(p for p in gt.iterdir() if (p / "img1").is_dir())
    if not sequences:
        raise ValueError(f"{gt}: no <sequence>/img1/ frame folders")
    task = "mots" if with_masks else "mot"
    truth_root = gt if truth is None else truth
    for folder in tqdm(sequences, desc=task, unit="sequence"):
        tracked = []
        frames = _frames(folder / "img1", folder.name)
        first = partial(mot_first_frame, truth_root, folder.name, frames[0], with_masks)
        with start_session(predictor, task, list(categories), first) as session:
            for path in frames:
                found = session.step(load_image(path)).replace(embeddings=None)
                # Kept until the file is written: boxes and ids, and masks as RLE (MOTS).
                masks = RLEMasks.from_dense(found.masks) if with_masks else None
                tracked.append(found.replace(masks=masks))
        target = results / f"{folder.name}.txt"
        if with_masks:
            write_mots_txt(target, tracked)
        else:
            write_mot_txt(target, tracked)
    return results


def predict_vis(gt: Path, images: Path, results: Path, predictor: Predictor) -> Path:
    """Runs VIS on every video of a YouTube-VIS annotation json (frames ``images/<file_name>``),
    prompted with all its category names; each track becomes one YouTube-VIS result (its
    category and score from the whole video), written to ``results`` as one json, atomically.

    The results json needs each track's mask in every frame, so the session's tracks are
    gathered per video as compressed RLE (a few hundred bytes per mask), not as pixels.
    """
    from tqdm import tqdm

    from unipercept.data.io import load_image, load_json
    from unipercept.evaluation.vis import (
        VisPrediction,
        load_vis_ground_truth,
        write_vis_results,
    )
    from unipercept.structures.masks import rle_encode

    if not gt.is_file():
        raise ValueError(f"ground-truth file {gt} does not exist")
    content = load_json(gt)
    categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    if not categories or "videos" not in content:
        raise ValueError(f"{gt}: needs 'videos' and 'categories'")
    names = [c["name"] for c in categories]
    ground_truth = cache(partial(load_vis_ground_truth, gt))  # read only for a baseline

    def first_truth(video_id: int) -> Instances:
        return vis_first_frame(ground_truth(), video_id, [c["id"] for c in categories])

    predictions = []
    for video in tqdm(content["videos"], desc="vis", unit="video"):
        length = len(video["file_names"])
        tracks: dict[int, list] = {}
        first = partial(first_truth, video["id"])
        with start_session(predictor, "vis", names, first) as session:
            for t, name in enumerate(video["file_names"]):
                path = images / name
                if not path.is_file():
                    raise ValueError(f"{gt}: video {video['id']}: no frame file {path}")
                found = session.step(load_image(path))
                for track, rle in zip(
                    found.track_ids.tolist(), rle_encode(found.masks), strict=True
                ):
                    tracks.setdefault(track, [None] * length)[t] = rle
            summary = session.close()
        for track, segmentations in tracks.items():
            label, score = summary.track_labels[track]
            predictions.append(
                VisPrediction(
                    video_id=video["id"],
                    category_id=categories[label]["id"],
                    score=score,
                    segmentations=tuple(segmentations),
                )
            )
    results.parent.mkdir(parents=True, exist_ok=True)
    write_vis_results(results, predictions)
    return results
