"""What ships with the package: the bundled model ``unipercept-tiny`` and a sample image and
video from the held-out split of the generated world (``samples/``, described by
``samples/samples.json``). ``scripts/build_bundled_model.py`` writes both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
SAMPLES = ASSETS / "samples"
_SAMPLES_JSON = "samples.json"


@dataclass(frozen=True)
class Samples:
    """The shipped sample inputs and prompts that fit them.

    Attributes:
        image: a PNG of shapes (held-out COCO-format image).
        categories: category names for det/insseg/mot/mots/vis (``"circle. square"``).
        expression: an expression naming one object of the image (rec/res).
        video: an MP4 of moving shapes (held-out Ref-YouTube-VOS video).
        video_expression: an expression naming one object of the video (rvos).
        box: that object's box in the first frame, (x, y, w, h) pixels (sot).
        mask: a PNG of that object's first-frame mask, 0/255 (vos).
        image_objects: the image's objects, {"category": name, "bbox": [x, y, w, h]}.
        referred_object: the index in ``image_objects`` of the one ``expression`` names.
        image_expressions: every expression of the image, {"expression", "object": index}.
        video_target_boxes: the video target's (x, y, w, h) per frame, None where absent.
    """

    image: Path
    categories: str
    expression: str
    video: Path
    video_expression: str
    box: tuple[float, float, float, float]
    mask: Path
    image_objects: list[dict]
    referred_object: int
    image_expressions: list[dict]
    video_target_boxes: list[list[float] | None]


def samples() -> Samples:
    """The shipped samples (raises FileNotFoundError naming the file when they are missing)."""
    return read_samples(SAMPLES)


def read_samples(folder: Path) -> Samples:
    """The samples described by ``folder/samples.json``."""
    path = folder / _SAMPLES_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run scripts/build_bundled_model.py to write the samples"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    return Samples(
        image=folder / data["image"],
        categories=data["categories"],
        expression=data["expression"],
        video=folder / data["video"],
        video_expression=data["video_expression"],
        box=tuple(data["box"]),
        mask=folder / data["mask"],
        image_objects=data["image_objects"],
        referred_object=data["referred_object"],
        image_expressions=data["image_expressions"],
        video_target_boxes=data["video_target_boxes"],
    )


def write_samples(world: Path, out: Path, *, fps: float = 8.0) -> Samples:
    """Writes the samples from a generated world's held-out ("val") data.

    The image is the first RefCOCO val image with at least three objects, with its first
    expression; the video is the longest val Ref-YouTube-VOS video (ties:
    the first) with its first expression, whose object gives the SOT box and VOS mask.
    """
    import numpy as np
    from PIL import Image

    from unipercept.data.io import load_image, load_index_png, load_json, write_text_atomic
    from unipercept.data.synthetic.world import CATEGORIES
    from unipercept.data.video import VideoWriter

    out.mkdir(parents=True, exist_ok=True)
    image_path, expression, objects, referred, expressions = _refcoco_sample(world)
    Image.open(image_path).convert("RGB").save(out / "shapes.png")

    root = world / "refytvos"
    meta = load_json(root / "meta_expressions" / "valid" / "meta_expressions.json")["videos"]
    name = max(sorted(meta), key=lambda n: (len(meta[n]["frames"]), -sorted(meta).index(n)))
    video = meta[name]
    first = video["expressions"][sorted(video["expressions"], key=int)[0]]
    object_id = int(first["obj_id"])
    frames = [root / "valid" / "JPEGImages" / name / f"{f}.jpg" for f in video["frames"]]
    height, width = load_image(frames[0]).shape[1:]
    with VideoWriter(out / "shapes.mp4", fps=fps, width=width, height=height) as writer:
        for frame in frames:
            writer.write(load_image(frame))
    track: list[list[float] | None] = []  # the target's box per frame (None when absent)
    for index, frame_name in enumerate(video["frames"]):
        labels = load_index_png(root / "valid" / "Annotations" / name / f"{frame_name}.png")
        mask = labels == object_id
        if index == 0:
            Image.fromarray((mask * 255).astype(np.uint8)).save(out / "shapes_mask.png")
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            track.append(None)
            continue
        x0, y0 = float(xs.min()), float(ys.min())
        track.append([x0, y0, float(xs.max() + 1) - x0, float(ys.max() + 1) - y0])
    box = track[0]
    if box is None:
        raise ValueError(f"{root}: the target of {name} is absent in the first frame")

    data = {
        "image": "shapes.png",
        "categories": ". ".join(CATEGORIES),
        "expression": expression,
        "video": "shapes.mp4",
        "video_expression": first["exp"],
        "box": box,
        "mask": "shapes_mask.png",
        # Ground truth, for checking the bundled model on the samples: the image's objects
        # (category, x,y,w,h), the referred one's index, the video target's box per frame.
        "image_objects": objects,
        "referred_object": referred,
        "image_expressions": expressions,
        "video_target_boxes": track,
        "source": {
            "image": f"refcoco/images/{image_path.name}",
            "video": f"refytvos/valid/{name}",
            "object_id": object_id,
        },
    }
    write_text_atomic(out / _SAMPLES_JSON, json.dumps(data, indent=1) + "\n")
    return read_samples(out)


def _refcoco_sample(world: Path) -> tuple[Path, str, list[dict], int, list[dict]]:
    """The first RefCOCO "val" image with at least three objects, its first expression, its
    objects ({"category", "bbox"}), the index of the referred one, and every expression of the
    image ({"expression", "object": index})."""
    from unipercept.data.io import load_json, load_plain_pickle

    root = world / "refcoco"
    refs = load_plain_pickle(root / "refs(unc).p")
    instances = load_json(root / "instances.json")
    counts: dict[int, int] = {}
    for annotation in instances["annotations"]:
        counts[annotation["image_id"]] = counts.get(annotation["image_id"], 0) + 1
    files = {image["id"]: image["file_name"] for image in instances["images"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for ref in sorted(refs, key=lambda r: r["ref_id"]):
        if ref["split"] == "val" and counts.get(ref["image_id"], 0) >= 3 and ref["sentences"]:
            annotations = sorted(
                (a for a in instances["annotations"] if a["image_id"] == ref["image_id"]),
                key=lambda a: a["id"],
            )
            objects = [
                {"category": names[a["category_id"]], "bbox": a["bbox"]} for a in annotations
            ]
            ids = [a["id"] for a in annotations]
            expressions = [
                {"expression": sentence["sent"], "object": ids.index(other["ann_id"])}
                for other in sorted(refs, key=lambda r: r["ref_id"])
                if other["image_id"] == ref["image_id"]
                for sentence in other["sentences"]
            ]
            path = root / "images" / files[ref["image_id"]]
            return path, ref["sentences"][0]["sent"], objects, ids.index(ref["ann_id"]), expressions
    raise ValueError(f"{root}: no val image with three objects and an expression")
