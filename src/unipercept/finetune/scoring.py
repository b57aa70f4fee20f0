"""The held-out score of a model during a fine-tune, one class per task family.

Each scorer is called with the model being trained (the trainer puts it in eval mode) and
returns one number, higher is better: COCO box or mask AP (pycocotools), RefCOCO P@0.5,
YouTube-VIS AP, MOT HOTA (TrackEval's definitions). They run the model as ``python -m
unipercept.evaluate`` does (a :class:`~unipercept.api.Predictor` at the model's inference
resolution, the same task settings) and score with the same :mod:`unipercept.evaluation`
code, so the number a run logs is the number that command gives for the exported model.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from unipercept.api import Predictor
    from unipercept.data.types import Sample

# As python -m unipercept.evaluate det/insseg --images: COCO's 100 detections per image, and
# the results below 0.05 left out.
COCO_SCORE_THRESHOLD = 0.05
COCO_TOP_K = 100


@dataclass(frozen=True)
class Resolution:
    """The inference resolution the scorers run the model at (what the export records)."""

    short_size: int
    max_size: int

    def predictor(self, model: nn.Module) -> Predictor:
        """The model at this resolution, with its own kind of preprocessing (a UNINEXT model
        with UNINEXT's, as ``python -m unipercept.evaluate`` runs it)."""
        from unipercept.api import Predictor, is_uninext
        from unipercept.data.preprocess import ImagePreprocessor
        from unipercept.evaluate.predictor import uninext_predictor

        if is_uninext(model):
            return uninext_predictor(model, self.short_size, self.max_size)
        preprocess = ImagePreprocessor(short_size=self.short_size, max_size=self.max_size)
        return Predictor(model, preprocess=preprocess)


class CocoScore:
    """COCO AP (``iou_type`` "bbox" or "segm") on held-out images, every category prompted.

    Args:
        ground_truth: the held-out COCO json's content.
        images: the folder its ``file_name`` s are in.
        iou_type: box AP ("bbox") or mask AP ("segm").
        resolution: where the model runs.
    """

    def __init__(
        self,
        ground_truth: Mapping[str, Any],
        images: Path,
        *,
        iou_type: str,
        resolution: Resolution,
    ) -> None:
        from pycocotools.coco import COCO

        self.coco = COCO()
        self.coco.dataset = dict(ground_truth)
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
            self.coco.createIndex()
        self.images = Path(images)
        self.iou_type = iou_type
        self.resolution = resolution
        categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
        self.names = [str(c["name"]) for c in categories]
        self.category_ids = [c["id"] for c in categories]

    def __call__(self, model: nn.Module) -> float:
        from unipercept.data.io import load_image
        from unipercept.evaluation.coco import coco_results, evaluate_coco
        from unipercept.tasks import DetectionTask, InstanceSegmentationTask

        kind = InstanceSegmentationTask if self.iou_type == "segm" else DetectionTask
        task = kind(score_threshold=COCO_SCORE_THRESHOLD, top_k=COCO_TOP_K)
        predictor = self.resolution.predictor(model)
        prompt = task.make_prompt(self.names)
        entries = []
        for image in self.coco.dataset["images"]:
            found = predictor.predict(load_image(self.images / image["file_name"]), prompt, task)
            entries.extend(coco_results(image["id"], found, self.category_ids))
        return evaluate_coco(self.coco, entries, self.iou_type).ap


class ReferringScore:
    """RefCOCO's P@0.5 on held-out expressions: the top-1 box of each expression against the
    box of the object it names.

    Args:
        samples: the held-out images, each with its expressions.
        resolution: where the model runs.
    """

    def __init__(self, samples: Sequence[Sample], *, resolution: Resolution) -> None:
        self.samples = list(samples)
        self.resolution = resolution

    def __call__(self, model: nn.Module) -> float:
        from unipercept.data.io import load_image
        from unipercept.evaluation.referring import referring_box_precision

        predictor = self.resolution.predictor(model)
        predicted, expected = [], []
        for sample in self.samples:
            frame = sample.frames[0]
            image = load_image(frame.image)
            for expression in sample.expressions:
                target = frame.instances[frame.instances.track_ids == expression.target_ids[0]]
                found = predictor.predict(image, expression.text, task="rec")
                predicted.append(found.boxes[0])
                expected.append(target.boxes[0])
        return referring_box_precision(predicted, expected).precision


class VisScore:
    """YouTube-VIS AP on held-out videos, every category prompted (``python -m
    unipercept.evaluate vis --images`` on them).

    Args:
        ground_truth: the held-out YouTube-VIS json file.
        videos: the folder its ``file_names`` are in.
        resolution: where the model runs.
    """

    def __init__(self, ground_truth: Path, videos: Path, *, resolution: Resolution) -> None:
        from unipercept.evaluation.vis import load_vis_ground_truth

        self.path = Path(ground_truth)
        self.ground_truth = load_vis_ground_truth(self.path)
        self.videos = Path(videos)
        self.resolution = resolution

    def __call__(self, model: nn.Module) -> float:
        from unipercept.evaluate import predict_vis
        from unipercept.evaluation.vis import evaluate_vis

        with tempfile.TemporaryDirectory(prefix="unipercept-vis-") as folder:
            results = Path(folder) / "results.json"
            predict_vis(self.path, self.videos, results, self.resolution.predictor(model))
            return evaluate_vis(self.ground_truth, results).ap


class MotScore:
    """HOTA on held-out MOTChallenge sequences, prompted with the data's category names
    (TrackEval's MOT17 protocol: distractor classes removed, pedestrians scored).

    Args:
        sequences: each held-out sequence's folder (``img1/``, ``gt/gt.txt``) by name.
        categories: the names the model is prompted with.
        resolution: where the model runs.
    """

    def __init__(
        self, sequences: Mapping[str, Path], categories: Sequence[str], *, resolution: Resolution
    ) -> None:
        self.sequences = {name: Path(folder) for name, folder in sequences.items()}
        self.categories = list(categories)
        self.resolution = resolution

    def __call__(self, model: nn.Module) -> float:
        from unipercept.data.io import load_image
        from unipercept.data.video import image_files
        from unipercept.evaluation.mot import evaluate_mot, write_mot_txt

        predictor = self.resolution.predictor(model)
        with tempfile.TemporaryDirectory(prefix="unipercept-mot-") as folder:
            results = {}
            for name, sequence in self.sequences.items():
                tracked = []
                with predictor.start("mot", self.categories) as session:
                    for path in image_files(sequence / "img1"):
                        tracked.append(session.step(load_image(path)).replace(embeddings=None))
                results[name] = Path(folder) / f"{name}.txt"
                write_mot_txt(results[name], tracked)
            truth = {name: sequence / "gt" / "gt.txt" for name, sequence in self.sequences.items()}
            return evaluate_mot(truth, results).hota
