from __future__ import annotations

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from unipercept.structures import (
    RLEMasks,
    mask_iou,
    masks_to_boxes,
    paste_masks_in_image,
    polygons_to_mask,
    polygons_to_rle,
    resize_masks,
    rle_area,
    rle_decode,
    rle_encode,
    rle_iou,
)


def random_masks(num: int, size: tuple[int, int], seed: int, density: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, *size, generator=generator) < density


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(0, 4), st.integers(1, 17), st.integers(1, 23))))
def test_rle_round_trip_and_area(masks):
    rles = rle_encode(torch.from_numpy(masks))
    assert all(isinstance(rle["counts"], str) for rle in rles)
    decoded = rle_decode(rles, masks.shape[1:])
    assert torch.equal(decoded, torch.from_numpy(masks))
    assert rle_area(rles).tolist() == masks.sum(axis=(1, 2)).tolist()


def brute_mask_iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> float:
    inter = np.logical_and(a, b).sum()
    union = a.sum() if crowd else np.logical_or(a, b).sum()
    return float(inter / union) if union else 0.0


def test_rle_iou_and_dense_iou_match_brute_force():
    masks1 = random_masks(6, (21, 17), 0)
    masks2 = random_masks(4, (21, 17), 1, density=0.5)
    masks2[3] = False  # an empty mask
    crowd = [False, True, False, True]
    ours = rle_iou(rle_encode(masks1), rle_encode(masks2), crowd)
    a, b = masks1.numpy(), masks2.numpy()
    brute = np.array([[brute_mask_iou(x, y, c) for y, c in zip(b, crowd, strict=True)] for x in a])
    np.testing.assert_allclose(ours.numpy(), brute, atol=1e-12)
    dense = mask_iou(masks1, masks2)
    brute_plain = np.array([[brute_mask_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(dense.numpy(), brute_plain, atol=1e-6)
    assert rle_iou([], rle_encode(masks2)).shape == (0, 4)


def test_coco_annotations_decode_like_pycocotools(fixtures_dir):
    """Polygons and (uncompressed) crowd RLE of real COCO annotations give COCO's masks."""
    from pycocotools.coco import COCO

    coco = COCO(str(fixtures_dir / "coco_val2014_100" / "instances_val2014_100.json"))
    annotations = coco.loadAnns(coco.getAnnIds())
    crowd = [a for a in annotations if a["iscrowd"]]
    polygons = [a for a in annotations if not a["iscrowd"]][:60]
    assert len(crowd) == 9
    for annotation in polygons + crowd:
        image = coco.imgs[annotation["image_id"]]
        size = (image["height"], image["width"])
        expected = torch.from_numpy(coco.annToMask(annotation)).bool()
        if annotation["iscrowd"]:
            ours = rle_decode([annotation["segmentation"]], size)[0]
        else:
            ours = polygons_to_mask(annotation["segmentation"], size)
        assert torch.equal(ours, expected), annotation["id"]


def test_polygon_rectangle_area_and_empty_polygons():
    square = polygons_to_mask([[10, 10, 20, 10, 20, 20, 10, 20]], (40, 40))
    assert int(square.sum()) == 100
    assert bool(square[10:20, 10:20].all())
    two = polygons_to_rle([[0, 0, 4, 0, 4, 4, 0, 4], [30, 30, 34, 30, 34, 34, 30, 34]], (40, 40))
    assert rle_area([two]).item() == 32
    assert int(polygons_to_mask([], (5, 6)).sum()) == 0
    with pytest.raises(ValueError, match=r"polygons\[1\] must hold an even number"):
        polygons_to_mask([[0, 0, 4, 0, 4, 4], [1, 2, 3]], (10, 10))
    with pytest.raises(ValueError, match=r"polygons\[0\] holds non-finite"):
        polygons_to_mask([[0, 0, 4, float("nan"), 4, 4]], (10, 10))


def test_paste_masks_matches_scipy_bilinear_reference():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 7, 9, generator=generator)
    boxes = torch.tensor(
        [
            [3.2, 4.7, 20.5, 17.1],
            [0.0, 0.0, 30.0, 25.0],
            [-5.0, 10.0, 8.0, 30.0],
            [12.0, 3.0, 14.5, 6.0],
            [25.0, 20.0, 40.0, 35.0],
        ]
    )
    height, width = 25, 30
    ours = paste_masks_in_image(masks, boxes, (height, width), threshold=None)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    for index, (mask, (x0, y0, x1, y1)) in enumerate(
        zip(masks.numpy(), boxes.tolist(), strict=True)
    ):
        # align_corners=False: mask pixel j covers [j, j+1) of the box's mask grid.
        mask_rows = (rows + 0.5 - y0) / (y1 - y0) * mask.shape[0] - 0.5
        mask_cols = (cols + 0.5 - x0) / (x1 - x0) * mask.shape[1] - 0.5
        expected = ndimage.map_coordinates(
            mask.astype(np.float64), [mask_rows, mask_cols], order=1, mode="grid-constant", cval=0
        )
        np.testing.assert_allclose(ours[index].numpy(), expected, atol=1e-5)
    binary = paste_masks_in_image(masks, boxes, (height, width))
    assert binary.dtype == torch.bool and torch.equal(binary, ours >= 0.5)
    assert paste_masks_in_image(masks[:0], boxes[:0], (4, 5)).shape == (0, 4, 5)
    with pytest.raises(ValueError, match=r"boxes must have shape \(5, 4\)"):
        paste_masks_in_image(masks, boxes[:2], (height, width))


def test_paste_full_box_keeps_a_binary_mask():
    mask = torch.zeros(1, 10, 10)
    mask[0, 2:6, 3:8] = 1.0
    pasted = paste_masks_in_image(mask, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), (10, 10))
    assert torch.equal(pasted[0], mask[0].bool())


@pytest.mark.parametrize("size", [(40, 60), (9, 7), (20, 15)])
def test_resize_masks_matches_opencv_linear(size):
    masks = random_masks(3, (20, 15), 4, density=0.5).float()
    ours = resize_masks(masks, size)
    for mask, resized in zip(masks.numpy(), ours.numpy(), strict=True):
        expected = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(resized, expected, atol=1e-5)
    binary = resize_masks(masks.bool(), size)
    assert binary.dtype == torch.bool and torch.equal(binary, ours >= 0.5)
    assert resize_masks(masks[:0].bool(), size).shape == (0, *size)


def test_masks_to_boxes_matches_pycocotools():
    masks = random_masks(4, (13, 19), 5, density=0.05)
    masks[2] = False
    ours = masks_to_boxes(masks)
    fortran = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    xywh = mask_utils.toBbox(mask_utils.encode(fortran))
    expected = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    np.testing.assert_allclose(ours.numpy(), expected)
    np.testing.assert_allclose(RLEMasks.from_dense(masks).to_boxes().numpy(), expected)


def test_rle_masks_container():
    dense = random_masks(5, (8, 9), 6)
    rle = RLEMasks.from_dense(dense)
    assert len(rle) == 5 and rle.image_size == (8, 9)
    assert torch.equal(rle.decode(), dense)
    keep = torch.tensor([True, False, True, False, True])
    assert torch.equal(rle[keep].decode(), dense[keep])
    assert torch.equal(rle[torch.tensor([4, 0])].decode(), dense[[4, 0]])
    assert torch.equal(rle[1:3].decode(), dense[1:3])
    assert torch.equal(rle[2].decode(), dense[2:3])
    assert torch.equal(RLEMasks.cat([rle, rle[:1]]).decode(), torch.cat([dense, dense[:1]]))
    torch.testing.assert_close(rle.iou(rle), rle_iou(rle.rles, rle.rles))
    assert rle.area().tolist() == dense.flatten(1).sum(1).tolist()
    assert RLEMasks([], (3, 4)).decode().shape == (0, 3, 4)
    with pytest.raises(IndexError, match="bool index"):
        rle[torch.tensor([True])]
    with pytest.raises(ValueError, match="several image sizes"):
        RLEMasks.cat([rle, RLEMasks.from_dense(random_masks(1, (3, 3), 0))])
    with pytest.raises(ValueError, match=r"rles\[0\] has size \(8, 9\), expected \(9, 8\)"):
        RLEMasks(rle.rles, (9, 8))


def test_bad_mask_inputs_name_the_problem():
    with pytest.raises(ValueError, match="masks must be boolean"):
        rle_encode(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        rle_encode(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"rles\[0\] must be a dict with 'size' and 'counts'"):
        rle_decode([{"counts": "abc"}])
    mixed = rle_encode(random_masks(1, (3, 3), 0)) + rle_encode(random_masks(1, (4, 3), 0))
    with pytest.raises(ValueError, match="expected one size"):
        rle_decode(mixed)
    with pytest.raises(ValueError, match="needs image_size"):
        rle_decode([])
    with pytest.raises(ValueError, match="iscrowd has 1 flags for 2 masks"):
        rle_iou(mixed[:1], mixed[:1] * 2, [True])
    with pytest.raises(ValueError, match="mask sizes differ"):
        mask_iou(random_masks(1, (3, 3), 0), random_masks(1, (4, 3), 0))
