"""Streaming video input (files, folders, globs, lists) and the atomic MP4 writer."""

from __future__ import annotations

import os
import wave
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.video import (
    FolderSource,
    ImageListSource,
    VideoFileSource,
    VideoInfo,
    VideoWriter,
    natural_key,
    open_frames,
)

HEIGHT, WIDTH, SIDE = 64, 96, 16


def _square_frame(index: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """A dark frame with a bright square whose top-left corner moves 2 px right per frame."""
    # Built in numpy: small torch fills go multi-threaded, and crawl on a busy machine.
    frame = np.full((3, height, width), 20, dtype=np.uint8)
    x = (2 * index) % (width - SIDE)
    frame[:, 24 : 24 + SIDE, x : x + SIDE] = 230
    return torch.from_numpy(frame)


def _write_video(path, num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> None:
    with VideoWriter(path, fps=10, width=width, height=height) as writer:
        for index in range(num_frames):
            writer.write(_square_frame(index, height, width))


def _save_png(path, height: int, width: int, value: int = 0) -> None:
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


def test_written_video_reads_back_frame_by_frame(tmp_path):
    path = tmp_path / "square.mp4"
    _write_video(path, 40)
    with VideoFileSource(path) as source:
        assert source.info == VideoInfo(num_frames=40, fps=10.0, height=HEIGHT, width=WIDTH)
        count = 0
        for index, frame in source:
            assert index == count and frame.shape == (3, HEIGHT, WIDTH)
            assert frame.dtype == torch.uint8
            bright = (frame.float().mean(0) > 128).nonzero()
            # Lossy codec: the square is where it was drawn, to within a pixel or two.
            assert abs(int(bright[:, 1].min()) - (2 * index) % (WIDTH - SIDE)) <= 2
            assert abs(int(bright[:, 0].min()) - 24) <= 2
            count += 1
    assert count == 40


def test_iterating_again_starts_over(tmp_path):
    path = tmp_path / "again.mp4"
    _write_video(path, 5)
    source = open_frames(path)
    assert isinstance(source, VideoFileSource)
    assert [i for i, _ in source] == [0, 1, 2, 3, 4]
    assert [i for i, _ in source] == [0, 1, 2, 3, 4]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_long_video_is_streamed_not_accumulated(tmp_path):
    # The frames are views of PyAV's buffers, which tracemalloc does not see: the test watches
    # the frames themselves (freed once the caller drops them) and the resident memory.
    path = tmp_path / "long.mp4"
    num_frames, frame_bytes = 1200, 3 * 96 * 128
    _write_video(path, num_frames, height=96, width=128)
    refs, start, peak = [], _rss_bytes(), 0
    for index, frame in VideoFileSource(path):
        assert frame.shape == (3, 96, 128)
        refs.append(weakref.ref(frame))
        del frame
        if index % 50 == 0:
            peak = max(peak, _rss_bytes() - start)
    assert len(refs) == num_frames
    assert sum(ref() is not None for ref in refs) == 0
    # Keeping every frame would take 44 MB; decoding holds a few frames and the codec state.
    assert peak < num_frames * frame_bytes / 4


def test_folder_is_read_in_natural_order(tmp_path):
    for index in (10, 2, 1):
        _save_png(tmp_path / f"frame{index}.PNG", 8, 12, value=index)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert isinstance(source, FolderSource)
    assert source.info == VideoInfo(num_frames=3, fps=None, height=8, width=12)
    assert [int(frame[0, 0, 0]) for _, frame in source] == [1, 2, 10]
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


def test_glob_and_list_sources(tmp_path):
    for index in (3, 20, 100):
        _save_png(tmp_path / f"img_{index}.jpg", 8, 12, value=index)
    from_glob = open_frames(str(tmp_path / "img_*.jpg"))
    assert [path.name for path in from_glob.paths] == ["img_3.jpg", "img_20.jpg", "img_100.jpg"]
    assert len(list(from_glob)) == 3
    order = [tmp_path / "img_100.jpg", tmp_path / "img_3.jpg"]
    from_list = open_frames(order)
    assert isinstance(from_list, ImageListSource)
    values = [int(frame[0, 0, 0]) for _, frame in from_list]
    assert abs(values[0] - 100) <= 2 and abs(values[1] - 3) <= 2  # jpeg rounding


def test_mismatched_frame_sizes_name_the_file(tmp_path):
    _save_png(tmp_path / "f1.png", 8, 12)
    _save_png(tmp_path / "f2.png", 8, 14)
    source = FolderSource(tmp_path)
    with pytest.raises(DatasetError, match="f2.png"):
        list(source)


def test_corrupt_video_names_the_file(tmp_path):
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError, match="random.mp4"):
        open_frames(path)


def test_truncated_video_yields_the_complete_frames_then_names_the_file(tmp_path):
    # VideoWriter puts the index first, so the first half of the file still opens: the frames
    # before the cut are decoded, and the cut itself is a DatasetError naming the file.
    whole = tmp_path / "whole.mp4"
    noise = torch.Generator().manual_seed(0)
    with VideoWriter(whole, fps=10, width=WIDTH, height=HEIGHT) as writer:
        for _ in range(40):  # noise: every frame takes a similar share of the file
            writer.write(torch.randint(0, 256, (3, HEIGHT, WIDTH), generator=noise).byte())
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    seen = []
    with pytest.raises(DatasetError, match="cut.mp4"):
        for index, frame in VideoFileSource(cut):
            assert frame.shape == (3, HEIGHT, WIDTH)
            seen.append(index)
    assert 0 < len(seen) < 40 and seen == list(range(len(seen)))


def test_file_without_video_stream_is_rejected(tmp_path):
    path = tmp_path / "sound.wav"
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\0\0" * 800)
    with pytest.raises(DatasetError, match="no video stream"):
        open_frames(path)


def test_missing_paths_and_empty_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        open_frames(tmp_path / "nothing.mp4")
    with pytest.raises(FileNotFoundError, match="pattern"):
        open_frames(str(tmp_path / "*.png"))
    with pytest.raises(DatasetError, match="no image"):
        open_frames(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        VideoFileSource(tmp_path / "gone.mp4")
    with pytest.raises(ValueError, match="paths"):
        ImageListSource([])


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, fps=5, width=WIDTH, height=HEIGHT) as w:
        w.write(_square_frame(0))
        raise RuntimeError("rendering failed")
    assert not path.exists() and not list(tmp_path.iterdir())
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError), VideoWriter(path, fps=5, width=WIDTH, height=HEIGHT) as w:
        w.write(_square_frame(0))
        raise RuntimeError("rendering failed")
    assert path.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [path]


def test_writer_pads_odd_sizes_and_validates(tmp_path):
    path = tmp_path / "odd.mp4"
    _write_video(path, 3, height=33, width=47)
    assert VideoFileSource(path).info.height == 34 and VideoFileSource(path).info.width == 48
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "a.mp4", fps=0, width=8, height=8)
    with pytest.raises(ValueError, match="width"):
        VideoWriter(tmp_path / "a.mp4", fps=5, width=0, height=8)
    with pytest.raises(ValueError, match="path"):
        VideoWriter(tmp_path / "a.gif", fps=5, width=8, height=8)
    with VideoWriter(tmp_path / "b.mp4", fps=5, width=8, height=8) as writer:
        with pytest.raises(ValueError, match="frame"):
            writer.write(torch.zeros(3, 8, 9, dtype=torch.uint8))
        writer.write(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert len(list(open_frames(tmp_path / "b.mp4"))) == 1
