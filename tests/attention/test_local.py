"""sliding_window: exact against the dense reference with an explicit band mask, forward and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import AttentionContext, MultiHeadAttention, RollingKVCache, build_attention, reference_attention

ATOL, RTOL = 1e-5, 1e-4


def band(T: int, S: int, window: int, causal: bool) -> torch.Tensor:
    """Independent band mask (1, 1, T, S); query t sits at key position t + S - T."""
    i = torch.arange(S - T, S)[:, None]
    j = torch.arange(S)[None, :]
    keep = (i - j >= 0) & (i - j < window) if causal else (i - j).abs() <= window // 2
    return keep[None, None]


def qkv(B, H, Hkv, T, S, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    return mk(B, H, T, D), mk(B, Hkv, S, D), mk(B, Hkv, S, D)


def assert_matches(kernel, q, k, v, ctx, keep, valid_rows=None):
    """Forward and q/k/v gradients of ``kernel`` equal the reference with mask ``keep``."""
    out = kernel(q, k, v, ctx)
    ref, _ = reference_attention(q, k, v, keep=keep)
    grad = torch.randn_like(out)
    if valid_rows is not None:  # outputs of pad queries are unspecified
        grad = grad * valid_rows[:, None, :, None]
        out, ref = out * valid_rows[:, None, :, None], ref * valid_rows[:, None, :, None]
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("causal", [True, False])
def test_window_covering_sequence_is_full_attention(causal):
    q, k, v = qkv(2, 4, 4, 19, 19)
    kernel = build_attention("sliding_window", window=64)
    ctx = AttentionContext(causal=causal)
    keep = torch.ones(19, 19, dtype=torch.bool).tril()[None, None] if causal else None
    assert_matches(kernel, q, k, v, ctx, keep)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 40), window=st.integers(1, 12), block=st.integers(1, 9), causal=st.booleans(),
       heads=st.sampled_from([(2, 2), (4, 2), (4, 1)]), recompute=st.booleans())
def test_band_matches_reference(T, window, block, causal, heads, recompute):
    H, Hkv = heads
    q, k, v = qkv(2, H, Hkv, T, T, seed=T * 31 + window)
    kernel = build_attention("sliding_window", window=window, block_size=block, recompute=recompute)
    assert_matches(kernel, q, k, v, AttentionContext(causal=causal), band(T, T, window, causal))


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_padding_documents_and_gqa(causal, recompute):
    T, w = 29, 6
    q, k, v = qkv(2, 6, 2, T, T)
    kpm = torch.rand(2, T, generator=torch.Generator().manual_seed(1)) > 0.25
    docs = torch.tensor([[0] * 10 + [1] * 12 + [2] * 7, [0] * 3 + [1] * 26])
    ctx = AttentionContext(causal=causal, key_padding_mask=kpm, document_ids=docs)
    keep = band(T, T, w, causal) & kpm[:, None, None, :] & (docs[:, None, :, None] == docs[:, None, None, :])
    kernel = build_attention("sliding_window", window=w, block_size=4, recompute=recompute)
    assert_matches(kernel, q, k, v, ctx, keep, valid_rows=kpm.float())


@pytest.mark.parametrize("recompute", [False, True])
def test_query_without_keys_outputs_zero_not_nan(recompute):
    q, k, v = qkv(1, 2, 2, 8, 8)
    kpm = torch.ones(1, 8, dtype=torch.bool)
    kpm[0, :4] = False  # causal window 2: queries 0..3 see only padding
    kernel = build_attention("sliding_window", window=2, recompute=recompute)
    out = kernel(q, k, v, AttentionContext(causal=True, key_padding_mask=kpm))
    assert torch.isfinite(out).all()
    assert out[0, :, :4].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("T", [1, 3, 7])
def test_bottom_right_aligned_queries(T):
    S, w = 17, 5
    q, k, v = qkv(2, 4, 2, T, S)
    kernel = build_attention("sliding_window", window=w, block_size=3)
    assert_matches(kernel, q, k, v, AttentionContext(causal=True), band(T, S, w, True))


def test_pattern_mask_is_the_band():
    kernel = build_attention("sliding_window", window=4)
    for causal in (True, False):
        got = kernel.pattern_mask(9, 12, AttentionContext(causal=causal))
        assert torch.equal(got, band(9, 12, 4, causal))


def test_rolling_cache_decoding_matches_full_forward():
    torch.manual_seed(0)
    dim, T, w = 32, 23, 5
    mha = MultiHeadAttention(dim, num_heads=4, num_kv_heads=2, kernel="sliding_window",
                             kernel_options={"window": w}).eval()
    x = torch.randn(2, T, dim)
    with torch.no_grad():
        full = mha(x, AttentionContext(causal=True))
        cache = mha.new_cache(2, max_len=T)
        assert isinstance(cache, RollingKVCache)
        steps = [mha(x[:, :3], AttentionContext(causal=True), cache=cache)]  # a short prompt first
        assert cache.k.shape[2] <= w
        for t in range(3, T):
            steps.append(mha(x[:, t : t + 1], AttentionContext(causal=True), cache=cache))
            assert cache.k.shape[2] <= w and cache.v.shape[2] <= w
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=RTOL)
    assert cache.seen == T


@pytest.mark.parametrize("recompute", [False, True])
def test_long_sequence_trains_without_quadratic_memory(recompute):
    """N = 8192: an N x N fp32 score matrix alone would be 256 MB per head; saved tensors stay O(N w)."""
    N, w = 8192, 16
    q, k, v = qkv(1, 1, 1, N, N, D=16)
    kernel = build_attention("sliding_window", window=w, recompute=recompute)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = kernel(q, k, v, AttentionContext(causal=True))
    out.sum().backward()
    assert max(saved) < 64 * N and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_window_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="window"):
        build_attention("sliding_window", window=bad)


def test_plan_made_in_inference_mode_still_trains():
    q, k, v = qkv(1, 2, 2, 13, 13)
    kernel = build_attention("sliding_window", window=3, block_size=5)
    with torch.inference_mode():
        kernel(q.detach(), k.detach(), v.detach(), AttentionContext(causal=True))
    kernel(q, k, v, AttentionContext(causal=True)).sum().backward()
    assert torch.isfinite(q.grad).all()


def test_bfloat16_within_spec_tolerance():
    """bf16 within atol 2e-2 of the fp32 reference (softmax runs in fp32 inside)."""
    q, k, v = qkv(2, 4, 2, 30, 30, D=16)
    ctx = AttentionContext(causal=True)
    out = build_attention("sliding_window", window=7)(q.bfloat16(), k.bfloat16(), v.bfloat16(), ctx)
    assert out.dtype == torch.bfloat16
    ref, _ = reference_attention(q, k, v, keep=band(30, 30, 7, True))
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name,options,grid", [
    ("sliding_window", {"window": 9, "block_size": 4}, None),
    ("block_local", {"block_size": 4, "halo": 3}, None),
    ("neighborhood", {"kernel_size": 5, "dilation": 2, "block_size": 3}, None),
    ("neighborhood", {"kernel_size": 3, "block_size": 2}, (6, 7)),
    ("block_local", {"block_size": 2, "halo": 1}, (6, 7)),
    ("axial", {"mode": "row"}, (6, 7)),
])
def test_many_small_chunks_and_strided_spans(monkeypatch, name, options, grid, recompute):
    """A tiny chunk budget forces multi-chunk loops and, for 1-D bands, the strided-view (no gather) path."""
    import attnlab.attention.engines.blocked as local

    monkeypatch.setattr(local, "_CHUNK_ELEMS", 200)
    monkeypatch.setattr(local, "_CHUNK_ELEMS_THREADED", 200)
    T = 42
    q, k, v = qkv(2, 4, 2, T, T, seed=5)
    kpm = torch.ones(2, T, dtype=torch.bool)
    kpm[1, -6:] = False
    for causal in (False, True):
        kernel = build_attention(name, recompute=recompute, **options)
        ctx = AttentionContext(causal=causal, grid=grid, key_padding_mask=kpm)
        assert_matches(kernel, q, k, v, ctx, kernel.full_mask(T, T, ctx), valid_rows=kpm.float())


@pytest.mark.parametrize("band_path", [False, True])
def test_second_backward_with_retained_graph_gives_the_same_gradients(monkeypatch, band_path):
    """Kept probabilities are released chunk by chunk in the first backward; a second backward through a
    retained graph recomputes them and must give identical gradients (both the gather and the band path)."""
    import attnlab.attention.engines.blocked as local

    if band_path:
        monkeypatch.setattr(local, "_CHUNK_ELEMS", 200)
        monkeypatch.setattr(local, "_CHUNK_ELEMS_THREADED", 200)
    q, k, v = qkv(1, 4, 2, 40, 40, seed=3)
    out = build_attention("sliding_window", window=9, block_size=4)(q, k, v, AttentionContext(causal=True))
    first = torch.autograd.grad(out.square().sum(), (q, k, v), retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), (q, k, v))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        assert a.abs().sum() > 0
