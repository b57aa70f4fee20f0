"""``python -m unipercept.predict`` on a folder of videos: one video task over every video file
and folder of frames in it, ``predictions/<video>.json`` each (what a job on that video alone
writes) and ``predictions.json`` as their index; resumable video by video."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from unipercept import predict
from unipercept.data.video import VideoWriter

from .test_predict import (
    FRAMES,
    HEIGHT,
    WIDTH,
    _without_info,
    checkpoint,  # noqa: F401  (a fixture)
    frame,
    inputs,  # noqa: F401  (a fixture)
    run_main,
)

SECOND = 4  # frames of the second video


@pytest.fixture(scope="module")
def videos(inputs, tmp_path_factory) -> Path:  # noqa: F811
    """``a.mp4`` (the test clip) and ``b/`` (4 PNG frames of another scene), and files that
    are neither (skipped)."""
    folder = tmp_path_factory.mktemp("videos")
    shutil.copy(inputs["video"], folder / "a.mp4")
    (folder / "b").mkdir()
    for index in range(SECOND):
        Image.fromarray(frame(5 - index)).save(folder / "b" / f"{index:05d}.png")
    (folder / "notes.txt").write_text("not a video")
    (folder / "empty").mkdir()
    return folder


def _job(folder: Path, checkpoint: Path, task: str = "mots") -> predict.Job:  # noqa: F811
    return predict.Job(
        task=task,
        input=str(folder),
        prompt="square. circle",
        checkpoint=str(checkpoint),
        score_threshold=0.0,
    )


def test_each_video_gets_the_predictions_it_gets_alone_and_an_index(
    checkpoint,  # noqa: F811
    videos,
    tmp_path,
):
    out = tmp_path / "out"
    args = ["--task", "mots", "--prompt", "square. circle", "--score-threshold", "0"]
    args += ["--input", str(videos), "--output", str(out), "--checkpoint", str(checkpoint)]
    # The command line picks its thread count from the load; the runs alone below use this
    # process's. The same count gives the same float sums, so near-tied scores keep their order.
    args += ["--threads", str(torch.get_num_threads())]
    assert run_main([*args, "--save-video"]) == 0
    index = json.loads((out / "predictions.json").read_text())
    assert index["info"]["task"] == "mots"
    assert [(v["id"], v["name"], v["length"]) for v in index["videos"]] == [
        (1, "a", FRAMES),
        (2, "b", SECOND),
    ]
    for entry in index["videos"]:
        alone = predict.run(_job(Path(entry["file_name"]), checkpoint), tmp_path / entry["name"])
        record = out / entry["predictions"]
        assert _without_info(record) == _without_info(alone)
        assert entry["annotations"] == len(json.loads(record.read_text())["annotations"]) > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a.overlay.mp4",
        "b.overlay.mp4",
        "predictions",
        "predictions.json",
    ]


def test_a_rerun_skips_finished_videos_and_resumes_the_interrupted_one(
    checkpoint,  # noqa: F811
    videos,
    tmp_path,
    monkeypatch,
):
    """Interrupted inside the second video's frame 3 (its session saved every 2 frames): the
    rerun leaves the first video's record alone and redoes the second from its frame 2."""
    from unipercept.tasks.session import VideoSession

    job = _job(videos, checkpoint, task="mot")
    straight = tmp_path / "straight"
    predict.run(job, straight, snapshot_every=2)
    original = VideoSession.step
    steps: list[int] = []

    def step(self, frame):
        if len(steps) == FRAMES + 3:
            raise KeyboardInterrupt
        steps.append(1)
        return original(self, frame)

    monkeypatch.setattr(VideoSession, "step", step)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out, snapshot_every=2)
    assert not (out / "predictions.json").exists()
    first = (out / "predictions" / "a.json").stat().st_mtime_ns
    assert not (out / "predictions" / "b.json").exists()

    steps.clear()
    monkeypatch.setattr(VideoSession, "step", lambda s, f: steps.append(1) or original(s, f))
    predict.run(job, out, snapshot_every=2)
    assert len(steps) == SECOND - 2
    assert (out / "predictions" / "a.json").stat().st_mtime_ns == first
    for name in ("a", "b"):
        record = Path("predictions") / f"{name}.json"
        assert _without_info(out / record) == _without_info(straight / record)
    assert _without_info(out / "predictions.json") == _without_info(straight / "predictions.json")
    assert not (out / predict.JOB_DIR).exists()


def test_bad_folders_of_videos_are_one_line(checkpoint, videos, tmp_path, caplog):  # noqa: F811
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(frame(0)).save(mixed / "0.png")
    shutil.copy(videos / "a.mp4", mixed / "a.mp4")
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    cases = [
        (["--task", "sot", "--box", "8,20,20,20", "--input", str(videos)], "folder of 2 videos"),
        (["--task", "mot", "--prompt", "x", "--input", str(mixed)], "both frame images and"),
        (["--task", "mot", "--prompt", "x", "--input", str(empty)], "no frame image, video file"),
    ]
    for args, message in cases:
        caplog.clear()
        out = tmp_path / "out"
        assert run_main([*args, "--output", str(out), "--checkpoint", str(checkpoint)]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and message in errors[0], errors
        assert not out.exists()


def test_a_record_someone_else_wrote_is_not_replaced_without_overwrite(
    checkpoint,  # noqa: F811
    tmp_path,
):
    folder = tmp_path / "clips"
    folder.mkdir()
    with VideoWriter(folder / "c.mp4", fps=5, width=WIDTH, height=HEIGHT) as writer:
        for index in range(2):
            writer.write(torch.from_numpy(frame(index)).permute(2, 0, 1).contiguous())
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "c.json").write_text("mine")
    with pytest.raises(predict.InputError, match="already holds predictions/c.json"):
        predict.run(_job(folder, checkpoint, task="mot"), out)
    assert (out / "predictions" / "c.json").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["predictions"]
    predict.run(_job(folder, checkpoint, task="mot"), out, overwrite=True)
    assert json.loads((out / "predictions" / "c.json").read_text())["videos"][0]["length"] == 2
