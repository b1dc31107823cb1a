"""attnlab.native.mlp_fp32: the fp32 training MLP (oneDNN products, the GELU's gradient written over the hidden
gradient's buffer) gives the composed layers' values and gradients to fp32 summation order, first and second
order, forward mode too, and is taken exactly where it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.layers.mlp import MLP
from attnlab.native import linear as native_linear
from native_cpu import needs_native

pytestmark = pytest.mark.skipif(not native_linear._onednn_fp32_faster(),
                                reason="hardware: oneDNN's fp32 path is used only on CPUs with AVX-512")


def _close(a, b):
    return (a - b).abs().max().item() <= 2e-5 * max(1.0, b.abs().max().item())


def _reference(mlp: MLP, x):
    approximate = "tanh" if mlp.activation == "gelu_tanh" else "none"
    hidden = F.gelu(F.linear(x, mlp.fc_in.weight, mlp.fc_in.bias), approximate=approximate)
    return F.linear(hidden, mlp.fc_out.weight, mlp.fc_out.bias)


def _grads(out, dy, tensors):
    return torch.autograd.grad(out, [t for t in tensors if t.requires_grad], dy)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", ["none", "fc_in", "fc_out", "input"])
def test_values_and_gradients_match_the_composed_layers(activation, bias, frozen):
    torch.manual_seed(0)
    mlp = MLP(96, 384, activation, bias=bias)
    x = torch.randn(300, 3, 96).transpose(0, 1).requires_grad_(frozen != "input")  # (3, 300, 96), strided
    if frozen in ("fc_in", "fc_out"):
        getattr(mlp, frozen).requires_grad_(False)
    tensors = [x, *mlp.parameters()]
    y = mlp(x)
    assert type(y.grad_fn).__name__ == "FusedMLPBackward"
    dy = torch.randn_like(y)
    y_ref = _reference(mlp, x)
    assert _close(y, y_ref)
    for g, g_ref in zip(_grads(y, dy, tensors), _grads(y_ref, dy, tensors), strict=True):
        assert g.abs().max() > 0 and _close(g, g_ref)


def test_a_retained_graph_gives_the_same_gradients_twice():
    """The backward writes over a buffer of its own, never over a saved tensor: a second backward through a
    retained graph sees the forward's activations unchanged."""
    torch.manual_seed(0)
    mlp = MLP(64, 256)
    x = torch.randn(400, 64, requires_grad=True)
    y = mlp(x)
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, [x, *mlp.parameters()], dy, retain_graph=True)
    second = torch.autograd.grad(y, [x, *mlp.parameters()], dy)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_second_derivatives_match_the_composed_layers():
    """A gradient penalty (create_graph=True) differentiates through the recomputed MLP."""
    torch.manual_seed(0)
    mlp = MLP(64, 256)
    x = torch.randn(400, 64, requires_grad=True)

    def penalty(fn):
        (gx,) = torch.autograd.grad(fn(x).tanh().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [x, *mlp.parameters()])

    assert type(mlp(x).grad_fn).__name__ == "FusedMLPBackward"
    for g, g_ref in zip(penalty(mlp), penalty(lambda t: _reference(mlp, t)), strict=True):
        assert g.abs().max() > 0 and _close(g, g_ref)


def test_forward_mode_tangent_matches_the_composed_layers():
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    mlp = MLP(64, 256)
    x, t = torch.randn(400, 64), torch.randn(400, 64)
    with fwAD.dual_level():
        y = mlp(fwAD.make_dual(x, t))
        assert type(y.grad_fn).__name__ == "FusedMLPBackward"
        tangent = fwAD.unpack_dual(y).tangent
        y_ref = _reference(mlp, fwAD.make_dual(x, t))
        assert _close(tangent, fwAD.unpack_dual(y_ref).tangent)


def test_where_it_is_not_taken():
    torch.manual_seed(0)
    x = torch.randn(400, 64, requires_grad=True)
    assert type(MLP(64, 256, "relu")(x).grad_fn).__name__ != "FusedMLPBackward"
    with torch.no_grad():
        assert MLP(64, 256)(x).grad_fn is None
    small = MLP(8, 16)  # below oneDNN's size threshold
    assert type(small(x[:, :8]).grad_fn).__name__ != "FusedMLPBackward"
    hooked = MLP(64, 256)
    seen = []
    hooked.fc_in.register_forward_hook(lambda *a: seen.append(1))
    assert type(hooked(x).grad_fn).__name__ != "FusedMLPBackward" and seen == [1]
    assert type(MLP(64, 256).double()(x.double()).grad_fn).__name__ != "FusedMLPBackward"
    frozen = MLP(64, 256).requires_grad_(False)
    assert frozen(x.detach()).grad_fn is None


