"""Video object segmentation metrics (DAVIS protocol): region similarity J, boundary
F-measure F and their mean J&F, scored from folders of palette PNGs.

On disk (DAVIS and YouTube-VOS layout, for ground truth and predictions alike)::

    root/<sequence>/00000.png ...     palette or grey PNGs of object indices, 0 is background

J is the mask IoU (two empty masks give 1). F is the F-measure of the two masks' boundaries,
where a boundary pixel matches when the other boundary lies within ``ceil(0.008 * image
diagonal)`` pixels (a disk). Each object of each sequence gets the mean, recall (fraction of
frames above 0.5) and decay (mean of the first quarter of frames minus the last quarter) of
its per-frame scores; a dataset's scores average the objects, as the DAVIS 2017 toolkit does.

Index 255 in ground truth is void (left out of both metrics), except in a sequence whose ground
truth holds only 0 and 255: that is a binary DAVIS 2016 sequence and 255 is its one object,
id 1; any non-zero predicted pixel then belongs to it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unipercept.data.datasets.base import DatasetError
from unipercept.data.io import is_png_file, load_index_png, replace_folder
from unipercept.data.synthetic.encoding import encode_index_png
from unipercept.data.video import natural_key

VOID = 255
BOUND_TH = 0.008


def region_similarity(
    predicted: np.ndarray, truth: np.ndarray, void: np.ndarray | None = None
) -> float:
    """J: the IoU of two (H, W) bool masks, 1 when both are empty; ``void`` pixels are left out."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    if void is not None:
        predicted, truth = predicted & ~void, truth & ~void
    union = np.count_nonzero(predicted | truth)
    if union == 0:
        return 1.0
    return np.count_nonzero(predicted & truth) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool boundary of an (H, W) mask, by the rule of DAVIS's ``seg2bmap``.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour.
    In the last row only the east neighbour counts, in the last column only the south one, and
    the bottom-right pixel is never on the boundary: so a mask touching the bottom or right edge
    has no boundary along that edge, while one touching the top or left edge does.
    """
    mask = mask.astype(bool)
    east = np.zeros_like(mask)
    south = np.zeros_like(mask)
    south_east = np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_tolerance(size: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """The matching radius in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th *
    diagonal)`` of an image of ``size`` (height, width) (8 at DAVIS's 480p)."""
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(*size))


