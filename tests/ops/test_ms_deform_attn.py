from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from transformers.models.deformable_detr.modeling_deformable_detr import (
    MultiScaleDeformableAttention as TransformersMSDA,
)

from unipercept.ops import cpu_isa, ms_deform_attn, ms_deform_attn_pytorch, msda_backend

msda_module = importlib.import_module("unipercept.ops.ms_deform_attn")
COMPILED_CPU = msda_backend("cpu") == "cpu"
needs_compiled = pytest.mark.skipif(
    not COMPILED_CPU,
    reason="the compiled op is not built (pip install --no-build-isolation -e .); "
    "only the PyTorch reference is tested",
)


@dataclass
class Problem:
    value: torch.Tensor  # (N, S, M, D)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    sampling_locations: torch.Tensor  # (N, Q, M, L, P, 2)
    attention_weights: torch.Tensor  # (N, Q, M, L, P)

    def args(self) -> tuple[torch.Tensor, ...]:
        return (
            self.value,
            self.spatial_shapes,
            self.level_start_index,
            self.sampling_locations,
            self.attention_weights,
        )

    def to(self, **kwargs) -> Problem:
        moved = [
            t.to(**kwargs) if t.is_floating_point() else t.to(kwargs.get("device", t.device))
            for t in self.args()
        ]
        return Problem(*moved)


def make_problem(
    shapes: list[tuple[int, int]],
    batch: int = 2,
    queries: int = 9,
    heads: int = 3,
    head_dim: int = 8,
    points: int = 4,
    dtype: torch.dtype = torch.float64,
    spread: float = 0.3,
    seed: int = 0,
) -> Problem:
    """Random inputs; ``spread`` > 0 puts some locations outside [0, 1] (zero padding)."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    levels = len(shapes)
    value = torch.randn(batch, int(sizes.sum()), heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(
        batch, queries, heads, levels, points, 2, generator=generator, dtype=dtype
    )
    locations = locations * (1 + 2 * spread) - spread
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=dtype)
    return Problem(value, spatial_shapes, level_start_index, locations, weights)


SHAPES = {
    "four-levels": [(10, 12), (5, 6), (3, 3), (2, 2)],
    "single-pixel-levels": [(7, 5), (1, 1), (1, 1)],
    "one-level": [(6, 9)],
    "thin": [(1, 13), (13, 1)],
}


def transformers_reference(problem: Problem) -> torch.Tensor:
    shapes = [tuple(s) for s in problem.spatial_shapes.tolist()]
    return TransformersMSDA()(
        problem.value,
        problem.spatial_shapes,
        shapes,
        problem.level_start_index,
        problem.sampling_locations,
        problem.attention_weights,
        im2col_step=64,
    )


def gradients(fn, problem: Problem, grad_output: torch.Tensor) -> list[torch.Tensor]:
    inputs = [problem.value, problem.sampling_locations, problem.attention_weights]
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(leaves[0], problem.spatial_shapes, problem.level_start_index, leaves[1], leaves[2])
    out.backward(grad_output)
    return [out.detach(), *(leaf.grad for leaf in leaves)]


def reference(value, spatial_shapes, level_start_index, locations, weights):
    return ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)


@pytest.mark.parametrize("shape_name", SHAPES)
def test_reference_matches_transformers(shape_name):
    problem = make_problem(SHAPES[shape_name])
    torch.testing.assert_close(
        ms_deform_attn_pytorch(
            problem.value,
            problem.spatial_shapes,
            problem.sampling_locations,
            problem.attention_weights,
        ),
        transformers_reference(problem),
    )


@needs_compiled
@pytest.mark.parametrize("head_dim", [8, 16, 32, 64])
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_cpu_matches_reference_and_transformers(shape_name, head_dim, dtype):
    problem = make_problem(SHAPES[shape_name], head_dim=head_dim, dtype=dtype, seed=head_dim)
    grad_output = torch.randn(2, 9, 3 * head_dim, dtype=dtype)
    ours = gradients(ms_deform_attn, problem, grad_output)
    expected = gradients(reference, problem, grad_output)
    tolerance = (
        {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-4, "rtol": 1e-4}
    )
    for name, got, want in zip(
        ("output", "value", "locations", "weights"), ours, expected, strict=True
    ):
        torch.testing.assert_close(got, want, **tolerance, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(ours[0], transformers_reference(problem), **tolerance)


@pytest.fixture
def restore_isa():
    original = cpu_isa()
    yield
    torch.ops.unipercept.msda_set_cpu_isa(original)


@needs_compiled
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_instruction_set_variant_agrees(isa, restore_isa):
    if not torch.ops.unipercept.msda_set_cpu_isa(isa):
        pytest.skip(f"this CPU does not run the {isa} variant")
    assert cpu_isa() == isa
    problem = make_problem(SHAPES["four-levels"], head_dim=32, dtype=torch.float32, seed=3)
    grad_output = torch.randn(2, 9, 96)
    ours = gradients(ms_deform_attn, problem, grad_output)
    expected = gradients(reference, problem, grad_output)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@needs_compiled
def test_backward_split_over_query_chunks_when_threads_outnumber_heads():
    """With one head and two threads, the backward accumulates into private buffers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        problem = make_problem(SHAPES["four-levels"], batch=1, heads=1, queries=700, head_dim=16)
        grad_output = torch.randn(1, 700, 16, dtype=torch.float64)
        ours = gradients(ms_deform_attn, problem, grad_output)
        expected = gradients(reference, problem, grad_output)
        for got, want in zip(ours, expected, strict=True):
            torch.testing.assert_close(got, want)
    finally:
        torch.set_num_threads(previous)


