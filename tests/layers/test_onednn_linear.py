"""attnlab.native.linear's fp32 path on oneDNN: the same values and gradients as ``F.linear`` (to fp32 summation
order), taken exactly where :func:`onednn_fp32` says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.models import create_model
from attnlab.native import linear as native_linear
from attnlab.native.linear import Linear, linear, onednn_fp32

pytestmark = pytest.mark.skipif(not native_linear._onednn_fp32_faster(),
                                reason="hardware: oneDNN's fp32 path is used only on CPUs with AVX-512")


def _close(a, b):
    """fp32 results of two summation orders: within a few ulps of the output's scale."""
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.fixture
def calls(monkeypatch):
    seen = []
    original = native_linear.onednn_linear
    monkeypatch.setattr(native_linear, "onednn_linear", lambda *a: seen.append(1) or original(*a))
    return seen


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
def test_forward_and_gradients_match_f_linear(calls, bias, frozen):
    torch.manual_seed(0)
    layer = Linear(96, 160, bias=bias).requires_grad_(not frozen)
    x = torch.randn(300, 3, 96).transpose(0, 1).requires_grad_()  # (3, 300, 96), not contiguous
    dy = torch.randn(3, 300, 160)
    y = layer(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    assert calls == [1] and type(y.grad_fn).__name__ == "_OneDNNLinearBackward"
    x.grad = None
    layer.zero_grad()
    y_ref = F.linear(x, layer.weight, layer.bias)
    y_ref.backward(dy)
    assert _close(y, y_ref)
    for g, p in zip(grads, [x, *layer.parameters()]):
        assert (g is None) == frozen if p is not x else g is not None
        if g is not None:
            assert g.shape == p.shape and _close(g, p.grad)


def test_without_gradients_and_under_inference_mode(calls):
    torch.manual_seed(0)
    w, b = torch.randn(256, 128), torch.randn(256)
    x = torch.randn(2, 200, 128)
    with torch.no_grad():
        y = linear(x, w, b)
    with torch.inference_mode():
        y2 = linear(x, w, b)
    assert calls == [1, 1] and y.grad_fn is None
    assert _close(y, F.linear(x, w, b)) and torch.equal(y, y2)


def test_where_it_is_not_used(calls):
    """Small products, few rows without gradients (the decoding kernel's), autocast, fp64, oneDNN switched off."""
    w, x = torch.randn(512, 128), torch.randn(400, 128)
    assert onednn_fp32(x, w, None)
    assert not onednn_fp32(x[:100], w[:16], None)  # 100 x 16 x 128 multiply-adds < ONEDNN_MIN_MACS
    with torch.no_grad():
        assert not onednn_fp32(x[:64], w, None) and onednn_fp32(x[:65], w, None)
    assert onednn_fp32(x[:64], w, None)  # with gradients every row count above the size goes to oneDNN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_fp32(x, w, None)
        linear(x, w)
    assert not onednn_fp32(x.double(), w.double(), None)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn_fp32(x, w, None)
        assert torch.equal(linear(x, w), F.linear(x, w))
    assert calls == []


def test_model_outputs_match_pytorch_linear(monkeypatch):
    """A whole ViT's logits and parameter gradients agree with the model run on F.linear everywhere."""
    torch.manual_seed(0)
    model = create_model("vit-tiny", dim=96, num_heads=4)  # 64 patches of 32 x 32 pixels
    pixels = torch.randn(4, 3, 32, 32)

    def run():
        model.zero_grad()
        logits = model.classify(pixels)
        logits.square().sum().backward()
        return logits, {n: p.grad.clone() for n, p in model.named_parameters()}

    logits, grads = run()
    monkeypatch.setattr(native_linear, "ONEDNN_MIN_MACS", 1 << 62)
    logits_ref, grads_ref = run()
    assert _close(logits, logits_ref)
    assert all(_close(grads[n], grads_ref[n]) for n in grads)


def test_double_backward_through_the_onednn_path():
    """A gradient penalty (create_graph=True) differentiates the backward again, as with F.linear."""
    torch.manual_seed(0)
    w = torch.randn(256, 128, requires_grad=True)
    x = torch.randn(300, 128, requires_grad=True)

    def penalty(fn):
        (gx,) = torch.autograd.grad(fn(x, w).tanh().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w)
        return gw

    assert onednn_fp32(x, w, None)
    assert _close(penalty(linear), penalty(F.linear))


def test_torch_compile_lowers_f_linear_itself():
    """Under torch.compile the oneDNN paths step aside (the compiler lowers F.linear to its own GEMMs; tracing
    the op with a plain weight failed in its lowering): a compiled ViT's logits and gradients equal eager ones."""
    torch.manual_seed(0)
    model = create_model("vit-tiny", dim=128, num_heads=4)
    pixels = torch.randn(8, 3, 32, 32)
    ref = model.classify(pixels)
    ref.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model.classify)
        out = compiled(pixels)
        out.sum().backward()
        with torch.no_grad():
            out_no_grad = compiled(pixels)
    finally:
        torch._dynamo.reset()
    assert _close(out, ref) and _close(out_no_grad, ref)
    assert all(_close(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_bias_with_strides(calls):
    """oneDNN ignores a bias's strides: a strided or broadcast bias is made contiguous first."""
    torch.manual_seed(0)
    x, w = torch.randn(300, 128), torch.randn(256, 128)
    for bias in (torch.randn(512)[::2], torch.randn(1).expand(256)):
        with torch.no_grad():
            assert _close(linear(x, w, bias), F.linear(x, w, bias))
    assert len(calls) == 2


def test_forward_mode_ad_and_function_transforms():
    """Forward-mode AD gets F.linear's tangent; torch.func transforms, torch.jit.trace and tensor subclasses
    take F.linear (oneDNN's op has no batching rule, no tracer support for its arguments)."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    w, b = torch.randn(256, 128, requires_grad=True), torch.randn(256)
    x, t = torch.randn(300, 128), torch.randn(300, 128)
    with fwAD.dual_level():
        y = linear(fwAD.make_dual(x, t), w, b)
        assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"
        assert _close(fwAD.unpack_dual(y).tangent, F.linear(t, w))
    params = {"w": w.detach(), "b": b}
    gw = torch.func.grad(lambda p: linear(x, p["w"], p["b"]).square().sum())(params)["w"]
    w_ref = w.detach().clone().requires_grad_()
    F.linear(x, w_ref, b).square().sum().backward()
    assert _close(gw, w_ref.grad)
    with torch.no_grad():
        traced = torch.jit.trace(Linear(128, 256).eval(), x)
    assert traced(x).shape == (300, 256)

    class Tagged(torch.Tensor):
        pass

    assert not onednn_fp32(x.as_subclass(Tagged), w, b) and onednn_fp32(x, w, b)
