from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from unipercept.ops import roi_align

# The package re-exports the function under the module's name; reach the module itself.
roi_align_module = importlib.import_module("unipercept.ops.roi_align")
onnx_reference = pytest.importorskip("onnx.reference", reason="onnx is a dev dependency")
from onnx import helper  # noqa: E402


def onnx_roi_align(features, rois, output_size, scale, sampling_ratio, aligned):
    node = helper.make_node(
        "RoiAlign",
        ["X", "rois", "batch_indices"],
        ["Y"],
        output_height=output_size[0],
        output_width=output_size[1],
        sampling_ratio=sampling_ratio,
        spatial_scale=scale,
        mode="avg",
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    (out,) = onnx_reference.ReferenceEvaluator(node).run(
        None,
        {
            "X": features.numpy(),
            "rois": rois[:, 1:].numpy(),
            "batch_indices": rois[:, 0].long().numpy(),
        },
    )
    return torch.from_numpy(out)


def bilinear(feature: np.ndarray, y: float, x: float) -> float:
    """Mask R-CNN's bilinear read: 0 a pixel or more outside, border values just outside."""
    height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = min(max(y, 0.0), height - 1), min(max(x, 0.0), width - 1)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * feature[y0, x0]
        + (1 - ly) * lx * feature[y0, x1]
        + ly * (1 - lx) * feature[y1, x0]
        + ly * lx * feature[y1, x1]
    )


def brute_roi_align(features, rois, output_size, scale, sampling_ratio, aligned):
    """Direct loops over bins and samples, in float64."""
    pooled_h, pooled_w = output_size
    out = np.zeros((len(rois), features.shape[1], pooled_h, pooled_w))
    data = features.double().numpy()
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        start_x, start_y = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = x2 * scale - offset - start_x, y2 * scale - offset - start_y
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        count = max(grid_h * grid_w, 1)
        for c in range(features.shape[1]):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    total = 0.0
                    for iy in range(grid_h):
                        y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += bilinear(data[int(b), c], y, x)
                    out[k, c, ph, pw] = total / count
    return torch.from_numpy(out)


def random_rois(num: int, num_images: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Boxes of all sizes, some partly or wholly outside the image, some thinner than a pixel."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    corner = torch.rand(num, 2, generator=generator) * torch.tensor([width + 8.0, height + 8.0]) - 6
    extent = torch.rand(num, 2, generator=generator) * torch.tensor([width / 1.5, height / 1.5])
    extent[::5] *= 0.02
    batch = torch.randint(0, num_images, (num, 1), generator=generator).float()
    return torch.cat((batch, corner, corner + extent), dim=1)


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "legacy"])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize(("output_size", "scale"), [((7, 7), 0.5), ((3, 5), 1.0), ((1, 1), 0.25)])
def test_matches_onnx_reference(aligned, sampling_ratio, output_size, scale):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 13, 17, generator=generator)
    rois = random_rois(12, 2, (26, 34), seed=sampling_ratio + 5)
    ours = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    reference = onnx_roi_align(features, rois, output_size, scale, max(sampling_ratio, 0), aligned)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "legacy"])
def test_matches_brute_force_in_float64(aligned):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 2, 9, 11, generator=generator, dtype=torch.float64)
    rois = random_rois(10, 2, (9, 11), seed=2).double()
    ours = roi_align(features, rois, (4, 3), 1.0, -1, aligned)
    torch.testing.assert_close(ours, brute_roi_align(features, rois, (4, 3), 1.0, -1, aligned))


def test_list_of_boxes_equals_batch_index_rows():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(3, 4, 10, 10, generator=generator)
    per_image = [
        torch.tensor([[1.0, 1.0, 6.0, 8.0]]),
        torch.zeros(0, 4),
        torch.tensor([[0.0, 2.0, 9.0, 9.5], [3.0, 3.0, 4.0, 4.0]]),
    ]
    rows = torch.tensor([[0, 1.0, 1.0, 6.0, 8.0], [2, 0.0, 2.0, 9.0, 9.5], [2, 3.0, 3.0, 4.0, 4.0]])
    torch.testing.assert_close(
        roi_align(features, per_image, 5, aligned=True), roi_align(features, rows, 5, aligned=True)
    )


def test_chunked_evaluation_equals_one_pass(monkeypatch):
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 20, 20, generator=generator)
    rois = random_rois(30, 2, (20, 20), seed=9)
    whole = roi_align(features, rois, (7, 7), 1.0, -1, True)
    monkeypatch.setattr(roi_align_module, "_MAX_CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(
        roi_align_module.roi_align(features, rois, (7, 7), 1.0, -1, True), whole
    )


def test_gradcheck():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(1, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.6, 1.3, 4.2, 5.1], [0, -0.7, 2.2, 3.1, 6.4]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, rois, (2, 3), 1.0, 2, True), (features,), eps=1e-6, atol=1e-5
    )


def test_empty_boxes():
    features = torch.randn(2, 3, 8, 8)
    assert roi_align(features, torch.zeros(0, 5), (7, 7)).shape == (0, 3, 7, 7)
    assert roi_align(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


@pytest.mark.parametrize(
    ("features", "boxes", "kwargs", "message"),
    [
        (torch.randn(3, 8, 8), torch.zeros(1, 5), {}, r"features must have shape \(N, C, H, W\)"),
        (
            torch.zeros(1, 3, 8, 8, dtype=torch.int64),
            torch.zeros(1, 5),
            {},
            "features must be floating",
        ),
        (torch.randn(1, 3, 8, 8), torch.zeros(1, 4), {}, r"\(K, 5\) tensor"),
        (
            torch.randn(1, 3, 8, 8),
            torch.tensor([[1.0, 0, 0, 2, 2]]),
            {},
            r"batch indices must be integers in \[0, 1\)",
        ),
        (
            torch.randn(1, 3, 8, 8),
            torch.tensor([[0.5, 0, 0, 2, 2]]),
            {},
            "batch indices must be integers",
        ),
        (torch.randn(1, 3, 8, 8), torch.tensor([[0.0, 0, 0, float("nan"), 2]]), {}, "non-finite"),
        (torch.randn(2, 3, 8, 8), [torch.zeros(1, 4)], {}, "list of 1 tensors for 2 images"),
        (torch.randn(1, 3, 8, 8), [torch.zeros(1, 5)], {}, r"boxes\[0\] must have shape \(K, 4\)"),
        (torch.randn(1, 3, 8, 8), torch.zeros(1, 5), {"output_size": 0}, "output_size must be"),
        (torch.randn(1, 3, 8, 8), torch.zeros(1, 5), {"spatial_scale": 0.0}, "spatial_scale"),
    ],
)
def test_bad_inputs(features, boxes, kwargs, message):
    kwargs = {"output_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        roi_align(features, boxes, **kwargs)