@needs_compiled
def test_gradcheck_of_the_compiled_cpu_op():
    problem = make_problem(
        SHAPES["single-pixel-levels"], batch=1, queries=3, heads=2, head_dim=4, points=2
    )
    # Random samples lie off the pixel-centre lines, where bilinear sampling has kinks that a
    # central difference would straddle (test_ms_deform_attn_grad.py tests those points).
    value, locations, weights = (
        t.clone().requires_grad_()
        for t in (problem.value, problem.sampling_locations, problem.attention_weights)
    )
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(
            v, problem.spatial_shapes, problem.level_start_index, loc, w
        ),
        (value, locations, weights),
        eps=1e-7,
        atol=1e-6,
    )


@needs_compiled
def test_opcheck():
    problem = make_problem(SHAPES["four-levels"], dtype=torch.float32)
    args = (
        problem.value.requires_grad_(),
        problem.spatial_shapes,
        problem.level_start_index,
        problem.sampling_locations.requires_grad_(),
        problem.attention_weights.requires_grad_(),
    )
    torch.library.opcheck(torch.ops.unipercept.ms_deform_attn_forward.default, args)


class TinyAttention(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return (
            ms_deform_attn(value, spatial_shapes, level_start_index, locations.sigmoid(), weights)
            * 2
        )


@needs_compiled
def test_torch_compile_traces_through_the_op_with_gradients():
    problem = make_problem(SHAPES["four-levels"], dtype=torch.float32)
    compiled = torch.compile(TinyAttention(), backend="aot_eager", fullgraph=True)
    value = problem.value.clone().requires_grad_()
    out = compiled(value, *problem.args()[1:])
    out.sum().backward()
    value_eager = problem.value.clone().requires_grad_()
    expected = TinyAttention()(value_eager, *problem.args()[1:])
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(value.grad, value_eager.grad)


@needs_compiled
def test_torch_export_keeps_the_op():
    problem = make_problem(SHAPES["four-levels"], dtype=torch.float32)
    exported = torch.export.export(TinyAttention(), problem.args())
    assert "unipercept.ms_deform_attn_forward" in str(exported.graph)
    torch.testing.assert_close(exported.module()(*problem.args()), TinyAttention()(*problem.args()))


def test_half_precision_values_on_cpu_follow_float32():
    problem = make_problem(SHAPES["four-levels"], dtype=torch.float32)
    expected = ms_deform_attn(*problem.args())
    for dtype in (torch.bfloat16, torch.float16):
        out = ms_deform_attn(problem.value.to(dtype), *problem.args()[1:])
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=1e-2)


