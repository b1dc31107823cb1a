"""neighborhood: NATTEN border rule, limit cases and exactness against the dense reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import AttentionContext, MultiHeadAttention, build_attention, reference_attention
from attnlab.attention.kernels.neighborhood import na_axis_mask


def qkv(B, H, Hkv, T, S, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    return mk(B, H, T, D), mk(B, Hkv, S, D), mk(B, Hkv, S, D)


def assert_matches(kernel, q, k, v, ctx, keep, valid_rows=None):
    """Forward and q/k/v gradients equal the reference with mask ``keep`` (fp32, atol 1e-5)."""
    out, (ref, _) = kernel(q, k, v, ctx), reference_attention(q, k, v, keep=keep)
    grad = torch.randn_like(out)
    if valid_rows is not None:  # outputs of pad queries are unspecified
        grad, out, ref = (t * valid_rows[:, None, :, None] for t in (grad, out, ref))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def natten_window_start(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """Legacy NATTEN ``get_window_start`` (tag 0.14.6, natten_cpu_commons.h), transcribed literally."""
    nh = kernel_size // 2
    if dilation <= 1:
        return max(index - nh, 0) + (index + nh >= length) * (length - index - nh - 1)
    ni = index - nh * dilation
    if ni < 0:
        return index % dilation
    if index + nh * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nh * dilation
        return a + imodd - kernel_size * dilation
    return ni


def natten_mask(length: int, kernel_size: int, dilation: int) -> torch.Tensor:
    keep = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        start = natten_window_start(i, length, kernel_size, dilation)
        keep[i, [start + t * dilation for t in range(kernel_size)]] = True
    return keep


def test_neighbor_sets_match_legacy_natten_everywhere():
    for length in range(1, 41):
        for k in (1, 3, 5, 7, 9):
            for d in range(1, 6):
                if k * d > length:
                    continue
                got = na_axis_mask(length, k, d, causal=False)
                assert torch.equal(got, natten_mask(length, k, d)), (length, k, d)
                assert (got.sum(-1) == k).all()


@pytest.mark.parametrize("L,k,d,block,recompute",
                         [(40, 5, 3, 4, False), (23, 7, 2, 5, True), (37, 9, 1, 8, False), (17, 3, 5, 3, True),
                          (9, 9, 1, 2, False)])
def test_1d_kernel_matches_natten_reference(L, k, d, block, recompute):
    q, k_, v = qkv(2, 4, 2, L, L, seed=L + k)
    kernel = build_attention("neighborhood", kernel_size=k, dilation=d, block_size=block, recompute=recompute)
    assert_matches(kernel, q, k_, v, AttentionContext(), natten_mask(L, k, d)[None, None])


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), ky=st.sampled_from([1, 3, 5]), kx=st.sampled_from([1, 3, 5]),
       dy=st.integers(1, 3), dx=st.integers(1, 3), block=st.integers(1, 4))
def test_2d_kernel_is_product_of_natten_axes(rows, cols, ky, kx, dy, dx, block):
    if ky * dy > rows or kx * dx > cols:
        return
    T = rows * cols
    keep = natten_mask(rows, ky, dy)[:, None, :, None] & natten_mask(cols, kx, dx)[None, :, None, :]
    q, k, v = qkv(1, 2, 1, T, T, seed=T)
    kernel = build_attention("neighborhood", kernel_size=(ky, kx), dilation=(dy, dx), block_size=block)
    assert_matches(kernel, q, k, v, AttentionContext(grid=(rows, cols)), keep.reshape(T, T)[None, None])


@pytest.mark.parametrize("grid", [None, (5, 7)])
def test_kernel_covering_everything_is_full_attention(grid):
    T = 35
    q, k, v = qkv(2, 4, 4, T, T)
    ks = 35 if grid is None else (5, 7)
    kernel = build_attention("neighborhood", kernel_size=ks)
    assert_matches(kernel, q, k, v, AttentionContext(grid=grid), None)


def test_dilation_one_equals_bidirectional_sliding_window_away_from_borders():
    L, ks = 41, 7
    q, k, v = qkv(1, 2, 2, L, L)
    na = build_attention("neighborhood", kernel_size=ks, block_size=6)(q, k, v, AttentionContext())
    sw = build_attention("sliding_window", window=ks - 1, block_size=5)(q, k, v, AttentionContext())
    r = ks // 2
    torch.testing.assert_close(na[:, :, r : L - r], sw[:, :, r : L - r], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(na[:, :, :r], sw[:, :, :r])  # borders shift inward instead


def test_dilation_fills_groups_equals_masked_full_attention():
    L, ks, d = 24, 3, 8  # k * d == L: every group holds exactly k members
    q, k, v = qkv(1, 2, 2, L, L)
    i = torch.arange(L)
    keep = ((i[:, None] - i[None, :]) % d == 0)[None, None]
    assert_matches(build_attention("neighborhood", kernel_size=ks, dilation=d), q, k, v, AttentionContext(), keep)


@pytest.mark.parametrize("L,k,d", [(30, 5, 1), (30, 3, 4), (11, 15, 1)])
def test_causal_1d(L, k, d):
    q, k_, v = qkv(2, 4, 2, L, L)
    i = torch.arange(L)
    diff = i[:, None] - i[None, :]
    keep = (diff >= 0) & (diff % d == 0) & (diff // d < k)
    kernel = build_attention("neighborhood", kernel_size=k, dilation=d, block_size=4)
    assert_matches(kernel, q, k_, v, AttentionContext(causal=True), keep[None, None])
    if k >= L:  # causal with k >= L equals causal full attention
        assert torch.equal(keep, torch.ones(L, L, dtype=torch.bool).tril())


def test_padding_and_documents_1d():
    L = 26
    q, k, v = qkv(2, 4, 2, L, L)
    kpm = torch.rand(2, L, generator=torch.Generator().manual_seed(3)) > 0.2
    docs = torch.tensor([[0] * 13 + [1] * 13, [5] * 20 + [6] * 6])
    ctx = AttentionContext(key_padding_mask=kpm, document_ids=docs)
    keep = natten_mask(L, 5, 2)[None, None] & kpm[:, None, None, :] & (docs[:, None, :, None] == docs[:, None, None, :])
    assert_matches(build_attention("neighborhood", kernel_size=5, dilation=2), q, k, v, ctx, keep, valid_rows=kpm.float())


def test_causal_decoding_with_rolling_cache():
    torch.manual_seed(0)
    dim, T = 16, 20
    mha = MultiHeadAttention(dim, 2, kernel="neighborhood", kernel_options={"kernel_size": 3, "dilation": 2}).eval()
    x = torch.randn(1, T, dim)
    with torch.no_grad():
        full = mha(x, AttentionContext(causal=True))
        cache = mha.new_cache(1, max_len=T)
        steps = [mha(x[:, t : t + 1], AttentionContext(causal=True), cache=cache) for t in range(T)]
    assert cache.k.shape[2] <= (3 - 1) * 2 + 1
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"must be odd .* got 4; try 3 \(or 5 if the grid has room\)"):
        build_attention("neighborhood", kernel_size=4)
    with pytest.raises(ValueError, match="dilation"):
        build_attention("neighborhood", dilation=0)
    q, k, v = qkv(1, 1, 1, 10, 10)
    with pytest.raises(ValueError, match=r"kernel_size\*dilation = 5\*3 = 15 exceeds the sequence length 10"):
        build_attention("neighborhood", kernel_size=5, dilation=3)(q, k, v, AttentionContext())
    with pytest.raises(ValueError, match="grid"):
        build_attention("neighborhood", kernel_size=3)(q, k, v, AttentionContext(grid=(3, 4)))
