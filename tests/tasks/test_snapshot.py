"""A video session saved mid-video and restored into a fresh one goes on exactly as if it had
never stopped (what lets ``unipercept.predict`` resume an interrupted video)."""

from __future__ import annotations

import pickle

import pytest
import torch

from unipercept.structures import AnnotationPrompt, ExpressionPrompt
from unipercept.tasks.snapshot import load_snapshot, save_snapshot

from .test_video_tasks import TRACKERS, moving_video, predictor  # noqa: F401  (fixture)

FRAMES, STOP = 7, 4


def _start(predictor, task: str, frames, tracker: str | None):  # noqa: F811
    if task in ("sot", "vos"):
        box = [8.0, 20.0, 28.0, 40.0]
        mask = torch.zeros(frames[0].shape[1:], dtype=torch.bool)
        mask[20:40, 8:28] = True
        prompt = (
            AnnotationPrompt(frames[0], box=box)
            if task == "sot"
            else AnnotationPrompt(frames[0], mask=mask)
        )
        return predictor.start(task, prompt, score_threshold=0.0, update_interval=2)
    if task == "rvos":
        return predictor.start(task, ExpressionPrompt("the red square"), vote=True)
    return predictor.start(task, "square. circle", tracker=TRACKERS[tracker], score_threshold=0.0)


def _as_lists(result) -> dict:
    return {
        name: (value.decode() if hasattr(value, "decode") else value).tolist()
        for name, value in result.fields().items()
    }


CASES = [
    ("sot", None),
    ("vos", None),
    ("mot", "qdtrack"),
    ("mot", "bytetrack"),
    ("mots", "flow"),
    ("vis", "idol"),
    ("rvos", None),
]


@pytest.mark.parametrize(("task", "tracker"), CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_a_restored_session_continues_like_the_uninterrupted_one(
    predictor,  # noqa: F811
    tmp_path,
    task,
    tracker,
):
    frames = moving_video(FRAMES)
    with _start(predictor, task, frames, tracker) as straight:
        expected = [_as_lists(straight.step(f)) for f in frames]
        expected_summary = straight.close()

    first = _start(predictor, task, frames, tracker)
    head = [_as_lists(first.step(f)) for f in frames[:STOP]]
    path = save_snapshot(tmp_path / "session.pt", first, {"frames": STOP})
    del first  # the process that was interrupted

    second = _start(predictor, task, frames, tracker)
    assert load_snapshot(path, second) == {"frames": STOP}
    assert second.frames_seen == STOP
    tail = [_as_lists(second.step(f)) for f in frames[STOP:]]
    assert head + tail == expected
    assert second.close() == expected_summary


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_snapshot_is_read_without_unpickling_code(predictor, tmp_path):  # noqa: F811
    """A file that would run code when unpickled is refused, naming the file."""
    frames = moving_video(2)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "session.pt"
    with open(path, "wb") as file:
        pickle.dump({"session": Exploit()}, file)
    session = _start(predictor, "mot", frames, "qdtrack")
    with pytest.raises(ValueError, match="not a session snapshot"):
        load_snapshot(path, session)


def test_a_snapshot_of_another_session_type_is_refused(predictor, tmp_path):  # noqa: F811
    frames = moving_video(2)
    sot = _start(predictor, "sot", frames, None)
    sot.step(frames[0])
    path = save_snapshot(tmp_path / "session.pt", sot, {"frames": 1})
    with pytest.raises(ValueError, match="AnnotationSession"):
        load_snapshot(path, _start(predictor, "mot", frames, "qdtrack"))
