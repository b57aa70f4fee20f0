from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.structures import Instances, RLEMasks
from unipercept.visualize import color_for, draw_instances, save_png


def _image(height: int = 64, width: int = 80, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def _pixel(image: torch.Tensor, y: int, x: int) -> tuple[int, int, int]:
    return tuple(image[:, y, x].tolist())


def _rect_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros((1, height, width), dtype=torch.bool)
    mask[0, y0:y1, x0:x1] = True
    return mask


def test_color_for_is_stable_and_distinct():
    assert color_for(1) == color_for(1)
    assert color_for(1) != color_for(2)
    # Neighbours differ clearly, not by a rounding step.
    assert sum(abs(a - b) for a, b in zip(color_for(1), color_for(2), strict=True)) > 100
    assert all(0 <= c <= 255 for key in (-3, 0, 10**9) for c in color_for(key))


def test_box_outline_has_its_colour_and_leaves_the_rest_alone():
    image = _image()
    instances = Instances((64, 80), boxes=torch.tensor([[20.0, 30.0, 40.0, 50.0]]))
    drawn = draw_instances(image, instances)
    color = color_for(0)  # no track ids or labels: coloured by index
    for y, x in [(30, 25), (31, 25), (40, 20), (40, 21), (40, 39), (40, 38), (49, 25), (48, 25)]:
        assert _pixel(drawn, y, x) == color, (y, x)
    assert _pixel(drawn, 40, 30) == _pixel(image, 40, 30)  # inside, away from the outline
    outside = torch.ones((64, 80), dtype=torch.bool)
    outside[30:50, 20:40] = False
    assert torch.equal(drawn[:, outside], image[:, outside])


def test_colour_follows_track_id_then_label():
    image = _image()
    box = torch.tensor([[20.0, 30.0, 40.0, 50.0]])
    labels = torch.tensor([3])
    by_label = draw_instances(image, Instances((64, 80), boxes=box, labels=labels))
    by_track = draw_instances(
        image, Instances((64, 80), boxes=box, labels=labels, track_ids=torch.tensor([7]))
    )
    assert _pixel(by_label, 40, 20) == color_for(3)
    assert _pixel(by_track, 40, 20) == color_for(7)


@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_mask_interior_is_the_alpha_blend(alpha):
    image = _image(80, 80)
    masks = _rect_mask(80, 80, 30, 70, 30, 70)
    instances = Instances(
        (80, 80), masks=masks, scores=torch.tensor([0.9]), labels=torch.tensor([2])
    )
    drawn = draw_instances(image, instances, mask_alpha=alpha)
    color = np.asarray(color_for(2), dtype=np.float64)
    original = image[:, 60, 60].double().numpy()
    expected = (1 - alpha) * original + alpha * color
    assert np.abs(drawn[:, 60, 60].double().numpy() - expected).max() <= 1.0
    assert _pixel(drawn, 30, 60) == color_for(2)  # 1-px contour in the full colour
    inside_contour = (1 - alpha) * image[:, 31, 60].double().numpy() + alpha * color
    assert np.abs(drawn[:, 31, 60].double().numpy() - inside_contour).max() <= 1.0  # 1 px only
    assert _pixel(drawn, 5, 75) == _pixel(image, 5, 75)


def test_input_image_is_not_modified():
    image = _image()
    before = image.clone()
    instances = Instances(
        (64, 80),
        boxes=torch.tensor([[5.0, 5.0, 30.0, 30.0]]),
        masks=_rect_mask(64, 80, 5, 30, 5, 30),
        scores=torch.tensor([0.5]),
        labels=torch.tensor([0]),
        track_ids=torch.tensor([4]),
    )
    drawn = draw_instances(image, instances, names=["cat"])
    assert torch.equal(image, before)
    assert drawn.data_ptr() != image.data_ptr()
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8


def _caption_difference(box: list[float]) -> torch.Tensor:
    """(H, W) bool: the pixels a caption changes for one box (drawn with and without it)."""
    image = _image()
    instances = Instances((64, 80), boxes=torch.tensor([box]), scores=torch.tensor([0.87]))
    with_caption = draw_instances(image, instances)
    without_caption = draw_instances(image, instances, show_scores=False)
    return (with_caption != without_caption).any(dim=0)


def test_caption_appears_above_the_box_top_left():
    changed = _caption_difference([20.0, 40.0, 60.0, 60.0])
    assert changed.any()
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert ys.max() < 40 and ys.min() >= 40 - 20  # just above the box's top edge
    assert xs.min() >= 20 and xs.min() <= 22


def test_caption_of_a_box_at_the_top_edge_stays_inside_the_image():
    changed = _caption_difference([20.0, 0.0, 60.0, 30.0])
    assert changed.any()  # drawn at negative rows it would be clipped away entirely
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert ys.min() >= 0 and ys.max() < 20  # moved below the top edge, inside the box
    assert xs.min() >= 20


def _luminance(color: tuple[int, int, int]) -> float:
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in color]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


