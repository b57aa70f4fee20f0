"""``python -m unipercept.predict``: every task on real files (PNG folders, an MP4), COCO-style
predictions with RLE masks and track ids, overlays, resuming an interrupted job, and one clear
line with exit code 2 for bad input, leaving nothing behind.

The CLI mechanics run an untrained ``unipercept_tiny`` saved with save_pretrained, its score
biases raised so that it is sure of every query (trackers then start tracks); what the bundled
model finds is tested in tests/test_bundled_model.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from unipercept import config, predict
from unipercept.data.video import VideoWriter, open_frames
from unipercept.modeling.pretrained import save_pretrained
from unipercept.structures import rle_decode

HEIGHT, WIDTH, FRAMES = 64, 96, 6


def frame(index: int) -> np.ndarray:
    """(H, W, 3) uint8: a red square moving right over a gradient."""
    ys = np.linspace(0, 120, HEIGHT)[:, None].repeat(WIDTH, 1)
    image = np.stack([ys, ys[::-1], np.full((HEIGHT, WIDTH), 60.0)], axis=-1).astype(np.uint8)
    x = 8 + 4 * index
    image[20:40, x : x + 20] = (220, 30, 30)
    return image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config.compose_group_option("model", "unipercept_tiny")
    torch.manual_seed(0)
    model = config.instantiate(cfg)
    with torch.no_grad():  # sure of everything, so that the trackers start tracks
        for head in (*model.heads.retrieval, *model.heads.quality):
            head.bias.fill_(4.0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_pretrained(model, folder, config=cfg, preprocess={"short_size": 64, "max_size": 96})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    images = root / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(frame(i)).save(images / f"img{i}.png")
    video = root / "clip.mp4"
    with VideoWriter(video, fps=5, width=WIDTH, height=HEIGHT) as writer:
        for i in range(FRAMES):
            writer.write(torch.from_numpy(frame(i)).permute(2, 0, 1).contiguous())
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:40, 8:28] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:32]).save(root / "small_mask.png")
    Image.fromarray(np.zeros_like(mask)).save(root / "empty_mask.png")
    (root / "garbage.png").write_bytes(b"not an image at all" * 10)
    (root / "garbage.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    return {"images": images, "video": video, "root": root}


def prompt_args(task: str, inputs: dict[str, Path]) -> list[str]:
    if task == "sot":
        return ["--box", "8,20,20,20", "--score-threshold", "0"]
    if task == "vos":
        return ["--mask", str(inputs["root"] / "mask.png"), "--score-threshold", "0"]
    if task in ("rec", "res", "rvos"):
        return ["--prompt", "the red square"]
    return ["--prompt", "square. circle", "--score-threshold", "0"]


def run_main(args: list[str]) -> int:
    return predict.main(args)


@pytest.mark.parametrize("task", predict.IMAGE_TASKS + predict.VIDEO_TASKS)
def test_every_task_writes_coco_predictions_and_overlays(task, checkpoint, inputs, tmp_path):
    image_task = task in predict.IMAGE_TASKS
    source = inputs["images"] if image_task else inputs["video"]
    out = tmp_path / "out"
    code = run_main(
        [
            "--task",
            task,
            "--input",
            str(source),
            "--output",
            str(out),
            "--checkpoint",
            str(checkpoint),
            *prompt_args(task, inputs),
        ]
    )
    assert code == 0
    predictions = json.loads((out / "predictions.json").read_text())
    coco = COCO()
    coco.dataset = predictions
    coco.createIndex()  # pycocotools reads it as a dataset
    count = 3 if image_task else FRAMES
    assert len(coco.getImgIds()) == count
    assert predictions["info"]["task"] == task
    annotations = predictions["annotations"]
    assert annotations, "score threshold 0 keeps the untrained model's answers"
    if task in ("rec", "res", "rvos"):
        assert len(annotations) == count  # one answer per image or frame
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        assert x >= 0 and y >= 0 and x + w <= WIDTH + 0.01 and y + h <= HEIGHT + 0.01
        assert 0.0 <= annotation["score"] <= 1.0
        assert ("track_id" in annotation) == (not image_task)
        assert ("segmentation" in annotation) == (task in predict.MASK_TASKS)
        if "segmentation" in annotation:
            mask = rle_decode([annotation["segmentation"]])[0]
            assert mask.shape == (HEIGHT, WIDTH)
            assert annotation["area"] == int(mask.sum())
    if task in ("sot", "vos"):
        first = [a for a in annotations if a["image_id"] == 1]
        assert first[0]["bbox"] == [8.0, 20.0, 20.0, 20.0] and first[0]["score"] == 1.0
    if image_task:
        assert sorted(p.name for p in (out / "overlays").iterdir()) == [
            "img0.png",
            "img1.png",
            "img2.png",
        ]
    else:
        assert predictions["videos"][0]["length"] == FRAMES
    if task == "vis":
        assert predictions["tracks"] and all(t["track_id"] >= 1 for t in predictions["tracks"])
    assert not (out / predict.JOB_DIR).exists()


def test_save_video_writes_an_overlay_with_every_frame(checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    args = ["--task", "mots", "--input", str(inputs["video"]), "--output", str(out)]
    args += ["--checkpoint", str(checkpoint), "--save-video", *prompt_args("mots", inputs)]
    assert run_main(args) == 0
    with open_frames(out / "clip.overlay.mp4") as overlay:
        frames = [f for _, f in overlay]
    assert len(frames) == FRAMES and frames[0].shape == (3, HEIGHT, WIDTH)
    with open_frames(inputs["video"]) as original:
        first = next(iter(original))[1]
    assert (frames[0].float() - first.float()).abs().mean() > 1.0  # something was drawn


def test_a_glob_of_images_is_answered_image_by_image(checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    pattern = str(inputs["images"] / "img[02].png")
    args = ["--task", "rec", "--input", pattern, "--output", str(out), "--prompt", "the square"]
    assert run_main([*args, "--checkpoint", str(checkpoint)]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert [Path(i["file_name"]).name for i in predictions["images"]] == ["img0.png", "img2.png"]


def test_image_tasks_run_on_every_frame_of_a_video(checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    args = ["--task", "det", "--input", str(inputs["video"]), "--output", str(out)]
    assert run_main([*args, "--checkpoint", str(checkpoint), "--prompt", "square"]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert [i["frame_index"] for i in predictions["images"]] == list(range(FRAMES))


# ------------------------------------------------------------------------------- resuming


def _job(task: str, source: Path, checkpoint: Path, inputs) -> predict.Job:
    args = prompt_args(task, inputs)
    return predict.Job(
        task=task,
        input=str(source),
        prompt=args[1] if args[0] == "--prompt" else None,
        box=predict.parse_box(args[1]) if args[0] == "--box" else None,
        checkpoint=str(checkpoint),
        score_threshold=0.0 if "--score-threshold" in args else None,
    )


def _without_info(path: Path) -> dict:
    predictions = json.loads(path.read_text())
    predictions.pop("info")
    return predictions


def test_an_interrupted_image_job_resumes_without_redoing_images(
    checkpoint, inputs, tmp_path, monkeypatch
):
    from unipercept.api import Predictor

    job = _job("insseg", inputs["images"], checkpoint, inputs)
    expected = _without_info(predict.run(job, tmp_path / "straight"))

    answered = []  # images per call
    original = Predictor.predict_batch

    def interrupted(self, images, *args, **kwargs):
        if len(answered) == 2:
            raise KeyboardInterrupt
        answered.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out)
    assert not (out / "predictions.json").exists()
    assert len(list((out / predict.JOB_DIR / "items").iterdir())) == 2

    answered.clear()

    def counted(self, images, *args, **kwargs):
        answered.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", counted)
    assert _without_info(predict.run(job, out, batch_size=3)) == expected
    assert answered == [1]  # only the unfinished image


@pytest.mark.parametrize(
    ("where", "stop", "redone_from"),
    [
        ("decoding", KeyboardInterrupt, 5),  # Ctrl-C between frames: saved at frame 5
        ("step", KeyboardInterrupt, 4),  # inside a step: the snapshot of frame 4 stands
        ("step", RuntimeError, 4),  # a crash (as if killed): the snapshot of frame 4
    ],
)
def test_an_interrupted_video_job_resumes_from_its_saved_session(
    checkpoint, inputs, tmp_path, monkeypatch, where, stop, redone_from
):
    """The session (tracker included) is saved every 2 frames here and on Ctrl-C between
    frames; a rerun resumes from the last snapshot, dropping the frames written after it.
    Either way the result equals an uninterrupted run's, track ids included."""
    from unipercept.data.video import VideoFileSource
    from unipercept.tasks.session import VideoSession

    job = _job("mot", inputs["video"], checkpoint, inputs)
    expected = _without_info(predict.run(job, tmp_path / "straight", snapshot_every=2))

    steps = []
    original_step, original_iter = VideoSession.step, VideoFileSource.__iter__

    def step(self, frame):
        if where == "step" and len(steps) == 5:
            raise stop("stopped")
        steps.append(1)
        return original_step(self, frame)

    def frames(self):
        for index, frame in original_iter(self):
            if where == "decoding" and index == 5:
                raise stop("stopped")
            yield index, frame

    monkeypatch.setattr(VideoSession, "step", step)
    monkeypatch.setattr(VideoFileSource, "__iter__", frames)
    out = tmp_path / "out"
    with pytest.raises(stop):
        predict.run(job, out, snapshot_every=2)
    assert not (out / "predictions.json").exists()

    steps.clear()
    monkeypatch.setattr(VideoFileSource, "__iter__", original_iter)
    monkeypatch.setattr(
        VideoSession, "step", lambda self, frame: steps.append(1) or original_step(self, frame)
    )
    assert _without_info(predict.run(job, out, snapshot_every=2)) == expected
    assert len(steps) == FRAMES - redone_from


