"""The deformable-attention op under ``torch.autocast``: half-precision values in, the float32
op's answer (on the same inputs, converted) out, on every CPU backend."""

from __future__ import annotations

import pytest
import torch

from unipercept.modeling.deformable_attention import MultiScaleDeformableAttention
from unipercept.ops import ms_deform_attn, msda_backend

from .test_ms_deform_attn import SHAPES, make_problem

BACKENDS = ["pytorch", pytest.param("cpu", id="compiled-cpu")]
HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "pytorch":
        monkeypatch.setenv("UNIPERCEPT_MSDA_FORCE_PYTORCH", "1")
    elif msda_backend("cpu") != "cpu":
        pytest.skip("the compiled op is not built (pip install --no-build-isolation -e .)")
    assert msda_backend("cpu") == request.param
    return request.param


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("coordinates", ["float32", "half"])
def test_under_autocast_equals_the_float32_op_on_the_same_inputs(backend, dtype, coordinates):
    """What a model under autocast hands the op: a half-precision value (from a projection),
    locations and weights in float32 or half. The op reads all of them as float32."""
    problem = make_problem(SHAPES["four-levels"], heads=4, head_dim=8, dtype=torch.float32)
    value = problem.value.to(dtype)
    locations, weights = problem.sampling_locations, problem.attention_weights
    if coordinates == "half":
        locations, weights = locations.to(dtype), weights.to(dtype)
    shapes, starts = problem.spatial_shapes, problem.level_start_index
    with torch.autocast("cpu", dtype=dtype):
        got = ms_deform_attn(value, shapes, starts, locations, weights)
    expected = ms_deform_attn(value.float(), shapes, starts, locations.float(), weights.float())
    assert got.dtype == dtype
    assert torch.equal(got, expected.to(dtype))


def test_reference_keeps_float32_locations_of_half_values(monkeypatch):
    """A location rounded to bfloat16 moves by up to 1/512 of the map; the reference path must
    not round it. One lit pixel shows a move: the sample is 1 - the distance to its centre."""
    monkeypatch.setenv("UNIPERCEPT_MSDA_FORCE_PYTORCH", "1")
    width = 400
    value = torch.zeros(1, width, 1, 1, dtype=torch.bfloat16)  # (N, S, M, D)
    value[0, 280] = 1.0
    # x = 0.7013 is pixel 280.02; in bfloat16 it would be 0.703125, pixel 280.75.
    locations = torch.tensor([0.7013, 0.5]).view(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1)
    out = ms_deform_attn(value, torch.tensor([[1, width]]), torch.tensor([0]), locations, weights)
    assert out.dtype == torch.bfloat16
    assert abs(out.float().item() - 0.98) < 0.01


@pytest.mark.parametrize("dtype", HALF)
def test_attention_layer_under_autocast_follows_float32(backend, dtype):
    torch.manual_seed(0)
    layer = MultiScaleDeformableAttention(hidden_dim=32, num_heads=4, num_levels=2, num_points=3)
    for parameter in layer.parameters():  # away from the zero/grid initialisation
        torch.nn.init.normal_(parameter, std=0.1)
    shapes = torch.tensor([[12, 16], [6, 8]])
    starts = torch.tensor([0, 12 * 16])
    query = torch.randn(2, 20, 32)
    value = torch.randn(2, 12 * 16 + 6 * 8, 32)
    valid = torch.ones(2, value.shape[1], dtype=torch.bool)
    reference_points = torch.rand(2, 20, 2, 2)
    with torch.no_grad():
        expected = layer(query, reference_points, value, valid, shapes, starts)
        with torch.autocast("cpu", dtype=dtype):
            got = layer(query, reference_points, value, valid, shapes, starts)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_kernel_takes_half_values_under_autocast(dtype):
    """On CUDA the kernel reads bfloat16/float16 values as they are (float32 accumulation):
    the answer is the float32 op's on the same (exactly converted) values, up to rounding."""
    if msda_backend("cuda") != "cuda":
        pytest.fail("a GPU is present but the compiled op has no CUDA kernel (build with nvcc)")
    problem = make_problem(SHAPES["four-levels"], heads=8, head_dim=32, dtype=torch.float32)
    problem = problem.to(device="cuda")
    value = problem.value.to(dtype)
    shapes, starts = problem.spatial_shapes, problem.level_start_index
    locations = problem.sampling_locations.to(dtype)  # as a half-precision offset makes them
    weights = problem.attention_weights
    with torch.autocast("cuda", dtype=dtype):
        got = ms_deform_attn(value, shapes, starts, locations, weights)
    expected = ms_deform_attn(value.float(), shapes, starts, locations.float(), weights)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected.to(dtype).float(), atol=1e-2, rtol=1e-2)