def test_environment_variable_forces_the_pytorch_reference(monkeypatch):
    monkeypatch.setenv("UNIPERCEPT_MSDA_FORCE_PYTORCH", "1")
    assert msda_backend("cpu") == "pytorch"
    problem = make_problem(SHAPES["four-levels"])
    torch.testing.assert_close(ms_deform_attn(*problem.args()), transformers_reference(problem))
    monkeypatch.delenv("UNIPERCEPT_MSDA_FORCE_PYTORCH")
    assert msda_backend("cpu") == ("cpu" if COMPILED_CPU else "pytorch")


def test_missing_extension_falls_back_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(msda_module, "_loaded", False)
    monkeypatch.setattr(msda_module, "_load_error", "ImportError: simulated")
    monkeypatch.setattr(msda_module, "_reported", set())
    problem = make_problem(SHAPES["four-levels"])
    with caplog.at_level(logging.WARNING, logger=msda_module.__name__):
        assert msda_backend("cpu") == "pytorch"
        out = ms_deform_attn(*problem.args())
        ms_deform_attn(*problem.args())
    torch.testing.assert_close(out, transformers_reference(problem))
    messages = [r.message for r in caplog.records if "not available" in r.message]
    assert len(messages) == 1 and "ImportError: simulated" in messages[0]


def test_dispatch_never_assumes_a_kernel_from_the_device_type():
    # No CUDA kernel is registered in a CPU-only build: a CUDA device must not pick "cuda".
    has_cuda_kernel = COMPILED_CPU and torch._C._dispatch_has_kernel_for_dispatch_key(
        "unipercept::ms_deform_attn_forward", "CUDA"
    )
    assert msda_backend("cuda") == ("cuda" if has_cuda_kernel else "pytorch")
    assert msda_backend("meta") == "pytorch"


def test_import_of_ops_does_not_load_the_extension():
    code = (
        "import sys, unipercept.ops; "
        "print(any('MultiScaleDeformableAttention' in m for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _bad(problem: Problem, **changes) -> tuple:
    fields = dict(
        zip(
            (
                "value",
                "spatial_shapes",
                "level_start_index",
                "sampling_locations",
                "attention_weights",
            ),
            problem.args(),
            strict=True,
        )
    )
    fields.update(changes)
    return tuple(fields.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            lambda p: {"value": p.value[0]},
            r"value must be a floating tensor of shape \(N, S, M, D\)",
        ),
        (lambda p: {"value": p.value.long()}, "value must be a floating tensor"),
        (lambda p: {"spatial_shapes": p.spatial_shapes.int()}, "spatial_shapes must be an int64"),
        (
            lambda p: {"spatial_shapes": p.spatial_shapes[:, :1]},
            r"spatial_shapes must be an int64 tensor of shape \(L, 2\)",
        ),
        (
            lambda p: {"level_start_index": p.level_start_index[:2]},
            r"level_start_index must be an int64 tensor of shape \(4,\)",
        ),
        (
            lambda p: {"sampling_locations": p.sampling_locations[..., :1]},
            "sampling_locations must be a floating tensor",
        ),
        (
            lambda p: {"sampling_locations": p.sampling_locations[:, :, :2]},
            r"sampling_locations must be .*M=3",
        ),
        (
            lambda p: {"attention_weights": p.attention_weights[..., :2]},
            "attention_weights must be a floating tensor of shape",
        ),
        (
            lambda p: {"value": p.value.transpose(2, 3).contiguous().transpose(2, 3)},
            "value must be contiguous",
        ),
        (
            lambda p: {"attention_weights": p.attention_weights.to("meta")},
            "attention_weights must be on value's device",
        ),
        (
            lambda p: {"level_start_index": torch.tensor([0, 120, 150, 160])},
            "level_start_index .* is inconsistent with spatial_shapes",
        ),
        (
            lambda p: {"spatial_shapes": torch.tensor([[10, 12], [5, 6], [3, 3], [2, 3]])},
            "cover 165 positions but value has S = 163",
        ),
        (
            lambda p: {"spatial_shapes": torch.tensor([[10, 12], [5, 6], [3, 3], [0, 2]])},
            r"spatial_shapes\[3\] = \(0, 2\) must be positive",
        ),
        (lambda p: {"value": p.value.numpy()}, "value must be a torch.Tensor"),
    ],
)
def test_bad_arguments_name_the_argument(changes, message):
    problem = make_problem(SHAPES["four-levels"])
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*_bad(problem, **changes(problem)))


