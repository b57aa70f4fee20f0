"""Gradients of the deformable-attention op where bilinear sampling has a kink (issue #14).

Bilinear sampling is continuous but only piecewise differentiable: along x it is linear on each
cell [k, k + 1) between two pixel centres (pixel units, x = loc * W - 0.5) and has a kink at
every centre. Deformable DETR puts samples exactly there: its encoder's reference points are
pixel centres and its initial offsets are whole pixels. At a kink, ``grid_sample`` (the
reference) returns the one-sided derivative of the cell that starts there, [floor(x),
floor(x) + 1) — the limit of the gradient from above (Deformable DETR's own kernels use the
same floor-based cell). That is the value the compiled kernels must return too, so these tests
compare them with

- the reference's autograd gradient at the very same points (float64, exact inputs: every map
  size is a power of two, so (i + 0.5) / W and the kernels' pixel coordinates are exact and all
  implementations land on the same side of each kink), and
- a central finite difference taken *inside* that cell, at the point shifted up by ``SHIFT``
  pixels with a step smaller than the shift, so the difference never straddles the kink.

A kernel that skips a corner because its bilinear weight is 0 (rather than because it lies
outside the map) loses that corner's share of the location gradient exactly at these points.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrEncoder

from unipercept.modeling.deformable_attention import MultiScaleDeformableAttention
from unipercept.modeling.deformable_transformer import DeformableEncoder
from unipercept.modeling.outputs import MultiScaleFeatures
from unipercept.ops import cpu_isa, ms_deform_attn, ms_deform_attn_pytorch, msda_backend

needs_compiled = pytest.mark.skipif(
    msda_backend("cpu") != "cpu",
    reason="the compiled op is not built (pip install --no-build-isolation -e .)",
)

# Powers of two, so pixel centres and whole-pixel offsets are exact in binary; one-pixel and
# one-row levels put every sample next to a border.
SHAPES = [(4, 8), (2, 4), (1, 2), (1, 1)]
SHIFT = 1e-7  # pixels: where the finite difference is taken, inside the cell above the point
STEP = 1e-8  # pixels: the finite difference's half step (< SHIFT)
FLOAT64 = {"atol": 1e-10, "rtol": 1e-10}
NAMES = ("output", "value", "locations", "weights")


def level_index(shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)  # (L, 2)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))  # (L,)


def kink_locations(
    shapes: list[tuple[int, int]], shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """(N, Q, M, L, P, 2) normalised locations at pixel centres and whole-pixel offsets from them
    (pixel coordinates -2 .. W + 1, so also exactly on the outer edge of the sampled support,
    x = -1 and x = W, and beyond), with a quarter of the coordinates moved off the centre lines
    at random so that one coordinate sits on a kink while the other does not."""
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)  # (L, 2) as (W, H)
    sizes = sizes.view(1, 1, 1, -1, 1, 2)
    pixel = torch.floor(torch.rand(*shape, dtype=torch.float64, generator=generator) * (sizes + 4))
    pixel = pixel - 2  # integer pixel coordinates in [-2, size + 1]
    off_line = torch.rand(*shape, dtype=torch.float64, generator=generator) < 0.25
    jitter = torch.rand(*shape, dtype=torch.float64, generator=generator)
    pixel = torch.where(off_line, pixel + jitter, pixel)
    return (pixel + 0.5) / sizes  # (N, Q, M, L, P, 2)


def border_locations(shapes: list[tuple[int, int]], queries: int) -> torch.Tensor:
    """(1, Q, 1, L, 1, 2): every pair of the coordinates on and around the map border — the
    outer edges 0 and 1 (pixel -0.5 and W - 0.5), the support's edges (pixel -1 and W), the first
    and last pixel centres, and a point between centres."""
    locations = []
    for height, width in shapes:
        per_level = []
        for size in (width, height):
            pixels = torch.tensor([-1.0, -0.5, 0.0, 0.25, size - 1.0, size - 0.5, size + 0.0])
            per_level.append((pixels.double() + 0.5) / size)
        xs, ys = torch.meshgrid(*per_level, indexing="ij")
        pairs = torch.stack((xs.flatten(), ys.flatten()), -1)  # (49, 2)
        locations.append(pairs[torch.arange(queries) % len(pairs)])
    return torch.stack(locations, 1).view(1, queries, 1, len(shapes), 1, 2)


def gradients(fn, value, spatial_shapes, level_start_index, locations, weights, grad_output):
    """[output, d value, d locations, d weights] of sum(fn(...) * grad_output)."""
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    out.backward(grad_output)
    return [out.detach(), *(leaf.grad for leaf in leaves)]


def reference(value, spatial_shapes, level_start_index, locations, weights):
    return ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)


def one_sided_finite_difference(
    value, spatial_shapes, locations, weights, grad_output, direction: float
) -> torch.Tensor:
    """d sum(out * grad_output) / d locations, by central differences of the reference taken
    ``direction * SHIFT`` pixels away in both coordinates (+1: inside the cell that starts at
    the point). Every (n, q, m) row of the output depends only on its own samples, so one
    coordinate of one (level, point) is perturbed for all rows at once."""
    batch, queries, heads, levels, points, _ = locations.shape
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes.tolist()], dtype=locations.dtype)
    sizes = sizes.view(1, 1, 1, levels, 1, 2)
    base = locations + direction * SHIFT / sizes

    def per_row(at: torch.Tensor) -> torch.Tensor:
        out = ms_deform_attn_pytorch(value, spatial_shapes, at, weights)  # (N, Q, M*D)
        return (out * grad_output).view(batch, queries, heads, -1).sum(-1)  # (N, Q, M)

    result = torch.zeros_like(locations)
    for level in range(levels):
        step = STEP / sizes[0, 0, 0, level, 0]  # (2,) normalised
        for point in range(points):
            for coordinate in range(2):
                up, down = base.clone(), base.clone()
                up[:, :, :, level, point, coordinate] += step[coordinate]
                down[:, :, :, level, point, coordinate] -= step[coordinate]
                difference = (per_row(up) - per_row(down)) / (2 * step[coordinate])
                result[:, :, :, level, point, coordinate] = difference
    return result


def _kink_case(generator, queries: int, heads: int, head_dim: int, *, border: int):
    """float64 inputs with ``queries`` random pixel-centre / whole-pixel locations and
    ``border`` points on the maps' edges, 2 images, 3 points; and the reference's output and
    gradients for them.

    Returns:
        value, locations (N, Q + border, M, L, P, 2), weights, grad_output, expected.
    """
    spatial_shapes, level_start_index = level_index(SHAPES)
    batch, points = 2, 3
    locations = torch.cat(
        (
            kink_locations(SHAPES, (batch, queries, heads, len(SHAPES), points, 2), generator),
            border_locations(SHAPES, border).expand(batch, -1, heads, -1, points, -1),
        ),
        1,
    ).contiguous()  # (N, Q + border, M, L, P, 2)
    queries = locations.shape[1]
    value = torch.randn(batch, 43, heads, head_dim, dtype=torch.float64, generator=generator)
    weights = torch.rand(
        batch, queries, heads, len(SHAPES), points, dtype=torch.float64, generator=generator
    )
    grad_output = torch.randn(
        batch, queries, heads * head_dim, dtype=torch.float64, generator=generator
    )
    expected = gradients(
        reference, value, spatial_shapes, level_start_index, locations, weights, grad_output
    )
    return value, locations, weights, grad_output, expected


@pytest.fixture
def restore_isa():
    original = cpu_isa()
    yield
    torch.ops.unipercept.msda_set_cpu_isa(original)


@needs_compiled
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.parametrize("head_dim", [8, 16, 20, 32])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_at_pixel_centres_and_whole_pixel_offsets(isa, head_dim, dtype, restore_isa):
    """Every instruction-set variant and channel path (unrolled 16/32, generic with a tail), at
    pixel centres, whole-pixel offsets and on the border."""
    if not torch.ops.unipercept.msda_set_cpu_isa(isa):
        pytest.skip(f"this CPU does not run the {isa} variant")
    spatial_shapes, level_start_index = level_index(SHAPES)
    value, locations, weights, grad_output, expected = _kink_case(
        torch.Generator().manual_seed(head_dim), 16, 2, head_dim, border=49
    )
    got = gradients(
        ms_deform_attn,
        value.to(dtype),
        spatial_shapes,
        level_start_index,
        locations.to(dtype),  # exact in float32 too
        weights.to(dtype),
        grad_output.to(dtype),
    )
    tolerance = FLOAT64 if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-5}
    for name, have, want in zip(NAMES, got, expected, strict=True):
        torch.testing.assert_close(
            have.double(), want, **tolerance, msg=lambda m, n=name: f"d {n}: {m}"
        )


@needs_compiled
@pytest.mark.parametrize("where", ["pixel-centres", "border"])
def test_location_gradient_is_the_one_sided_derivative_inside_the_cell(where):
    generator = torch.Generator().manual_seed(1)
    spatial_shapes, level_start_index = level_index(SHAPES)
    if where == "border":
        locations = border_locations(SHAPES, queries=49)
    else:
        locations = kink_locations(SHAPES, (1, 24, 2, len(SHAPES), 2, 2), generator)
    batch, queries, heads, levels, points, _ = locations.shape
    value = torch.randn(batch, 43, heads, 8, dtype=torch.float64, generator=generator)
    weights = torch.rand(
        batch, queries, heads, levels, points, dtype=torch.float64, generator=generator
    )
    grad_output = torch.randn(batch, queries, heads * 8, dtype=torch.float64, generator=generator)

    got = gradients(
        ms_deform_attn, value, spatial_shapes, level_start_index, locations, weights, grad_output
    )
    expected = gradients(
        reference, value, spatial_shapes, level_start_index, locations, weights, grad_output
    )
    for name, have, want in zip(NAMES, got, expected, strict=True):
        torch.testing.assert_close(have, want, **FLOAT64, msg=lambda m, n=name: f"d {n}: {m}")

    from_above = one_sided_finite_difference(
        value, spatial_shapes, locations, weights, grad_output, +1.0
    )
    # The shifted point's gradient differs from the kink's by SHIFT times a second derivative.
    torch.testing.assert_close(got[2], from_above, atol=1e-4, rtol=1e-6)
    # The kinks are real: from below, the derivative differs, so the test tells the sides apart.
    from_below = one_sided_finite_difference(
        value, spatial_shapes, locations, weights, grad_output, -1.0
    )
    assert (from_below - from_above).abs().max() > 0.1


def encoder_inputs(shapes: list[tuple[int, int]], hidden_dim: int, batch: int = 2):
    """Queries, reference points (the encoder's: every pixel centre) and values for one
    encoder self-attention layer, float64."""
    generator = torch.Generator().manual_seed(hidden_dim)
    spatial_shapes, level_start_index = level_index(shapes)
    num_values = int(spatial_shapes.prod(1).sum())
    tokens = torch.randn(batch, num_values, hidden_dim, dtype=torch.float64, generator=generator)
    valid_ratios = torch.ones(batch, len(shapes), 2, dtype=torch.float64)
    features = MultiScaleFeatures(
        tokens=tokens,
        position=torch.zeros_like(tokens),
        valid=torch.ones(batch, num_values, dtype=torch.bool),
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
        valid_ratios=valid_ratios,
        shapes=tuple(shapes),
        maps=(),
    )
    return features, DeformableEncoder.reference_points(features)  # (B, S, L, 2)


ENCODER_SHAPES = [(8, 8), (4, 4), (2, 2)]


@needs_compiled
@pytest.mark.parametrize("hidden_dim", [64, 128])  # head dims 8 (generic path) and 16
def test_deformable_detr_layer_at_its_initialisation(hidden_dim, monkeypatch):
    """Deformable DETR's own init (head 0's samples lie on the pixel centres one to four pixels
    to the right of each query): the training signal of the offsets, the gradient of the
    sampling-offset projection, must be the reference's."""
    torch.manual_seed(0)
    layer = MultiScaleDeformableAttention(
        hidden_dim=hidden_dim, num_heads=8, num_levels=len(ENCODER_SHAPES), num_points=4
    ).double()  # initialised in float32 as in training, then widened: offsets stay whole pixels
    features, reference_points = encoder_inputs(ENCODER_SHAPES, hidden_dim)

    def run(force_pytorch: str) -> dict[str, torch.Tensor]:
        monkeypatch.setenv("UNIPERCEPT_MSDA_FORCE_PYTORCH", force_pytorch)
        layer.zero_grad()
        tokens = features.tokens.clone().requires_grad_()
        out = layer(
            tokens,
            reference_points,
            tokens,
            features.valid,
            features.spatial_shapes,
            features.level_start_index,
        )
        out.square().sum().backward()
        grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
        return {"output": out.detach(), "input": tokens.grad, **grads}

    got, expected = run("0"), run("1")
    for name in ("output", "input", "sampling_offsets.bias", *expected):
        torch.testing.assert_close(
            got[name], expected[name], **FLOAT64, msg=lambda m, n=name: f"{n}: {m}"
        )


