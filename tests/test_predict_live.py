"""``python -m unipercept.predict`` on live sources: an HTTP stream served from a loopback
server (the same MP4 the file tests read, so the answers can be compared), ``--max-frames``,
Ctrl-C ending a live job cleanly (sent from the source after a set number of frames, so the
test does not depend on timing), a live job never resumed, and capture devices that are not
there."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from unipercept import predict
from unipercept.data.video import StreamSource, is_stream, open_frames

from .test_predict import (
    FRAMES,
    HEIGHT,
    WIDTH,
    _without_info,
    checkpoint,  # noqa: F401  (a fixture)
    inputs,  # noqa: F401  (a fixture)
    run_main,
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(inputs):  # noqa: F811
    """The URL of the test clip on a loopback HTTP server."""
    handler = functools.partial(_Quiet, directory=str(inputs["root"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
    server.shutdown()
    server.server_close()
    thread.join()


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def _mot(source: str, out: Path, checkpoint: Path, *extra: str) -> list[str]:  # noqa: F811
    args = ["--task", "mot", "--prompt", "square. circle", "--score-threshold", "0"]
    return [*args, "--input", source, "--output", str(out), "--checkpoint", str(checkpoint), *extra]


def _frames_only(predictions: dict) -> dict:
    """The answers, without what names the source (file name, URL)."""
    for image in predictions["images"]:
        image.pop("file_name")
    predictions["videos"][0].pop("file_name")
    predictions["videos"][0].pop("fps", None)
    return predictions


def test_what_counts_as_a_live_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for live in ("rtsp://camera/stream", "HTTP://host/clip.mp4", "https://h/x", "/dev/video0", "0"):
        assert is_stream(live), live
    (tmp_path / "3").mkdir()  # a folder named like a device number is a folder
    for files in ("clip.mp4", "3", "frames/*.png", "ftp://host/clip.mp4", "/dev/nothing/x"):
        assert not is_stream(files), files
    if Path("/dev/shm").is_dir():  # a folder under /dev is not a device
        assert not is_stream("/dev/shm") and is_stream("/dev/null")


def test_an_http_stream_with_max_frames_answers_as_the_file_does(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    served,
    tmp_path,
):
    """The served MP4 decodes to the file's frames: the first 4 frames' answers (track ids
    included) are the file's, and the frames after them are never answered."""
    assert run_main(_mot(served, tmp_path / "live", checkpoint, "--max-frames", "4")) == 0
    live = json.loads((tmp_path / "live" / "predictions.json").read_text())
    assert [i["frame_index"] for i in live["images"]] == [0, 1, 2, 3]
    assert live["videos"][0]["length"] == 4 and live["info"]["max_frames"] == 4
    assert not (tmp_path / "live" / predict.JOB_DIR).exists()

    assert (
        run_main(_mot(str(inputs["video"]), tmp_path / "file", checkpoint, "--max-frames", "4"))
        == 0
    )
    from_file = json.loads((tmp_path / "file" / "predictions.json").read_text())
    live.pop("info"), from_file.pop("info")
    assert live["annotations"] and _frames_only(live) == _frames_only(from_file)


def test_a_live_output_is_not_resumed_or_replaced_without_overwrite(
    checkpoint,  # noqa: F811
    served,
    tmp_path,
    monkeypatch,
    caplog,
):
    """A live job stopped hard (a second Ctrl-C, a crash) leaves its frames, but a rerun into
    the folder is refused (a stream cannot give the same frames again) until --overwrite."""
    from unipercept.tasks.session import VideoSession

    out = tmp_path / "out"
    original = VideoSession.step

    def step(self, frame):
        if self.frames_seen == 2:
            raise KeyboardInterrupt  # as a second Ctrl-C inside a step
        return original(self, frame)

    monkeypatch.setattr(VideoSession, "step", step)
    assert run_main(_mot(served, out, checkpoint)) == 130
    assert "cannot be resumed" in _errors(caplog)[-1]
    assert not (out / predict.JOB_DIR / "session.pt").exists()  # a live job saves no session
    monkeypatch.setattr(VideoSession, "step", original)

    caplog.clear()
    assert run_main(_mot(served, out, checkpoint)) == 2
    (error,) = _errors(caplog)
    assert "live source" in error and "cannot be resumed" in error and "--overwrite" in error
    assert run_main(_mot(served, out, checkpoint, "--max-frames", "2", "--overwrite")) == 0
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 2

    caplog.clear()
    assert run_main(_mot(served, out, checkpoint, "--max-frames", "2")) == 2
    assert "already holds predictions.json" in _errors(caplog)[0]


def test_a_live_job_stopped_before_its_first_frame_leaves_nothing(
    checkpoint,  # noqa: F811
    served,
    tmp_path,
    monkeypatch,
):
    """Nothing was answered, so nothing is kept: the same command runs again as is."""
    from unipercept.tasks.session import VideoSession

    out = tmp_path / "deep" / "out"
    job = predict.Job(task="mot", input=served, prompt="square", checkpoint=str(checkpoint))

    def step(self, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoSession, "step", step)
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out)
    assert not (tmp_path / "deep").exists()
    monkeypatch.undo()
    assert predict.run(predict.Job(**{**job.key(), "max_frames": 1}), out).is_file()