def test_a_finished_output_is_not_overwritten_without_asking(checkpoint, inputs, tmp_path):
    job = _job("det", inputs["images"], checkpoint, inputs)
    out = tmp_path / "out"
    predict.run(job, out)
    before = (out / "predictions.json").read_bytes()
    other = predict.Job(**{**job.key(), "prompt": "circle", "box": None})
    with pytest.raises(predict.InputError, match="already holds predictions.json"):
        predict.run(other, out)
    assert (out / "predictions.json").read_bytes() == before
    predict.run(other, out, overwrite=True)
    assert json.loads((out / "predictions.json").read_text())["info"]["prompt"] == "circle"


# ---------------------------------------------------------------------------- bad input


def _bad_cases(inputs) -> dict[str, tuple[list[str], str]]:
    root, video, images = inputs["root"], str(inputs["video"]), str(inputs["images"])
    det = ["--task", "det", "--prompt", "cat", "--input"]
    mot = ["--task", "mot", "--prompt", "cat", "--input"]
    sot = ["--task", "sot", "--input", video]
    vos = ["--task", "vos", "--input", video, "--mask"]
    return {
        "missing input": ([*det, str(root / "nope")], "no such file"),
        "corrupt image": ([*det, str(root / "garbage.png")], "garbage.png"),
        "corrupt video": ([*mot, str(root / "garbage.mp4")], "garbage.mp4"),
        "empty prompt": (["--task", "det", "--prompt", "  ", "--input", images], "--prompt"),
        "no names": (["--task", "mot", "--prompt", " . ", "--input", video], "no category name"),
        "box outside": ([*sot, "--box", "80,20,30,20"], "outside the first frame"),
        "box malformed": ([*sot, "--box", "1,2,3"], "four numbers"),
        "mask size": ([*vos, str(root / "small_mask.png")], "96x32"),
        "mask empty": ([*vos, str(root / "empty_mask.png")], "empty"),
        "prompt for sot": ([*sot, "--prompt", "cat"], "--box or --mask"),
        "unknown task": (["--task", "segment", "--prompt", "cat", "--input", images], "invalid"),
        "bad checkpoint": ([*det, images, "--checkpoint", str(root)], "--checkpoint"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing input",
        "corrupt image",
        "corrupt video",
        "empty prompt",
        "no names",
        "box outside",
        "box malformed",
        "mask size",
        "mask empty",
        "prompt for sot",
        "unknown task",
        "bad checkpoint",
    ],
)
def test_bad_input_exits_2_naming_it_and_leaves_no_output(case, inputs, tmp_path, caplog):
    args, message = _bad_cases(inputs)[case]
    out = tmp_path / "out"
    assert run_main([*args, "--output", str(out)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


def test_a_damaged_image_found_mid_run_leaves_no_output(checkpoint, inputs, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(frame(0)).save(folder / "a.png")
    Image.fromarray(frame(1)).save(folder / "b.png")
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])  # a valid header, cut pixels
    out = tmp_path / "out"
    args = ["--task", "det", "--prompt", "square", "--input", str(folder)]
    assert run_main([*args, "--output", str(out), "--checkpoint", str(checkpoint)]) == 2
    assert "b.png" in caplog.text
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_asking_for_cuda_without_it_is_bad_input(inputs, tmp_path, caplog):
    args = ["--task", "det", "--prompt", "cat", "--input", str(inputs["images"])]
    assert run_main([*args, "--output", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in caplog.text


def test_the_command_line_prints_one_line_and_no_traceback(inputs, tmp_path):
    for args in (
        ["--task", "sot", "--box", "80,20,30,20", "--input", str(inputs["video"])],
        ["--task", "nope", "--input", str(inputs["video"])],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "unipercept.predict", *args, "--output", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "o").exists()
