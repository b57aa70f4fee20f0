from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.data.datasets.base import DatasetError
from unipercept.data.datasets.davis import DavisReader

FIXTURES = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures"
SIZE = (12, 16)  # (height, width)


def write_jpeg(path: Path, size: tuple[int, int] = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (90, 120, 30)).save(path)


def write_palette_png(path: Path, index: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(index.astype(np.uint8))
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [200] * (256 * 3 - 9))
    image.save(path)


def davis_tree(root: Path, year: str = "2017") -> dict[str, np.ndarray]:
    """Sequence "bear": 3 frames, PNGs for frames 0 and 1 only (frame 2 is unannotated)."""
    first = np.zeros(SIZE, dtype=np.uint8)
    first[2:5, 3:7] = 1
    first[6:10, 8:12] = 2
    first[0, 0:2] = 255
    second = np.zeros(SIZE, dtype=np.uint8)
    second[7:11, 9:14] = 2
    pngs = {"00000": first, "00001": second}
    for stem in ("00000", "00001", "00002"):
        write_jpeg(root / "JPEGImages" / "480p" / "bear" / f"{stem}.jpg")
    for stem, index in pngs.items():
        write_palette_png(root / "Annotations" / "480p" / "bear" / f"{stem}.png", index)
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "train.txt").write_text("bear\n\n")
    return pngs


def test_davis2017_objects_void_and_unannotated_frames(tmp_path):
    pngs = davis_tree(tmp_path)
    (sample,) = DavisReader(root=tmp_path).samples()
    assert sample.dataset == "davis2017" and sample.sample_id == "bear"
    assert sample.categories == ()
    assert [f.image.name for f in sample.frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert [f.annotated for f in sample.frames] == [True, True, False]
    first, second, third = sample.frames
    assert first.instances.track_ids.tolist() == [1, 2, -1]
    assert first.ignore.tolist() == [False, False, True]
    assert first.instances.labels.tolist() == [0, 0, 0]
    masks = first.instances.masks.decode()
    for row, value in enumerate((1, 2, 255)):
        assert torch.equal(masks[row], torch.from_numpy(pngs["00000"] == value))
    assert first.instances.boxes[0].tolist() == [3.0, 2.0, 7.0, 5.0]
    # Object 1 left the scene: only object 2 remains, with the same id.
    assert second.instances.track_ids.tolist() == [2]
    assert second.ignore.tolist() == [False]
    assert len(third.instances) == 0 and third.ignore.shape == (0,)
    assert third.image_size == SIZE


def test_davis2016_binary_masks_are_one_object(tmp_path):
    davis_tree(tmp_path, year="2016")
    (sample,) = DavisReader(root=tmp_path, year="2016").samples()
    assert sample.dataset == "davis2016"
    first = sample.frames[0]
    assert first.ignore is None
    assert first.instances.track_ids.tolist() == [1]
    # All non-zero pixels (objects 1, 2 and 255 alike) are the one 2016 object.
    assert int(first.instances.masks.area()[0]) == 12 + 16 + 2


def test_missing_split_file_raises(tmp_path):
    with pytest.raises(DatasetError, match="ImageSets.*split val"):
        DavisReader(root=tmp_path, split="val").samples()


def test_annotation_without_image_names_the_png_and_frame(tmp_path):
    davis_tree(tmp_path)
    write_palette_png(tmp_path / "Annotations/480p/bear/00007.png", np.zeros(SIZE))
    with pytest.raises(DatasetError, match=r"00007\.png: sequence bear frame 00007: has no image"):
        DavisReader(root=tmp_path).samples()


def test_missing_images_folder_is_reported(tmp_path):
    davis_tree(tmp_path)
    (tmp_path / "ImageSets/2017/train.txt").write_text("bear\ncows\n")
    with pytest.raises(DatasetError, match=r"JPEGImages.480p.cows: sequence cows: no frame ima"):
        DavisReader(root=tmp_path).samples()


def test_missing_annotation_folder_is_reported(tmp_path):
    davis_tree(tmp_path)
    write_jpeg(tmp_path / "JPEGImages/480p/cows/00000.jpg")
    (tmp_path / "ImageSets/2017/train.txt").write_text("bear\ncows\n")
    with pytest.raises(DatasetError, match=r"Annotations.480p.cows: sequence cows: annotation fo"):
        DavisReader(root=tmp_path).samples()


def test_mask_of_wrong_size_is_reported(tmp_path):
    davis_tree(tmp_path)
    write_palette_png(tmp_path / "Annotations/480p/bear/00001.png", np.zeros((6, 8)))
    with pytest.raises(DatasetError, match=r"00001\.png: sequence bear frame 00001: mask size"):
        DavisReader(root=tmp_path).samples()


def test_skip_mode_counts_and_skips(tmp_path):
    davis_tree(tmp_path)
    write_palette_png(tmp_path / "Annotations/480p/bear/00001.png", np.zeros((6, 8)))
    write_jpeg(tmp_path / "JPEGImages/480p/cows/00000.jpg")
    (tmp_path / "ImageSets/2017/train.txt").write_text("bear\ncows\n")
    reader = DavisReader(root=tmp_path, on_error="skip")
    samples = reader.samples()
    assert [s.sample_id for s in samples] == ["bear"]
    assert dict(reader.skipped) == {"annotation": 1, "sequence": 1}
    # The badly sized annotation is dropped; its frame stays, unannotated, to keep time steps.
    assert [f.annotated for f in samples[0].frames] == [True, False, False]


def test_unpadded_frames_are_in_natural_order(tmp_path):
    """Frames 0..11 named without zero padding read as 0, 1, 2, ..., 10, 11 (as ``predict``
    lists them), not in name order (0, 1, 10, 11, 2, ...)."""
    index = np.zeros(SIZE, dtype=np.uint8)
    index[2:5, 3:7] = 1
    for t in range(12):
        write_jpeg(tmp_path / "JPEGImages" / "480p" / "bear" / f"{t}.jpg")
    write_palette_png(tmp_path / "Annotations" / "480p" / "bear" / "0.png", index)
    write_palette_png(tmp_path / "Annotations" / "480p" / "bear" / "10.png", index)
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "train.txt").write_text("bear\n")
    (sample,) = DavisReader(root=tmp_path).samples()
    assert [f.image.stem for f in sample.frames] == [str(t) for t in range(12)]
    assert [t for t, f in enumerate(sample.frames) if f.annotated] == [0, 10]