def test_under_activation_checkpointing(monkeypatch):
    """torch.utils.checkpoint (non-reentrant) drops the saved activations and recomputes them in the backward:
    the gradients are the plain backward's, and the recomputation takes the fused path again."""
    from torch.utils.checkpoint import checkpoint

    from attnlab.layers import mlp as mlp_module

    torch.manual_seed(0)
    mlp = MLP(64, 256)
    x = torch.randn(400, 64, requires_grad=True)
    dy = torch.randn(400, 64)
    plain = torch.autograd.grad(mlp(x), [x, *mlp.parameters()], dy)
    calls, fused = [], mlp_module.mlp_fp32
    monkeypatch.setattr(mlp_module, "mlp_fp32", lambda *a: calls.append(1) or fused(*a))
    out = checkpoint(mlp, x, use_reentrant=False)
    for g, g_ref in zip(torch.autograd.grad(out, [x, *mlp.parameters()], dy), plain, strict=True):
        assert torch.equal(g, g_ref)
    assert len(calls) == 2  # the forward and its recomputation


# ---- the exact GELU's native kernel: gelu and its slope in one pass, the backward one multiply -----------------

def _gelu64(a):
    """(gelu(a), gelu'(a)) in float64 from the erf formula."""
    a = a.double()
    cdf = 0.5 * (1 + torch.erf(a / 2**0.5))
    return a * cdf, cdf + a * torch.exp(-a * a / 2) / (2 * torch.pi) ** 0.5


@needs_native
@settings(max_examples=25, deadline=None)
@given(count=st.integers(1, 300), scale=st.sampled_from([0.5, 3.0, 30.0]), seed=st.integers(0, 2**16))
def test_gelu_kernel_matches_the_erf_formula_and_writes_the_slope_over_its_input(count, scale, seed):
    from attnlab.native.mlp_fp32 import _gelu_with_slope

    a = torch.randn(count, generator=torch.Generator().manual_seed(seed)) * scale
    a[: min(count, 3)] = torch.tensor([0.0, -8.0, 8.0])[: min(count, 3)]
    exact_h, exact_s = _gelu64(a)
    buffer = a.clone()
    h, slope = _gelu_with_slope(buffer, "none")
    assert slope is buffer  # written over the caller's buffer: no fresh allocation of the hidden size
    # measured over [-12, 12] in steps of 1.2e-5: h within 3.6e-7 (1 + |a|), the slope within 5.4e-7 (PyTorch's own
    # fp32 GELU: 2.7e-7 (1 + |a|))
    assert ((h.double() - exact_h).abs() <= 4e-7 * (1 + a.double().abs())).all()
    assert ((slope.double() - exact_s).abs() <= 6e-7).all()


@needs_native
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 60), n=st.sampled_from([1, 7, 16, 33, 384]), with_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_gelu_backward_kernel_multiplies_in_place_and_sums_the_bias_gradient(rows, n, with_bias, seed):
    from attnlab.native.mlp_fp32 import _times_slope_

    gen = torch.Generator().manual_seed(seed)
    g, slope = torch.randn(rows, n, generator=gen), torch.randn(rows, n, generator=gen)
    expected = g * slope
    db = _times_slope_(g, slope, with_bias)
    assert torch.equal(g, expected)  # the same fp32 product, in place
    if with_bias:
        torch.testing.assert_close(db.double(), expected.double().sum(0), atol=1e-5, rtol=1e-6)
    else:
        assert db is None


@needs_native
def test_the_exact_gelu_takes_the_kernel_and_agrees_with_pytorchs_gelu():
    """With the kernel the saved tensor is the slope; switched off, PyTorch's GELU and gelu_backward run; the
    two agree to the kernel's erf accuracy. The tanh form never takes the kernel."""
    from attnlab import native

    torch.manual_seed(0)
    mlp = MLP(64, 256)
    x = torch.randn(400, 64, requires_grad=True)
    dy = torch.randn(400, 64)
    y = mlp(x)
    assert y.grad_fn.has_slope
    with native.disabled():
        y_off = mlp(x)
    assert not y_off.grad_fn.has_slope
    assert _close(y, y_off)
    for g, g_off in zip(_grads(y, dy, [x, *mlp.parameters()]), _grads(y_off, dy, [x, *mlp.parameters()])):
        assert g.abs().max() > 0 and _close(g, g_off)
    assert not MLP(64, 256, "gelu_tanh")(x).grad_fn.has_slope