@pytest.mark.parametrize("label", [0, 1, 2, 6])
def test_caption_background_and_contrasting_text(label):
    image = _image()
    instances = Instances(
        (64, 80), boxes=torch.tensor([[10.0, 40.0, 60.0, 60.0]]), labels=torch.tensor([label])
    )
    drawn = draw_instances(image, instances, names=["person"] * 8)
    # The box starts at row 40, so every changed pixel above it belongs to the caption.
    changed = (drawn != image).any(dim=0)  # (H, W)
    changed[40:] = False
    region = drawn[:, changed].T.int()  # (num_pixels, 3)
    assert len(region) > 50
    color = color_for(label)
    assert color in {tuple(p) for p in region.tolist()}
    # WCAG contrast ratios; the glyphs are anti-aliased, so look for near-black / near-white.
    black_wins = (_luminance(color) + 0.05) / 0.05 >= 1.05 / (_luminance(color) + 0.05)
    if black_wins:
        assert region.sum(dim=1).min() < 60
    else:
        assert region.sum(dim=1).max() > 3 * 255 - 60


def test_label_outside_names_is_shown_as_its_number():
    image = _image()
    instances = Instances(
        (64, 80), boxes=torch.tensor([[10.0, 40.0, 60.0, 60.0]]), labels=torch.tensor([5])
    )
    unnamed = draw_instances(image, instances)
    assert torch.equal(draw_instances(image, instances, names=["a", "b"]), unnamed)
    named = draw_instances(image, instances, names=["a", "b", "c", "d", "e", "dog"])
    assert not torch.equal(named, unnamed)


def test_wrong_sizes_raise():
    image = _image()
    with pytest.raises(ValueError, match=r"\(64, 80\).*\(64, 81\)"):
        draw_instances(image, Instances((64, 81), boxes=torch.zeros((1, 4))))
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(image.float(), Instances((64, 80), boxes=torch.zeros((1, 4))))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        draw_instances(image[:2], Instances((64, 80), boxes=torch.zeros((1, 4))))


def test_empty_instances_give_an_identical_copy():
    image = _image()
    drawn = draw_instances(image, Instances((64, 80), boxes=torch.zeros((0, 4))))
    assert torch.equal(drawn, image)
    assert drawn.data_ptr() != image.data_ptr()


def test_rle_masks_draw_like_dense_masks():
    image = _image()
    dense = torch.zeros((2, 64, 80), dtype=torch.bool)
    dense[0, 10:30, 5:40] = True
    dense[1, 25:60, 30:75] = True
    fields = dict(
        scores=torch.tensor([0.9, 0.4]),
        labels=torch.tensor([0, 1]),
        track_ids=torch.tensor([1, 2]),
    )
    from_dense = draw_instances(image, Instances((64, 80), masks=dense, **fields))
    from_rle = draw_instances(
        image, Instances((64, 80), masks=RLEMasks.from_dense(dense), **fields)
    )
    assert not torch.equal(from_dense, image)
    assert torch.equal(from_rle, from_dense)


def test_save_png_round_trips_without_leftovers(tmp_path):
    image = _image()
    path = save_png(image, tmp_path / "out.png")
    assert path == tmp_path / "out.png"
    assert os.listdir(tmp_path) == ["out.png"]
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        pixels = torch.from_numpy(np.array(saved.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(pixels, image)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_png_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_png(_image(), path)
    assert os.listdir(tmp_path) == ["out.png"]
    assert path.read_bytes() == b"old"


def test_captions_of_a_crowded_image_do_not_cover_each_other():
    """Twelve overlapping boxes on a 320x256 frame: every caption keeps its own area (placed
    above, inside or under its box), so each one's full background is visible."""
    from unipercept.visualize import _place_caption

    boxes = [(20 + 18 * (i % 6), 60 + 14 * (i // 6), 90 + 18 * (i % 6), 120) for i in range(12)]
    taken: list = []
    for box in boxes:
        rect = _place_caption((60, 11), box, taken, (256, 320))
        assert rect[0] >= 0 and rect[1] >= 0 and rect[2] <= 320 and rect[3] <= 256
        taken.append(rect)
    overlaps = sum(
        max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        for i, a in enumerate(taken)
        for b in taken[i + 1 :]
    )
    # Three spots per box cannot always avoid all others; the old layout (always above the
    # box) overlapped on every pair in a row.
    assert overlaps < 0.25 * sum((r[2] - r[0]) * (r[3] - r[1]) for r in taken)


def test_text_and_lines_grow_with_the_image():
    from unipercept.visualize import _style

    small, large = _style(256, 320), _style(1080, 1920)
    assert small == (9, 2)
    assert large[0] >= 3 * small[0] and large[1] >= 4
    image = torch.zeros((3, 1080, 1920), dtype=torch.uint8)
    box = Instances((1080, 1920), boxes=torch.tensor([[200.0, 300.0, 800.0, 900.0]]))
    drawn = draw_instances(image, box)
    assert (drawn[:, 600, 200 : 200 + large[1]] > 0).all()  # the left edge, large[1] px wide
    assert (drawn[:, 600, 200 + large[1]] == 0).all()