@needs_compiled
def test_direct_op_calls_are_checked_in_cpp():
    problem = make_problem(SHAPES["four-levels"], dtype=torch.float32)
    bad_starts = torch.tensor([0, 120, 150, 160])
    with pytest.raises(RuntimeError, match=r"level_start_index\[3\] is 160, expected 159"):
        torch.ops.unipercept.ms_deform_attn_forward(*_bad(problem, level_start_index=bad_starts))


# --- CUDA: skipped without a GPU; each test proves the compiled CUDA path ran. ---------------


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)]
)
def test_cuda_matches_reference(dtype, rtol):
    if msda_backend("cuda") != "cuda":
        pytest.fail("a GPU is present but the compiled op has no CUDA kernel (build with nvcc)")
    problem = make_problem(
        SHAPES["four-levels"], queries=300, heads=8, head_dim=32, dtype=torch.float64
    )
    grad_output = torch.randn(2, 300, 256, dtype=torch.float64)
    expected = gradients(reference, problem, grad_output)
    cuda_problem = problem.to(device="cuda", dtype=dtype)
    got = gradients(ms_deform_attn, cuda_problem, grad_output.to("cuda", dtype))
    for name, have, want in zip(
        ("output", "value", "locations", "weights"), got, expected, strict=True
    ):
        have = have.double().cpu()
        scale = want.abs().max().clamp(min=1e-6)
        error = ((have - want).abs().max() / scale).item()
        assert error <= (rtol if name in ("output", "value") else 10 * rtol), (
            f"{name}: relative error {error}"
        )


@pytest.mark.cuda
def test_cuda_handles_coarse_levels_shared_accumulation():
    """Many queries on tiny levels: the shared-memory accumulation path must equal the reference."""
    problem = make_problem(
        [(20, 20), (3, 3), (1, 1)], batch=1, queries=4000, heads=2, head_dim=32, points=4
    )
    grad_output = torch.randn(1, 4000, 64, dtype=torch.float64)
    expected = gradients(reference, problem, grad_output)
    got = gradients(
        ms_deform_attn,
        problem.to(device="cuda", dtype=torch.float32),
        grad_output.to("cuda", torch.float32),
    )
    for have, want in zip(got, expected, strict=True):
        torch.testing.assert_close(have.double().cpu(), want, atol=1e-3, rtol=1e-4)


# --- The .cu sources compile with nvcc where it exists (no GPU needed). -----------------------

CSRC = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "ms_deform_attn")
STANDIN = os.path.join(os.path.dirname(__file__), "cuda_standin")


def _nvcc() -> str | None:
    from shutil import which

    return which("nvcc")


def _cuda_include_dir() -> str | None:
    nvcc = _nvcc()
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "include")]
    if nvcc:
        candidates.append(
            os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
        )
    candidates.append("/usr/local/cuda/include")
    return next((c for c in candidates if os.path.isfile(os.path.join(c, "cuda_runtime.h"))), None)


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    source = os.path.join(CSRC, "cuda", "ms_deform_attn_cuda.cu")
    result = subprocess.run(
        [
            _nvcc(),
            "-std=c++17",
            "-O3",
            "-c",
            source,
            "-o",
            str(tmp_path / "msda.o"),
            "-gencode",
            "arch=compute_80,code=sm_80",
            "-gencode",
            "arch=compute_90,code=sm_90",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "msda.o").stat().st_size > 0


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
def test_cuda_glue_compiles_against_torch_headers():
    """The ATen side of the CUDA op, syntax-checked with the host compiler. A CPU build of torch
    lacks one generated header; a stand-in under tests/ supplies it (never shipped)."""
    from shutil import which
    from sysconfig import get_paths

    from torch.utils.cpp_extension import include_paths

    cuda_include = _cuda_include_dir()
    if cuda_include is None:
        pytest.skip("nvcc is installed but the CUDA headers (cuda_runtime.h) were not found")
    compiler = which("g++") or which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    command = [
        compiler,
        "-std=c++20",
        "-fsyntax-only",
        f"-I{STANDIN}",
        f"-I{cuda_include}",
        f"-I{get_paths()['include']}",
    ]
    command += [f"-I{path}" for path in include_paths()]
    result = subprocess.run(
        [*command, os.path.join(CSRC, "cuda", "ms_deform_attn_cuda.cpp")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
