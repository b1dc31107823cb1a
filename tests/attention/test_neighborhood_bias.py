"""Neighborhood attention's relative position bias (NAT/DiNAT RPB): exact against the dense reference with the bias,
gradients to the table, NATTEN's indexing at borders."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionContext, build_attention, reference_attention


def _kernel(heads, kv_heads, k, d=1, **kw):
    kern = build_attention("neighborhood", kernel_size=k, dilation=d, relative_bias=True,
                           structural=dict(num_heads=heads, num_kv_heads=kv_heads, head_dim=8, max_seq_len=256), **kw)
    with torch.no_grad():
        kern.rel_bias.normal_()
    return kern


@pytest.mark.parametrize("grid, T, k, d, H, Hkv, recompute", [
    ((6, 7), 42, 3, 1, 4, 2, False), ((8, 8), 64, 3, 2, 2, 2, True), ((5, 5), 25, 5, 1, 2, 1, False),
    (None, 20, 5, 1, 2, 1, False), (None, 30, 3, 3, 2, 2, True)])
def test_output_and_gradients_equal_the_reference_with_the_bias(grid, T, k, d, H, Hkv, recompute):
    torch.manual_seed(0)
    kern = _kernel(H, Hkv, k, d, recompute=recompute)
    q = torch.randn(2, H, T, 8, requires_grad=True)
    kk, v = (torch.randn(2, Hkv, T, 8, requires_grad=True) for _ in range(2))
    ctx = AttentionContext(causal=False, grid=grid)
    out = kern(q, kk, v, ctx)
    ref, _ = reference_attention(q, kk, v, keep=kern.full_mask(T, T, ctx), bias=kern.full_bias(T, T, ctx))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ours = torch.autograd.grad(out.square().sum(), [q, kk, v, kern.rel_bias])
    theirs = torch.autograd.grad(ref.square().sum(), [q, kk, v, kern.rel_bias])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert ours[3].abs().sum() > 0


def test_natten_indexing_at_the_border_and_inside():
    """Pair (query, key) reads table[h, dy + k - 1, dx + k - 1] with the offsets in dilation-group units."""
    kern = _kernel(2, 2, 3)
    ctx = AttentionContext(causal=False, grid=(5, 5))
    bias = kern.pattern_bias(25, 25, ctx)[0]                                  # (H, T, S)
    t = kern.rel_bias
    corner, far = 0, 2 * 5 + 2                                               # (0, 0) sees up to (2, 2): offset +2
    torch.testing.assert_close(bias[:, corner, far], t[:, 4, 4])
    torch.testing.assert_close(bias[:, 12, 6], t[:, 1, 1])                   # (2, 2) -> (1, 1): offset -1, -1
    assert (bias[:, corner, 3] == 0).all()                                   # (0, 3): outside the window
    dil = _kernel(1, 1, 3, d=2)
    b = dil.pattern_bias(64, 64, AttentionContext(causal=False, grid=(8, 8)))[0, 0]
    torch.testing.assert_close(b[0, 2 * 8 + 4], dil.rel_bias[0, 3, 4])       # (0,0) -> (2,4): group offsets 1, 2


def test_relative_bias_needs_a_kernel_size_and_matching_heads():
    with pytest.raises(ValueError, match="relative_bias needs an explicit kernel_size"):
        build_attention("neighborhood", relative_bias=True)
    kern = _kernel(2, 2, 3)
    q = torch.randn(1, 4, 25, 8)
    with pytest.raises(ValueError, match="table has 2 heads but q has 4"):
        kern(q, q, q, AttentionContext(causal=False, grid=(5, 5)))