def _dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a disk of ``radius``: the offsets with ``dy**2 + dx**2 <= radius**2``."""
    offsets = np.arange(-radius, radius + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)
    return cv2.dilate(boundary.astype(np.uint8), disk).astype(bool)


def boundary_f_measure(
    predicted: np.ndarray,
    truth: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
) -> float:
    """F: the F-measure of the boundaries of two (H, W) masks.

    Precision is the fraction of predicted boundary pixels within the tolerance (see
    :func:`boundary_tolerance`) of the true boundary, recall the converse. Both boundaries empty
    give 1; only one empty gives 0.

    Args:
        predicted: (H, W) bool predicted mask.
        truth: (H, W) bool true mask.
        void: (H, W) bool pixels to leave out, or None.
        bound_th: tolerance as a fraction of the image diagonal, or in pixels when >= 1.
    """
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    if void is not None:
        predicted, truth = predicted & ~void, truth & ~void
    radius = boundary_tolerance(truth.shape, bound_th)
    predicted_boundary, true_boundary = boundary_map(predicted), boundary_map(truth)
    num_predicted = np.count_nonzero(predicted_boundary)
    num_true = np.count_nonzero(true_boundary)
    if num_predicted == 0 and num_true == 0:
        return 1.0
    if num_predicted == 0 or num_true == 0:
        return 0.0
    precision = (
        np.count_nonzero(predicted_boundary & _dilate(true_boundary, radius)) / num_predicted
    )
    recall = np.count_nonzero(true_boundary & _dilate(predicted_boundary, radius)) / num_true
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Statistics:
    """Attributes:
    mean: mean over frames.
    recall: fraction of frames scoring above 0.5.
    decay: mean of the first quarter of the frames minus that of the last quarter (the four
        bins of DAVIS, whose edges are shared between neighbouring bins).
    """

    mean: float
    recall: float
    decay: float

    @classmethod
    def of(cls, scores: Sequence[float]) -> Statistics:
        """Statistics of per-frame scores (at least one)."""
        values = np.asarray(scores, dtype=np.float64)
        edges = np.round(np.linspace(1, len(values), 5) + 1e-10).astype(int) - 1
        first, last = values[edges[0] : edges[1] + 1], values[edges[3] : edges[4] + 1]
        return cls(
            mean=float(values.mean()),
            recall=float((values > 0.5).mean()),
            decay=float(first.mean() - last.mean()),
        )


@dataclass(frozen=True)
class ObjectScores:
    """Scores of one object of one sequence.

    Attributes:
        sequence: the sequence name.
        object_id: the object's index in the PNGs.
        frames: names (file stems) of the scored frames.
        j_frames: per-frame region similarity, one per frame.
        f_frames: per-frame boundary F-measure, one per frame.
    """

    sequence: str
    object_id: int
    frames: tuple[str, ...]
    j_frames: tuple[float, ...]
    f_frames: tuple[float, ...]

    @property
    def j(self) -> Statistics:
        return Statistics.of(self.j_frames)

    @property
    def f(self) -> Statistics:
        return Statistics.of(self.f_frames)

    @property
    def j_and_f(self) -> float:
        """(J mean + F mean) / 2."""
        return (self.j.mean + self.f.mean) / 2


@dataclass(frozen=True)
class VosResult:
    """Scores of a predictions folder; dataset statistics average the objects' statistics.

    Attributes:
        objects: every scored object, by sequence then object id.
    """

    objects: tuple[ObjectScores, ...]

    def _average(self, attribute: str) -> Statistics:
        stats = [getattr(scores, attribute) for scores in self.objects]
        return Statistics(
            mean=float(np.mean([s.mean for s in stats])),
            recall=float(np.mean([s.recall for s in stats])),
            decay=float(np.mean([s.decay for s in stats])),
        )

    @property
    def j(self) -> Statistics:
        return self._average("j")

    @property
    def f(self) -> Statistics:
        return self._average("f")

    @property
    def j_and_f(self) -> float:
        """(J mean + F mean) / 2 over all objects."""
        return (self.j.mean + self.f.mean) / 2

    def sequence(self, name: str) -> tuple[ObjectScores, ...]:
        """The objects of one sequence."""
        return tuple(scores for scores in self.objects if scores.sequence == name)


def read_index_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """The (H, W) uint8 object indices of every PNG of a sequence folder, by file stem in
    natural order (``2`` before ``10``).

    Raises:
        ValueError: a missing folder, an unreadable PNG, or PNGs of different sizes (naming the
            file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    indices: dict[str, np.ndarray] = {}
    for png in sorted(folder.glob("*.png"), key=natural_key):
        try:
            index = load_index_png(png)
        except DatasetError as error:
            raise ValueError(f"{png}: {error.problem}") from None
        if indices and index.shape != next(iter(indices.values())).shape:
            raise ValueError(
                f"{png}: size {index.shape} (height, width) differs from the sequence's "
                f"{next(iter(indices.values())).shape}"
            )
        indices[png.stem] = index
    return indices


def object_masks(index: np.ndarray, object_ids: Sequence[int]) -> np.ndarray:
    """(N, H, W) bool masks of the given object ids in (H, W) indices."""
    return index[None] == np.asarray(object_ids, dtype=index.dtype)[:, None, None]


def write_index_folder(folder: str | Path, indices: Mapping[str, np.ndarray]) -> None:
    """Writes (H, W) object indices as DAVIS palette PNGs ``<folder>/<name>.png``, atomically.

    The PNGs go into a temporary folder beside ``folder`` that is then renamed into place, so
    readers never see a half-written sequence. An existing ``folder`` is replaced only when it
    holds nothing but PNG files (an earlier answer); anything else there stops the write.

    Args:
        folder: the sequence folder to create.
        indices: (H, W) integer indices in [0, 255] by frame name (file stem).

    Raises:
        FileExistsError: ``folder`` is a file or holds something other than PNG files.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for name, index in indices.items():
            index = np.asarray(index)
            if index.ndim != 2 or index.min(initial=0) < 0 or index.max(initial=0) > 255:
                raise ValueError(f"{name}: expected (H, W) indices in [0, 255]")
            (staging / f"{name}.png").write_bytes(encode_index_png(index))
        replace_folder(staging, folder, owned=is_png_file)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def evaluate_sequence(
    truth: Mapping[str, np.ndarray],
    predicted: Mapping[str, np.ndarray],
    *,
    sequence: str = "",
    exclude_first_last: bool = True,
    bound_th: float = BOUND_TH,
) -> tuple[ObjectScores, ...]:
    """Scores one sequence's predicted indices against its true indices.

    Args:
        truth: (H, W) true indices by frame name; the scored frames are these, in natural
            order (``2`` before ``10``, as frames are listed everywhere; DAVIS's zero-padded
            names sort the same either way), which decides the first and last frame and the
            quarters of the decay.
        predicted: (H, W) predicted indices by frame name.
        sequence: the name given to the scores and error messages.
        exclude_first_last: leave out the first frame (given to the method) and the last, as
            the DAVIS 2017 semi-supervised protocol does; False scores every frame.
        bound_th: the boundary tolerance of :func:`boundary_f_measure`.

    Returns:
        Scores per true object id, in id order.

    Raises:
        ValueError: a missing predicted frame, a size mismatch, or a predicted index that is no
            object of the ground truth.
    """
    frames = sorted(truth, key=natural_key)
    if exclude_first_last:
        frames = frames[1:-1]
    if not frames:
        raise ValueError(f"sequence {sequence!r}: no frames to score")
    values = np.unique(np.concatenate([np.unique(truth[name]) for name in sorted(truth)]))
    binary = set(values.tolist()) <= {0, VOID}
    object_ids = [1] if binary else [int(v) for v in values if v not in (0, VOID)]
    j_scores: list[list[float]] = [[] for _ in object_ids]
    f_scores: list[list[float]] = [[] for _ in object_ids]
    for name in frames:
        if name not in predicted:
            raise ValueError(f"sequence {sequence!r}: missing predicted frame {name}.png")
        true_index, predicted_index = truth[name], predicted[name]
        if predicted_index.shape != true_index.shape:
            raise ValueError(
                f"sequence {sequence!r}: predicted frame {name}.png has size "
                f"{predicted_index.shape} (height, width), the truth {true_index.shape}"
            )
        if binary:
            void = None
            true_masks, predicted_masks = true_index[None] != 0, predicted_index[None] != 0
        else:
            unknown = set(np.unique(predicted_index).tolist()) - {0, *object_ids}
            if unknown:
                raise ValueError(
                    f"sequence {sequence!r}: predicted frame {name}.png holds indices "
                    f"{sorted(unknown)} that are no object of the ground truth {object_ids}"
                )
            void = true_index == VOID
            true_masks = object_masks(true_index, object_ids)
            predicted_masks = object_masks(predicted_index, object_ids)
        for k in range(len(object_ids)):
            j_scores[k].append(region_similarity(predicted_masks[k], true_masks[k], void))
            f_scores[k].append(
                boundary_f_measure(predicted_masks[k], true_masks[k], void, bound_th)
            )
    return tuple(
        ObjectScores(sequence, object_id, tuple(frames), tuple(j_scores[k]), tuple(f_scores[k]))
        for k, object_id in enumerate(object_ids)
    )


def evaluate_vos(
    gt_root: str | Path,
    pred_root: str | Path,
    sequences: Sequence[str] | None = None,
    *,
    exclude_first_last: bool = True,
    bound_th: float = BOUND_TH,
) -> VosResult:
    """Scores a predictions folder against a ground-truth folder (``<root>/<sequence>/*.png``).

    Args:
        gt_root: the ground-truth folder (e.g. DAVIS's ``Annotations/480p``).
        pred_root: the predictions folder, one sub-folder per sequence.
        sequences: the sequences to score; every ground-truth sequence when None.
        exclude_first_last: see :func:`evaluate_sequence`.
        bound_th: see :func:`boundary_f_measure`.

    Raises:
        ValueError (naming the file or folder): a missing ground-truth folder, a predicted
            sequence the ground truth lacks, a missing predicted frame, a predicted PNG whose
            size differs from the truth's, or a predicted index that is no true object.
    """
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    if not gt_root.is_dir():
        raise ValueError(f"{gt_root}: no such ground-truth folder")
    if not pred_root.is_dir():
        raise ValueError(f"{pred_root}: no such predictions folder")
    known = sorted(path.name for path in gt_root.iterdir() if path.is_dir())
    for path in sorted(pred_root.iterdir()):
        if path.is_dir() and path.name not in known:
            raise ValueError(f"{path}: predicted sequence {path.name!r} is not in {gt_root}")
    objects: list[ObjectScores] = []
    for sequence in known if sequences is None else sequences:
        truth = read_index_folder(gt_root / sequence)
        if not truth:
            raise ValueError(f"{gt_root / sequence}: no ground-truth PNGs")
        predicted_folder = pred_root / sequence
        if not predicted_folder.is_dir():
            raise ValueError(f"{predicted_folder}: missing predictions for sequence {sequence!r}")
        try:
            predicted = read_index_folder(predicted_folder)
            objects += evaluate_sequence(
                truth,
                predicted,
                sequence=sequence,
                exclude_first_last=exclude_first_last,
                bound_th=bound_th,
            )
        except ValueError as error:
            raise ValueError(f"{predicted_folder}: {error}") from None
    if not objects:
        raise ValueError(f"{gt_root}: no objects to score")
    return VosResult(tuple(objects))