def test_png_frames_are_frames(tmp_path):
    """JPEGImages holding PNG frames (which ``evaluate --images`` takes) read like JPEGs."""
    davis_tree(tmp_path)
    folder = tmp_path / "JPEGImages" / "480p" / "bear"
    for jpeg in sorted(folder.glob("*.jpg")):
        with Image.open(jpeg) as image:
            image.save(jpeg.with_suffix(".png"))
        jpeg.unlink()
    (sample,) = DavisReader(root=tmp_path).samples()
    assert [f.image.name for f in sample.frames] == ["00000.png", "00001.png", "00002.png"]
    assert [f.annotated for f in sample.frames] == [True, True, False]
    assert sample.frames[0].instances.track_ids.tolist() == [1, 2, -1]


def test_blackswan_reference_sequence(tmp_path):
    source = FIXTURES / "davis2016_blackswan"
    if not source.is_dir():
        pytest.skip(f"reference fixture {source} not found (only beside the project's checkouts)")
    for kind in ("JPEGImages", "Annotations"):
        folder = tmp_path / kind / "480p" / "blackswan"
        folder.mkdir(parents=True)
        for file in sorted((source / kind).iterdir()):
            (folder / file.name).symlink_to(file)
    (tmp_path / "ImageSets/2016").mkdir(parents=True)
    (tmp_path / "ImageSets/2016/val.txt").write_text("blackswan\n")
    (sample,) = DavisReader(root=tmp_path, year="2016", split="val").samples()
    assert len(sample.frames) == 50
    for frame in sample.frames:
        assert frame.image_size == (480, 854) and frame.annotated
        assert frame.instances.track_ids.tolist() == [1]
        png = source / "Annotations" / frame.image.with_suffix(".png").name
        expected = torch.from_numpy(np.array(Image.open(png)) > 0)
        assert torch.equal(frame.instances.masks.decode()[0], expected)