@needs_compiled
def test_deformable_detr_layer_matches_transformers_at_its_initialisation():
    """The same layer with transformers' own initialisation, against transformers' module (its
    grid_sample path): same init, same outputs, same gradients."""
    hidden_dim, heads, points = 64, 8, 4
    config = DeformableDetrConfig(
        d_model=hidden_dim,
        encoder_layers=1,
        encoder_attention_heads=heads,
        encoder_n_points=points,
        num_feature_levels=len(ENCODER_SHAPES),
        disable_custom_kernels=True,
    )
    torch.manual_seed(0)
    theirs = DeformableDetrEncoder(config).layers[0].self_attn  # post_init ran _init_weights
    ours = MultiScaleDeformableAttention(
        hidden_dim=hidden_dim, num_heads=heads, num_levels=len(ENCODER_SHAPES), num_points=points
    )
    torch.testing.assert_close(ours.sampling_offsets.bias, theirs.sampling_offsets.bias)
    ours.load_state_dict(theirs.state_dict())
    ours.double()
    theirs.double()
    features, reference_points = encoder_inputs(ENCODER_SHAPES, hidden_dim)

    tokens_ours = features.tokens.clone().requires_grad_()
    out_ours = ours(
        tokens_ours,
        reference_points,
        tokens_ours,
        features.valid,
        features.spatial_shapes,
        features.level_start_index,
    )
    tokens_theirs = features.tokens.clone().requires_grad_()
    out_theirs, _ = theirs(
        tokens_theirs,
        attention_mask=features.valid,
        encoder_hidden_states=tokens_theirs,
        reference_points=reference_points,
        spatial_shapes=features.spatial_shapes,
        spatial_shapes_list=list(ENCODER_SHAPES),
        level_start_index=features.level_start_index,
    )
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(out_ours, out_theirs, **FLOAT64)
    torch.testing.assert_close(tokens_ours.grad, tokens_theirs.grad, **FLOAT64)
    names = ["sampling_offsets.bias", *(name for name, _ in ours.named_parameters())]
    for name in names:
        torch.testing.assert_close(
            ours.get_parameter(name).grad,
            theirs.get_parameter(name).grad,
            **FLOAT64,
            msg=lambda m, n=name: f"{n}: {m}",
        )


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_gradients_at_pixel_centres_and_on_the_border(dtype):
    """The CUDA kernel at the same kinks (float32 math; locations stay float32 and exact)."""
    if msda_backend("cuda") != "cuda":
        pytest.fail("a GPU is present but the compiled op has no CUDA kernel (build with nvcc)")
    spatial_shapes, level_start_index = level_index(SHAPES)
    value, locations, weights, grad_output, expected = _kink_case(
        torch.Generator().manual_seed(0), 64, 4, 32, border=64
    )
    got = gradients(
        ms_deform_attn,
        value.to("cuda", dtype),
        spatial_shapes.cuda(),
        level_start_index.cuda(),
        locations.to("cuda", torch.float32),
        weights.to("cuda", torch.float32),
        grad_output.to("cuda", dtype),
    )
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, have, want in zip(NAMES, got, expected, strict=True):
        have = have.double().cpu()
        error = ((have - want).abs().max() / want.abs().max().clamp(min=1e-6)).item()
        assert error <= (rtol if name in ("output", "value") else 10 * rtol), (
            f"d {name}: relative error {error}"
        )
