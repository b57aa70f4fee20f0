"""``python -m unipercept.predict`` at scale: ``--batch-size`` (the same answers as one image at
a time), ``--dtype`` (bfloat16 end to end on CPU, part of the job's identity), and
``predictions.json`` assembled as a stream from the per-frame records (no record kept in
memory; the same text as the former all-in-memory assembly)."""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept import predict
from unipercept.api import Predictor
from unipercept.modeling.pretrained import bundled_models
from unipercept.structures import rle_area, rle_decode, rle_encode

from .test_predict import (
    FRAMES,
    _without_info,
    checkpoint,  # noqa: F401  (a fixture)
    frame,
    inputs,  # noqa: F401  (a fixture)
)


def _batch_sizes(monkeypatch) -> list[int]:
    """Records how many images each Predictor.predict_batch call is given."""
    sizes: list[int] = []
    original = Predictor.predict_batch

    def spy(self, images, *args, **kwargs):
        sizes.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", spy)
    return sizes


def _assert_same_answers(one: dict, batched: dict) -> None:
    """Equal up to float rounding: boxes within 0.02 px, scores within 1e-4, masks 99% alike."""
    assert one["images"] == batched["images"]
    assert len(one["annotations"]) == len(batched["annotations"]) > 0
    for a, b in zip(one["annotations"], batched["annotations"], strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert np.allclose(a["bbox"], b["bbox"], atol=0.02), (a["bbox"], b["bbox"])
        assert abs(a["score"] - b["score"]) <= 1e-4
        if "segmentation" in a:
            mask_a, mask_b = (rle_decode([x["segmentation"]])[0] for x in (a, b))
            union = (mask_a | mask_b).sum()
            assert union == 0 or (mask_a & mask_b).sum() / union >= 0.99


def test_batches_of_images_of_different_sizes_answer_as_one_by_one(
    checkpoint,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, (height, width) in enumerate([(64, 96), (80, 60), (64, 96), (48, 48), (64, 96)]):
        image = Image.fromarray(frame(index)).resize((width, height))
        image.save(folder / f"img{index}.png")
    job = predict.Job(
        task="insseg",
        input=str(folder),
        prompt="square. circle",
        checkpoint=str(checkpoint),
        score_threshold=0.0,
    )
    sizes = _batch_sizes(monkeypatch)
    one = json.loads(predict.run(job, tmp_path / "one").read_text())
    assert sizes == [1] * 5
    sizes.clear()
    batched = json.loads(predict.run(job, tmp_path / "three", batch_size=3).read_text())
    assert sizes == [3, 2]
    _assert_same_answers(one, batched)
    assert sorted(p.name for p in (tmp_path / "three" / "overlays").iterdir()) == [
        f"img{i}.png" for i in range(5)
    ]


def test_a_videos_frames_batch_for_an_image_task(checkpoint, inputs, tmp_path, monkeypatch):  # noqa: F811
    job = predict.Job(
        task="det", input=str(inputs["video"]), prompt="square", checkpoint=str(checkpoint)
    )
    sizes = _batch_sizes(monkeypatch)
    one = json.loads(predict.run(job, tmp_path / "one").read_text())
    sizes.clear()
    batched = json.loads(predict.run(job, tmp_path / "four", batch_size=4).read_text())
    assert sizes == [4, FRAMES - 4]
    _assert_same_answers(one, batched)


def test_batch_size_and_max_frames_are_checked(inputs, tmp_path):  # noqa: F811
    for task, size, message in [("det", 0, "at least 1"), ("mot", 2, "image tasks")]:
        job = predict.Job(task=task, input=str(inputs["video"]), prompt="square")
        with pytest.raises(predict.InputError, match=f"--batch-size.*{message}"):
            predict.run(job, tmp_path / "out", batch_size=size)
    images = predict.Job(task="det", input=str(inputs["images"]), prompt="x", max_frames=2)
    with pytest.raises(predict.InputError, match="--max-frames applies to a video or a live"):
        predict.run(images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- precision


def _iou(a: list[float], b: list[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


@pytest.mark.skipif("unipercept-tiny" not in bundled_models(), reason="no bundled model")
@pytest.mark.parametrize("task", ["det", "mot"])
def test_bfloat16_runs_end_to_end_and_agrees_with_float32(tmp_path, task):
    """The bundled model in bfloat16 on CPU: its layers really compute in bfloat16, and each
    sure float32 answer has a bfloat16 one on the same box (IoU >= 0.9) and score (+-0.05)."""
    from unipercept import load_model
    from unipercept.assets import samples

    sample = samples()
    source = sample.image if task == "det" else sample.video
    model = load_model("unipercept-tiny")
    answers, dtypes = {}, {"float32": set(), "bfloat16": set()}
    hooks = [
        module.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        for dtype in ("float32", "bfloat16"):
            seen = dtypes[dtype]
            frames = {"max_frames": 4} if task == "mot" else {}
            job = predict.Job(
                task=task, input=str(source), prompt=sample.categories, dtype=dtype, **frames
            )
            path = predict.run(job, tmp_path / dtype, model=model)
            answers[dtype] = json.loads(path.read_text())
    finally:
        for hook in hooks:
            hook.remove()
    assert dtypes["float32"] == {torch.float32} and torch.bfloat16 in dtypes["bfloat16"]
    assert answers["bfloat16"]["info"]["dtype"] == "bfloat16"
    full, half = answers["float32"]["annotations"], answers["bfloat16"]["annotations"]
    sure = [a for a in full if a["score"] >= 0.4]
    assert sure and abs(len(full) - len(half)) <= max(1, len(full) // 10)
    for a in sure:
        assert any(
            b["image_id"] == a["image_id"]
            and _iou(a["bbox"], b["bbox"]) >= 0.9
            and abs(a["score"] - b["score"]) <= 0.05
            for b in half
        ), a


def test_the_dtype_is_part_of_the_jobs_identity(checkpoint, inputs, tmp_path):  # noqa: F811
    """An unfinished float32 job is not resumed in bfloat16 (its frames would mix two
    precisions): refused without --overwrite; "bf16" names the same job as "bfloat16"."""
    video, model = str(inputs["video"]), str(checkpoint)
    job = predict.Job(task="mot", input=video, prompt="square", checkpoint=model)
    assert predict.Job(task="mot", input=video, dtype="bf16").key()["dtype"] == "bfloat16"

    def stop(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out, on_frame=stop)
    half = predict.Job(**{**job.key(), "box": None, "dtype": "bf16"})
    with pytest.raises(predict.InputError, match="unfinished job with other arguments"):
        predict.run(half, out)
    path = predict.run(half, out, overwrite=True)
    assert json.loads(path.read_text())["info"]["dtype"] == "bfloat16"
    with pytest.raises(predict.InputError, match="--dtype 'double': expected one of float32"):
        predict.run(predict.Job(task="mot", input=video, prompt="x", dtype="double"), out)


# ------------------------------------------------------------------------------- streaming


def _in_memory(job, names, records, video=None, tracks=None) -> dict[str, Any]:
    """The former assembly of predictions.json (every image and annotation in one dict): the
    reference the streamed file must equal."""
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        image = {k: v for k, v in record.items() if k != "annotations"}
        image["id"] = image_id
        if video is not None:
            image["video_id"] = 1
        images.append(image)
        for annotation in record["annotations"]:
            _, _, w, h = annotation["bbox"]
            if "segmentation" in annotation:
                area = float(rle_area([annotation["segmentation"]])[0])
            else:
                area = round(w * h, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "iscrowd": 0,
                    "area": area,
                    **annotation,
                }
            )
    result: dict[str, Any] = {
        "info": predict.records.job_info(job),
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "images": images,
        "annotations": annotations,
    }
    if video is not None:
        result["videos"] = [{"id": 1, **video}]
    if tracks:
        result["tracks"] = tracks
    return result


class _Record(dict):
    """A record that can be watched with a weak reference."""


def _records(count: int) -> list[dict]:
    mask = torch.zeros((1, 4, 6), dtype=torch.bool)
    mask[0, 1:3, 2:5] = True
    (rle,) = rle_encode(mask)
    counts = rle["counts"]
    counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
    segmentation = {"size": list(rle["size"]), "counts": counts}
    return [
        {
            "file_name": f"clip.mp4#{i}",
            "frame_index": i,
            "height": 4,
            "width": 6,
            "annotations": [
                {"category_id": 1, "bbox": [2.0, 1.0, 3.0, 2.0], "score": 0.5, "track_id": t}
                | ({"segmentation": segmentation} if t % 2 else {})
                for t in range(i % 3)
            ],
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("kind", ["video", "images"])
def test_predictions_are_streamed_to_the_same_text_as_in_memory(tmp_path, kind):
    job = predict.Job(task="mots", input="clip.mp4", prompt="square")
    records = _records(7)
    video = {"file_name": "clip.mp4", "length": 7, "height": 4, "width": 6, "fps": 5.0}
    tracks = [{"track_id": 1, "category_id": 1, "score": 0.5}]
    extra = {"video": video, "tracks": tracks} if kind == "video" else {}
    path = tmp_path / "predictions.json"
    written = predict.write_predictions(path, job, ["square"], iter(records), **extra)
    assert path.read_text() == json.dumps(_in_memory(job, ["square"], records, **extra))
    assert (written.images, written.annotations) == (7, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.json"]  # no spool left
    path.write_text("before")
    predict.write_predictions(path, job, [], iter([]))
    assert json.loads(path.read_text())["images"] == []


def test_assembling_predictions_holds_one_record_at_a_time(tmp_path):
    """The records are consumed as a stream: when the next one is asked for, none but the
    last one given is still referenced (a writer keeping them, or a list(...) of them, fails).
    """
    watched: list[weakref.ref] = []

    def records():
        for record in _records(6):
            gc.collect()
            # The last one given may still be the consumer's loop variable; none before it.
            alive = sum(ref() is not None for ref in watched[:-1])
            assert alive == 0, f"{alive} earlier records are still held"
            item = _Record(record)
            watched.append(weakref.ref(item))
            yield item
            del item

    job = predict.Job(task="mots", input="clip.mp4", prompt="square")
    written = predict.write_predictions(tmp_path / "p.json", job, ["square"], records())
    assert written.images == 6


def test_a_video_job_keeps_no_frame_records_and_writes_what_memory_would(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Over a vis job (masks, tracks): after each frame at most that frame's results are
    alive; predictions.json is assembled from an iterator (not a list), and its text is the
    in-memory assembly's of the same records."""
    from unipercept.predict import frames, runner

    class Tracked(list):
        pass

    results: list[weakref.ref] = []
    original_records = frames.annotation_records

    def annotation_records(*args, **kwargs):
        found = Tracked(original_records(*args, **kwargs))
        results.append(weakref.ref(found))
        return found

    most_alive = []

    def on_frame(done: int) -> None:
        gc.collect()
        most_alive.append(sum(ref() is not None for ref in results))

    seen = {}
    original_write = runner.write_predictions

    def write_predictions(path, job, names, records, **extra):
        assert iter(records) is records, "records must come as an iterator"
        records = list(records)  # the test's copy, to compare with the reference
        seen["text"] = json.dumps(_in_memory(job, names, records, **extra))
        return original_write(path, job, names, iter(records), **extra)

    monkeypatch.setattr(frames, "annotation_records", annotation_records)
    monkeypatch.setattr(runner, "write_predictions", write_predictions)
    job = predict.Job(
        task="vis",
        input=str(inputs["video"]),
        prompt="square. circle",
        checkpoint=str(checkpoint),
        score_threshold=0.0,
    )
    path = predict.run(job, tmp_path / "out", on_frame=on_frame)
    assert len(most_alive) == FRAMES and max(most_alive) <= 1
    predictions = json.loads(path.read_text())
    assert predictions["tracks"] and len(predictions["images"]) == FRAMES
    assert path.read_text() == seen["text"]


def test_a_resumed_video_job_cuts_a_half_written_line(checkpoint, inputs, tmp_path):  # noqa: F811
    """A job killed while writing a frame's line: the rerun drops that line and redoes the
    frame (the lines before it are kept, read one at a time)."""
    job = predict.Job(
        task="det", input=str(inputs["video"]), prompt="square", checkpoint=str(checkpoint)
    )
    expected = _without_info(predict.run(job, tmp_path / "straight"))

    def stop(done: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out, on_frame=stop)
    lines = out / predict.JOB_DIR / "frames.jsonl"
    with open(lines, "a") as file:
        file.write('{"file_name": "clip.mp4#3", "fra')
    done: list[int] = []
    assert _without_info(predict.run(job, out, on_frame=done.append)) == expected
    assert done == list(range(4, FRAMES + 1))


def test_the_stream_writer_never_replaces_a_file_on_failure(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text("kept")

    def broken():
        yield _records(1)[0]
        raise RuntimeError("disk full")

    job = predict.Job(task="det", input="x", prompt="square")
    with pytest.raises(RuntimeError, match="disk full"):
        predict.write_predictions(path, job, ["square"], broken())
    assert path.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.json"]


def test_old_job_files_without_the_new_options_name_the_same_job():
    """A job.json written before --dtype and --max-frames existed still resumes."""
    job = predict.Job(task="det", input="clip.mp4", prompt="square")
    saved = {k: v for k, v in job.key().items() if k not in ("dtype", "max_frames")}
    assert predict.job.same_job(saved, job)
    assert not predict.job.same_job({**saved, "dtype": "bfloat16"}, job)
    assert not predict.job.same_job({**saved, "max_frames": 3}, job)
    assert not predict.job.same_job(None, job)
