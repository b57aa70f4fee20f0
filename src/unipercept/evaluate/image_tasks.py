"""det and insseg ``--images``: run a model on every image of a COCO json and write its COCO
results json."""

from __future__ import annotations

from pathlib import Path

from unipercept.evaluate.predictor import build_predictor


def predict_coco(
    gt: Path,
    images: Path,
    results: Path,
    *,
    model_name: str = "unipercept_tiny",
    weights: Path | None = None,
    with_masks: bool = False,
    short_size: int | None = None,
    max_size: int | None = None,
    score_threshold: float = 0.05,
) -> Path:
    """Runs a model on every image of a COCO json and writes its COCO results json."""
    import torch
    from tqdm import tqdm

    from unipercept.data.io import load_image, load_json
    from unipercept.evaluation.coco import coco_results, write_coco_results
    from unipercept.tasks import DetectionTask, InstanceSegmentationTask

    if not gt.is_file():
        raise ValueError(f"ground-truth file {gt} does not exist")
    if not images.is_dir():
        raise ValueError(f"images folder {images} does not exist")
    content = load_json(gt)
    categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{gt}: no categories to prompt the model with")
    task_type = InstanceSegmentationTask if with_masks else DetectionTask
    task = task_type(score_threshold=score_threshold, top_k=100)
    predictor = build_predictor(model_name, weights, short_size, max_size)
    prompt = task.make_prompt([c["name"] for c in categories])
    category_ids = [c["id"] for c in categories]
    entries = []
    with torch.no_grad():
        for image in tqdm(content.get("images", []), desc="predict", unit="image"):
            path = images / image["file_name"]
            if not path.is_file():
                raise ValueError(f"{gt}: image {image['id']}: no file {path}")
            found = predictor.predict(load_image(path), prompt, task=task)
            entries.extend(coco_results(image["id"], found, category_ids))
    results.parent.mkdir(parents=True, exist_ok=True)
    return write_coco_results(results, entries, gt)
