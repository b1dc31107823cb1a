"""Native fused LayerNorm (fp32 -> bf16) and bias + GELU kernels (attnlab/native/pointwise): values and
gradients against the float64 formulas, and the layers that use them under bf16 autocast."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import native
from attnlab.layers.mlp import MLP
from attnlab.layers.norms import MatmulInputLayerNorm, build_norm
from attnlab.native import pointwise
from attnlab.native.pointwise import bias_gelu_bf16, layer_norm_bf16
from native_cpu import needs_native


pytestmark = needs_native

BF16_HALF_ULP = 2.0**-8  # relative: rounding to bf16 (8 significant bits) errs by at most half an ulp


def _within_bf16_rounding(got: torch.Tensor, exact: torch.Tensor, atol: float = 1e-6) -> None:
    """``got`` (bf16) is ``exact`` rounded to bf16, up to the kernel's fp32 arithmetic (one ulp at most, or
    ``atol``: the fp32 error where ``exact`` is near 0)."""
    err = (got.double() - exact).abs()
    assert (err <= exact.abs() * 2 * BF16_HALF_ULP + atol).all(), f"max error {err.max().item():.3g}"


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 70), d=st.sampled_from([1, 7, 16, 40, 384]), affine=st.sampled_from(["both", "weight", "none"]),
       shift=st.sampled_from([0.0, 50.0]), seed=st.integers(0, 2**16))
def test_layer_norm_matches_the_formula_and_its_gradients(rows, d, affine, shift, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d, generator=g) * 3 + shift).requires_grad_()  # shift: a large mean (two-pass variance)
    w = torch.randn(d, generator=g).requires_grad_() if affine != "none" else None
    b = torch.randn(d, generator=g).requires_grad_() if affine == "both" else None
    y = layer_norm_bf16(x, w, b, 1e-5)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    ref = F.layer_norm(x.double(), (d,), None if w is None else w.double(), None if b is None else b.double(), 1e-5)
    # fp32 round-off of x - mean: |mean| / std * 2^-24 per normalised unit (PyTorch's fp32 LayerNorm: the same)
    _within_bf16_rounding(y, ref.detach(), atol=2e-5)
    dy = torch.randn(rows, d, generator=g).bfloat16()
    params = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad(y, params, dy)
    want = torch.autograd.grad(ref, params, dy.double())
    # fp32 round-off of dx ~ rstd * |dy| * 2^-24 per term, even where the exact dx is ~0 (d = 1)
    rstd_max = (x.detach().double().var(-1, unbiased=False) + 1e-5).rsqrt().max()
    floor = 1e-6 * rstd_max * dy.double().abs().max() * (rows * d) ** 0.5
    for a, r in zip(got, want):
        assert a.dtype == torch.float32
        assert (a.double() - r).norm() <= 1e-5 * r.norm() + floor


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 50), n=st.sampled_from([1, 5, 16, 33, 1536]), with_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_bias_gelu_matches_the_erf_formula_and_its_gradients(rows, n, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(rows, n, generator=g) * 4).bfloat16().requires_grad_()  # reaches both tails (|u| ~ 12)
    bias = torch.randn(n, generator=g).requires_grad_() if with_bias else None
    out = bias_gelu_bf16(h, bias)
    assert out.dtype == torch.bfloat16
    u = h.double() + (0 if bias is None else bias.double())
    exact = F.gelu(u)
    _within_bf16_rounding(out, exact.detach())
    dout = torch.randn(rows, n, generator=g).bfloat16()
    params = [t for t in (h, bias) if t is not None]
    got = torch.autograd.grad(out, params, dout)
    slope = (0.5 * (1 + torch.erf(u / 2**0.5)) + u * torch.exp(-u * u / 2) / (2 * torch.pi) ** 0.5).detach()
    kept = pointwise.bias_gelu_op(h.detach(), None if bias is None else bias.detach(), True)[1]
    _within_bf16_rounding(kept, slope)  # the derivative the forward keeps, rounded once
    dh_exact = dout.double() * slope
    # dh = bf16(dout * bf16(slope)): two roundings of at most half an ulp each
    err = (got[0].double() - dh_exact).abs()
    assert (err <= dh_exact.abs() * 2 * BF16_HALF_ULP * 1.01 + 1e-6).all(), f"max error {err.max().item():.3g}"
    if bias is not None:  # summed in fp32 from dout * bf16(slope), before dh is rounded
        bound = BF16_HALF_ULP * 1.01 * dh_exact.abs().sum(0) + 1e-5
        assert ((got[1].double() - dh_exact.sum(0)).abs() <= bound).all()


def test_kernels_decline_inputs_they_do_not_take():
    x = torch.randn(4, 8)
    assert layer_norm_bf16(x.bfloat16(), None, None, 1e-5) is None  # bf16 input: PyTorch's LayerNorm
    assert layer_norm_bf16(x, torch.ones(8, dtype=torch.float64), None, 1e-5) is None
    assert bias_gelu_bf16(x, None) is None  # fp32 input
    assert bias_gelu_bf16(x.bfloat16(), torch.zeros(3)) is None  # bias of the wrong size
    with native.disabled():
        assert layer_norm_bf16(x, None, None, 1e-5) is None and bias_gelu_bf16(x.bfloat16(), None) is None


def test_layers_use_the_kernels_under_bf16_autocast_only():
    """Pre-norm LayerNorm and the GELU MLP take the native path under bf16 autocast (bf16 out, same values as
    PyTorch's path to bf16 rounding); in fp32 they are exactly PyTorch's."""
    torch.manual_seed(0)
    norm, plain = MatmulInputLayerNorm(64), build_norm("layernorm", 64)
    assert type(plain) is torch.nn.LayerNorm
    mlp = MLP(64, 256)
    with torch.no_grad():
        for p in (*norm.parameters(), *mlp.parameters()):
            p.normal_()
    x = torch.randn(3, 10, 64)
    assert torch.equal(norm(x), F.layer_norm(x, (64,), norm.weight, norm.bias))
    assert torch.equal(mlp(x), mlp.fc_out(F.gelu(mlp.fc_in(x))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, m = norm(x), mlp(x)
        with native.disabled():
            y_ref, m_ref = norm(x), mlp(x)
    assert y.dtype == torch.bfloat16 and y_ref.dtype == torch.float32
    assert (y.float() - y_ref).abs().max() <= 2 * BF16_HALF_ULP * y_ref.abs().max()
    assert m.dtype == m_ref.dtype == torch.bfloat16
    assert (m.float() - m_ref.float()).norm() <= 0.01 * m_ref.float().norm()


def test_hidden_states_stay_fp32_under_autocast():
    """Only the pre-norms feeding matmuls return bf16; the final norm (the model's output) is PyTorch's."""
    from attnlab.models import create_model

    model = create_model("gpt", vocab_size=64, dim=64, num_layers=1, num_heads=2, max_seq_len=16)
    assert isinstance(model.blocks[0].attn_norm, MatmulInputLayerNorm)
    assert type(model.final_norm) is torch.nn.LayerNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encode(torch.randint(0, 64, (2, 16))).dtype == torch.float32


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 40), d=st.sampled_from([7, 16, 384]), seed=st.integers(0, 2**16))
def test_add_layer_norm_matches_the_formula_and_its_gradients(rows, d, seed):
    """h = x + branch (fp32 + bf16) exactly as PyTorch adds them; LayerNorm(h) in bf16; backwards the
    residual gradient of h is added to the LayerNorm's, and the branch gets that sum rounded to bf16."""
    from attnlab.native.pointwise import add_layer_norm_bf16

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d, generator=g) * 2).requires_grad_()
    branch = torch.randn(rows, d, generator=g).bfloat16().requires_grad_()
    w, b = torch.randn(d, generator=g).requires_grad_(), torch.randn(d, generator=g).requires_grad_()
    h, y = add_layer_norm_bf16(x, branch, w, b, 1e-5)
    assert h.dtype == torch.float32 and torch.equal(h, x.detach() + branch.detach().float())
    h64 = x.double() + branch.double()
    ref = F.layer_norm(h64, (d,), w.double(), b.double(), 1e-5)
    _within_bf16_rounding(y, ref.detach(), atol=2e-5)
    gy, gh = torch.randn(rows, d, generator=g).bfloat16(), torch.randn(rows, d, generator=g)
    dx, dbranch, dw, db = torch.autograd.grad((y.float() * gy.float()).sum() + (h * gh).sum(), (x, branch, w, b))
    rx, _, rw, rb = torch.autograd.grad((ref * gy.double()).sum() + (h64 * gh.double()).sum(), (x, branch, w, b))
    for a, r in ((dx, rx), (dw, rw), (db, rb)):
        assert (a.double() - r).norm() <= 1e-5 * r.norm() + 1e-6
    assert dbranch.dtype == torch.bfloat16 and torch.equal(dbranch, dx.bfloat16())


def test_deferred_residual_adds_change_nothing_in_fp32():
    """GPT blocks hand their MLP output to the next block's first norm (Block.forward_pending); in fp32 the
    hidden states equal calling the blocks one by one, bit for bit, and a hooked block is called normally."""
    from attnlab.attention import AttentionContext
    from attnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("gpt", vocab_size=64, dim=32, num_layers=3, num_heads=2, max_seq_len=16)
    ids = torch.randint(0, 64, (2, 16))
    positions = torch.arange(16)
    x = model.embed(ids, positions)
    for block in model.blocks:
        x = block(x, AttentionContext(causal=True, positions=positions), positions)
    want = model.final_norm(x)
    assert torch.equal(model.encode(ids), want)
    seen = []
    handle = model.blocks[1].register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        assert torch.equal(model.encode(ids), want)
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 16, 32)
