"""unipercept.ops.linear: a linear layer (and its ReLU) as one oneDNN call at inference on CPU,
the same answer as ``nn.Linear``, and the module itself wherever that path does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from unipercept.modeling.deformable_transformer import DecoderLayer, EncoderLayer, FeedForward
from unipercept.ops.linear import FORCE_PYTORCH, fused_linear_applies, linear

fused_available = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
    reason="this torch has no oneDNN fused linear",
)
bf16_available = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="oneDNN has no bfloat16 on this CPU",
)


class FusedCalls(TorchDispatchMode):
    """Counts the oneDNN fused-linear calls made inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.mkldnn._linear_pointwise.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _layer(inputs: int = 64, outputs: int = 48, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(inputs, outputs, bias=bias)


@fused_available
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_float32_equals_the_module(activation, bias):
    layer = _layer(bias=bias)
    x = torch.randn(2, 37, 64)
    expected = layer(x)
    expected = F.relu(expected) if activation == "relu" else expected
    with torch.no_grad(), FusedCalls() as calls:
        got = linear(x, layer, activation)
    assert calls.calls == 1
    assert got.shape == (2, 37, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)
    if activation == "relu":
        assert (got >= 0).all() and (got == 0).any()


@fused_available
@bf16_available
def test_fused_under_bfloat16_autocast_computes_in_bfloat16():
    layer = _layer()
    x = torch.randn(300, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.relu(layer(x))
        with FusedCalls() as calls:
            got = linear(x, layer, "relu")
    assert calls.calls == 1
    assert got.dtype == torch.bfloat16 == expected.dtype
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05, rtol=0.02)


def test_with_gradients_it_is_the_module():
    layer = _layer()
    x = torch.randn(5, 64, requires_grad=True)
    with FusedCalls() as calls:
        out = linear(x, layer, "relu")
    assert calls.calls == 0 and not fused_linear_applies(x)
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_hooks_subclasses_and_the_switch_run_the_module(monkeypatch):
    x = torch.randn(4, 64)
    hooked = _layer()
    seen = []
    hooked.register_forward_hook(lambda module, args, out: seen.append(out.shape))

    class Scaled(nn.Linear):
        def forward(self, input):
            return 2 * super().forward(input)

    scaled = Scaled(64, 48)
    with torch.no_grad(), FusedCalls() as calls:
        linear(x, hooked)
        doubled = linear(x, scaled)
        monkeypatch.setenv(FORCE_PYTORCH, "1")
        plain = linear(x, _layer())
    assert calls.calls == 0
    assert seen == [torch.Size([4, 48])]
    torch.testing.assert_close(doubled, 2 * F.linear(x, scaled.weight, scaled.bias))
    torch.testing.assert_close(plain, _layer()(x))


def test_an_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation must be one of"):
        linear(torch.randn(2, 64), _layer(), "gelu")


@fused_available
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_layers_answer_the_same_fused(monkeypatch, activation):
    """An encoder layer, a decoder layer and a feed-forward block in eval mode: the fused path
    (one oneDNN call per linear, ReLU included) against the modules called as they are."""
    from unipercept.modeling.outputs import MultiScaleFeatures

    torch.manual_seed(0)
    options = {"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4, "num_levels": 2, "num_points": 2}
    encoder = EncoderLayer(**options, activation=activation).eval()
    decoder = DecoderLayer(**options, activation=activation).eval()
    ffn = FeedForward(hidden_dim=32, ffn_dim=64, activation=activation).eval()
    shapes = [(6, 8), (3, 4)]
    tokens = sum(h * w for h, w in shapes)
    features = MultiScaleFeatures(
        tokens=torch.randn(1, tokens, 32),
        position=torch.randn(1, tokens, 32),
        valid=torch.ones(1, tokens, dtype=torch.bool),
        spatial_shapes=torch.tensor(shapes),
        level_start_index=torch.tensor([0, shapes[0][0] * shapes[0][1]]),
        valid_ratios=torch.ones(1, 2, 2),
        shapes=tuple(shapes),
        maps=tuple(torch.randn(1, 32, h, w) for h, w in shapes),
    )
    x = torch.randn(1, tokens, 32)
    points = torch.rand(1, tokens, 2, 2)
    queries, position = torch.randn(1, 10, 32), torch.randn(1, 10, 32)
    boxes = torch.rand(1, 10, 2, 4) * 0.5 + 0.25

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            return [
                encoder(x, features, points),
                decoder(queries, position, boxes, x, features, None),
                ffn(x),
            ]

    with FusedCalls() as calls:
        fused = run()
    monkeypatch.setenv(FORCE_PYTORCH, "1")
    with FusedCalls() as unfused_calls:
        plain = run()
    assert calls.calls > 0 and unfused_calls.calls == 0
    for got, expected in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_traced_graphs_keep_plain_linears():
    """torch.export (under no_grad, where the fused path would apply) records aten.linear, so
    that an exported graph runs where oneDNN does not (ONNX)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ffn = FeedForward(hidden_dim=16, ffn_dim=32).eval()

        def forward(self, x):
            return self.ffn(x)

    with torch.no_grad():
        program = torch.export.export(Block(), (torch.randn(1, 5, 16),), strict=True)
        traced = torch.jit.trace(Block(), torch.randn(1, 5, 16))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.linear.default" in targets
    assert not any("mkldnn" in target for target in targets)
    graph = str(traced.inlined_graph)
    assert "mkldnn" not in graph and "aten::linear" in graph
