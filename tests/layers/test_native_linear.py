"""attnlab.native.linear: the bf16 transpose kernel and linear layers whose backward uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import native
from attnlab.native import linear as native_linear
from attnlab.native.linear import Linear, linear, transpose_bf16
from native_cpu import needs_native

pytestmark = needs_native


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 100), cols=st.integers(1, 70), pad=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_transpose_is_exact(rows, cols, pad, seed):
    """Full 32 x 16 blocks, edges, and a source row stride larger than its width."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols + pad, generator=g).bfloat16()[:, :cols]
    assert torch.equal(transpose_bf16(x), x.t().contiguous())


def _spy_calls():
    calls = []
    original = native_linear._TransposedGradLinear.apply
    native_linear._TransposedGradLinear.apply = lambda *a: calls.append(1) or original(*a)
    return calls, original


@pytest.mark.parametrize("bias", [True, False])
def test_narrowing_linear_under_autocast_matches_pytorch(bias):
    """in_features > out_features: the forward is bit-identical to autocast's F.linear, the input and bias
    gradients too, the weight gradient equal to bf16 rounding (same products, another summation order)."""
    torch.manual_seed(0)
    layer = Linear(96, 40, bias=bias)
    x = torch.randn(3, 50, 96, requires_grad=True)
    dy = torch.randn(3, 50, 40)

    def run(use_native):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x) if use_native else F.linear(x, layer.weight, layer.bias)
        y.backward(dy.bfloat16())
        return y, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad

    calls, original = _spy_calls()
    try:
        y, dx, dw, db = run(True)
    finally:
        native_linear._TransposedGradLinear.apply = original
    assert len(calls) == 1
    y_ref, dx_ref, dw_ref, db_ref = run(False)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert torch.equal(dx, dx_ref) and (db is None or torch.equal(db, db_ref))
    assert dw.dtype == torch.float32 and dw.is_contiguous()
    assert (dw - dw_ref).abs().max() <= 2**-7 * dw_ref.abs().max()


def test_linear_is_f_linear_elsewhere():
    """Widening layers, frozen weights, fp32 without autocast and a switched-off native library take F.linear."""
    torch.manual_seed(0)
    wide, narrow = Linear(16, 48), Linear(48, 16)
    x16, x48 = torch.randn(4, 16), torch.randn(4, 48)
    calls, original = _spy_calls()
    try:
        assert torch.equal(narrow(x48), F.linear(x48, narrow.weight, narrow.bias))  # fp32: exactly PyTorch
        with torch.autocast("cpu", dtype=torch.bfloat16):
            wide(x16)
            with torch.no_grad():
                narrow(x48)
            with native.disabled():
                narrow(x48)
        assert calls == []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear(x48, narrow.weight, narrow.bias)
        assert calls == [1]
    finally:
        native_linear._TransposedGradLinear.apply = original
    assert set(Linear(8, 4).state_dict()) == set(torch.nn.Linear(8, 4).state_dict())