def _sigint_after(monkeypatch, frames: int) -> None:
    """The live source sends the process a SIGINT (Ctrl-C) just before it gives frame
    ``frames``, the way a user's Ctrl-C lands while the next frame is awaited."""
    original = StreamSource.__iter__

    def iterate(self):
        for index, frame in original(self):
            if index == frames:
                os.kill(os.getpid(), signal.SIGINT)
            yield index, frame

    monkeypatch.setattr(StreamSource, "__iter__", iterate)


@pytest.mark.parametrize(("task", "batch"), [("vis", 1), ("det", 2)])
def test_ctrl_c_ends_a_live_job_cleanly_with_the_frames_so_far(
    checkpoint,  # noqa: F811
    served,
    tmp_path,
    monkeypatch,
    caplog,
    task,
    batch,
):
    """Ctrl-C at frame 3: frames 0-2 are answered, the session is closed (its track summaries
    are written), the overlay drawn as the frames came holds them, predictions.json is
    written, the exit code is 0 and a message says where it stopped."""
    _sigint_after(monkeypatch, 3)
    out = tmp_path / "out"
    args = ["--task", task, "--prompt", "square. circle", "--score-threshold", "0"]
    args += ["--input", served, "--output", str(out), "--checkpoint", str(checkpoint)]
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background
    assert run_main([*args, "--save-video", "--batch-size", str(batch)]) == 0
    assert signal.getsignal(signal.SIGINT) is before  # restored
    predictions = json.loads((out / "predictions.json").read_text())
    assert [i["frame_index"] for i in predictions["images"]] == [0, 1, 2]
    assert {a["image_id"] for a in predictions["annotations"]} == {1, 2, 3}
    if task == "vis":  # the session was closed: its track summaries are there
        tracked = {a["track_id"] for a in predictions["annotations"]}
        assert {t["track_id"] for t in predictions["tracks"]} == tracked
    with open_frames(out / "clip.overlay.mp4") as overlay:
        assert overlay.info.num_frames == 3 and (overlay.info.height, overlay.info.width) == (
            HEIGHT,
            WIDTH,
        )
    assert not (out / predict.JOB_DIR).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("stopped at frame 3 (Ctrl-C)" in w for w in warnings), warnings


def test_a_ctrl_c_on_a_file_still_leaves_a_resumable_job(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    tmp_path,
):
    """The same Ctrl-C on a video file keeps the job for a rerun: exit 130, then the rerun
    finishes with the uninterrupted answers."""
    job = predict.Job(
        task="mot", input=str(inputs["video"]), prompt="square", checkpoint=str(checkpoint)
    )
    expected = _without_info(predict.run(job, tmp_path / "straight"))

    def interrupt(done: int) -> None:
        if done == 2:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out, on_frame=interrupt)
    assert (out / predict.JOB_DIR / "session.pt").is_file()
    frames = []
    assert _without_info(predict.run(job, out, on_frame=frames.append)) == expected
    assert frames == list(range(3, FRAMES + 1))  # resumed after frame 2


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("/dev/video97", "/dev/video97: live source: no capture device /dev/video97"),
        ("97", "97: live source: no capture device /dev/video97"),
    ],
)
def test_a_capture_device_that_is_not_there_is_one_line(tmp_path, caplog, device, message):
    if not Path("/dev").is_dir():
        pytest.skip("no /dev on this system")
    out = tmp_path / "out"
    assert (
        run_main(["--task", "mot", "--prompt", "cat", "--input", device, "--output", str(out)]) == 2
    )
    (error,) = _errors(caplog)
    assert error == f"error: --input: {message}"
    assert not out.exists()


def test_a_stream_that_cannot_be_opened_is_one_line(served, tmp_path, caplog):
    missing = served.replace("clip.mp4", "missing.mp4")
    out = tmp_path / "out"
    assert (
        run_main(["--task", "det", "--prompt", "cat", "--input", missing, "--output", str(out)])
        == 2
    )
    (error,) = _errors(caplog)
    assert missing in error and "cannot be opened" in error and "404" in error
    assert not out.exists()


def test_a_stream_source_decodes_the_served_file_and_reconnects(inputs, served):  # noqa: F811
    with open_frames(inputs["video"]) as file:
        expected = [frame for _, frame in file]
    with StreamSource(served) as stream:
        assert (stream.info.height, stream.info.width) == (HEIGHT, WIDTH)
        first = list(stream)
        again = [index for index, _ in stream]  # a second pass reconnects, from frame 0
    assert [index for index, _ in first] == again == list(range(FRAMES))
    assert all(a.equal(b) for (_, a), b in zip(first, expected, strict=True))
