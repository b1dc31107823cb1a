"""The softmax kernel (fused SDPA) and the reference formula against an independent per-head loop.

The masks here are rebuilt from their definitions (bottom-right alignment, see attnlab.attention.context) instead of
reusing ``attnlab.attention.masks``, so a wrong mask in the library cannot hide behind itself.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import (
    AttentionContext,
    MultiHeadAttention,
    build_attention,
    reference_attention,
)

ATOL, RTOL = 1e-5, 1e-4


def naive_keep(B, T, S, causal, kpm, docs) -> torch.Tensor:
    """``(B, T, S)`` keep mask from the definitions: query t sits at key position t + S - T."""
    keep = torch.ones(B, T, S, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            for s in range(S):
                p = t + S - T
                if causal and s > p:
                    keep[b, t, s] = False
                if kpm is not None and not kpm[b, s]:
                    keep[b, t, s] = False
                if docs is not None and docs[b, s] != docs[b, p]:
                    keep[b, t, s] = False
    return keep


def naive_attention(q, k, v, keep, bias=None):
    """Per batch row and head: softmax over allowed keys; K/V head of query head h is h // (H / Hkv)."""
    B, H, T, D = q.shape
    r = H // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            scores = q[b, h] @ k[b, h // r].T / math.sqrt(D)  # (T, S)
            if bias is not None:
                scores = scores + bias.expand(B, H, T, -1)[b, h]
            for t in range(T):
                allowed = keep[b, t]
                if allowed.any():
                    w = scores[t][allowed].softmax(-1)
                    out[b, h, t] = w @ v[b, h // r][allowed]
    return out


@st.composite
def attention_setups(draw):
    H = draw(st.sampled_from([4]))
    Hkv = draw(st.sampled_from([4, 2, 1]))  # MHA, GQA, MQA
    T = draw(st.integers(1, 12))
    S = T + draw(st.sampled_from([0, 0, 3]))  # T < S: cached decoding, bottom-right aligned
    return dict(
        H=H, Hkv=Hkv, T=T, S=S, B=2,
        causal=draw(st.booleans()), pad=draw(st.booleans()), docs=draw(st.booleans()),
        bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, H, Hkv, T, S, D = c["B"], c["H"], c["Hkv"], c["T"], c["S"], 8
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, Hkv, S, D, generator=g)
    v = torch.randn(B, Hkv, S, D, generator=g)
    kpm = torch.rand(B, S, generator=g) > 0.3 if c["pad"] else None
    docs = (torch.rand(B, S, generator=g) < 0.25).long().cumsum(-1) if c["docs"] else None
    bias = torch.randn(1, H, T, S, generator=g) if c["bias"] else None
    return q, k, v, kpm, docs, bias


@settings(max_examples=60)
@given(c=attention_setups())
def test_softmax_and_reference_equal_naive_loop(c):
    q, k, v, kpm, docs, bias = make_inputs(c)
    ctx = AttentionContext(causal=c["causal"], key_padding_mask=kpm, document_ids=docs, attn_bias=bias)
    keep = naive_keep(c["B"], c["T"], c["S"], c["causal"], kpm, docs)
    expected = naive_attention(q, k, v, keep, bias)
    out = build_attention("softmax")(q, k, v, ctx)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
    ref, w = reference_attention(q, k, v, keep=keep[:, None], bias=bias)
    torch.testing.assert_close(ref, expected, atol=ATOL, rtol=RTOL)
    # weights: rows sum to 1 where a key is allowed, 0 elsewhere
    has_key = keep.any(-1)[:, None].expand(-1, c["H"], -1)
    torch.testing.assert_close(w.sum(-1), has_key.float(), atol=1e-6, rtol=0)


def test_bottom_right_causal_alignment_for_cached_decoding():
    """T=1 query against S=5 keys sees all 5; T=2 against S=5: first query sees 4 keys, second 5."""
    q, k, v = torch.randn(1, 2, 2, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    kernel = build_attention("softmax")
    out = kernel(q, k, v, AttentionContext(causal=True))
    first = kernel(q[:, :, :1], k[:, :, :4], v[:, :, :4], AttentionContext(causal=True))
    full = kernel(q[:, :, 1:], k, v, AttentionContext(causal=False))
    torch.testing.assert_close(out[:, :, :1], first, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out[:, :, 1:], full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("fn", ["softmax", "reference"])
def test_fully_masked_rows_are_zero_with_finite_grads(fn):
    q = torch.randn(2, 4, 6, 8, requires_grad=True)
    k = torch.randn(2, 2, 6, 8, requires_grad=True)
    v = torch.randn(2, 2, 6, 8, requires_grad=True)
    kpm = torch.ones(2, 6, dtype=torch.bool)
    kpm[0] = False  # row 0: no key at all
    kpm[1, :3] = False  # row 1, causal: queries 0..2 have no key
    ctx = AttentionContext(causal=True, key_padding_mask=kpm)
    if fn == "softmax":
        out = build_attention("softmax")(q, k, v, ctx)
    else:
        keep = naive_keep(2, 6, 6, True, kpm, None)[:, None]
        out = reference_attention(q, k, v, keep=keep)[0]
    assert torch.isfinite(out).all()
    assert out[0].abs().max() == 0 and out[1, :, :3].abs().max() == 0
    assert out[1, :, 3:].abs().min() > 0
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[0].abs().max() == 0 and k.grad[0].abs().max() == 0


def _mha(num_kv_heads: int) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(32, 4, num_kv_heads)


def test_gqa_with_all_kv_heads_equals_torch_multihead_attention():
    """num_kv_heads == num_heads is plain MHA: equal to torch.nn.MultiheadAttention with the same weights."""
    ours = _mha(4).eval()
    peer = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        peer.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        peer.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        peer.out_proj.weight.copy_(ours.out_proj.weight)
        peer.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(3, 10, 32)
    kpm = torch.ones(3, 10, dtype=torch.bool)
    kpm[2, 7:] = False
    future = torch.ones(10, 10, dtype=torch.bool).triu(1)  # torch: True = may NOT attend
    y = ours(x, AttentionContext(causal=True, key_padding_mask=kpm))
    y_peer, _ = peer(x, x, x, key_padding_mask=~kpm, attn_mask=future, need_weights=False)
    torch.testing.assert_close(y, y_peer, atol=ATOL, rtol=RTOL)
    default = MultiHeadAttention(32, 4)
    assert default.num_kv_heads == 4 and default.k_proj.out_features == 32


@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_grouped_shell_equals_explicit_repeat_interleave(num_kv_heads):
    mha = _mha(num_kv_heads).eval()
    x = torch.randn(2, 9, 32)
    B, T, H, D = 2, 9, 4, 8
    q = mha.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, Dh)
    k = mha.k_proj(x).view(B, T, num_kv_heads, D).transpose(1, 2)  # (B, Hkv, T, Dh)
    v = mha.v_proj(x).view(B, T, num_kv_heads, D).transpose(1, 2)
    r = H // num_kv_heads
    k_i, v_i = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)  # (B, H, T, Dh)
    o = F.scaled_dot_product_attention(q, k_i, v_i, is_causal=True)
    expected = mha.out_proj(o.transpose(1, 2).reshape(B, T, H * D))
    y = mha(x, AttentionContext(causal=True))
    torch.testing.assert_close(y, expected, atol=ATOL, rtol=RTOL)
    if num_kv_heads > 1:  # the wrong grouping (tile instead of interleave) must be distinguishable
        o_bad = F.scaled_dot_product_attention(q, k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1), is_causal=True)
        wrong = mha.out_proj(o_bad.transpose(1, 2).reshape(B, T, H * D))
        assert not torch.allclose(y, wrong, atol=1e-3)
    # parameters and cache shrink with num_kv_heads
    assert mha.k_proj.weight.shape == (num_kv_heads * D, 32)
    cache = mha.new_cache(batch_size=2, max_len=16)
    assert cache.k.shape == (2, num_kv_heads, 16, D) and cache.num_bytes == 2 * 2 * num_kv_heads * 16 * D * 4


@pytest.mark.parametrize("bias_shape", [(1, 4, 7, 7), (2, 1, 7, 7), (2, 4, 7, 7)])
def test_attn_bias_matches_naive_with_masks(bias_shape):
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    bias = torch.randn(bias_shape)
    kpm = torch.ones(2, 7, dtype=torch.bool)
    kpm[1, 5:] = False
    ctx = AttentionContext(causal=True, key_padding_mask=kpm, attn_bias=bias)
    expected = naive_attention(q, k, v, naive_keep(2, 7, 7, True, kpm, None), bias)
    torch.testing.assert_close(build_attention("softmax")(q, k, v, ctx), expected, atol=ATOL, rtol=RTOL)
    without = build_attention("softmax")(q, k, v, AttentionContext(causal=True, key_padding_mask=kpm))
    assert not torch.allclose(without, expected, atol=1e-3)


def test_explicit_scale_and_dropout():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    out = build_attention("softmax", scale=0.5)(q, k, v)
    expected = torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) @ v
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
    drop = build_attention("softmax", dropout=0.5)
    plain = build_attention("softmax")(q, k, v)
    torch.testing.assert_close(drop.eval()(q, k, v), plain, atol=ATOL, rtol=RTOL)  # no dropout in eval
    assert not torch.allclose(drop.train()(q, k, v), plain, atol=1e-3)
    with pytest.raises(ValueError, match="dropout"):
        build_attention("softmax", dropout=1.0)


def test_bf16_close_to_fp32_reference():
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    kpm = torch.ones(2, 16, dtype=torch.bool)
    kpm[0, 12:] = False
    ctx = AttentionContext(causal=True, key_padding_mask=kpm)
    ref = naive_attention(q, k, v, naive_keep(2, 16, 16, True, kpm, None))
    out = build_attention("softmax")(q.bfloat16(), k.bfloat16(), v.bfloat16(), ctx)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)  # bf16 tolerance: atol 2e-2


def test_call_errors_name_the_expected_shapes():
    kernel = build_attention("softmax")
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    with pytest.raises(ValueError, match=r"\(B, H, T, Dh\)"):
        kernel(q[0], k, k)
    with pytest.raises(ValueError, match="do not match"):
        kernel(q, k, k[..., :4])
    with pytest.raises(ValueError, match="not a multiple of 3 kv heads"):
        kernel(q, k[:, :3], k[:, :3])
    with pytest.raises(ValueError, match=r"\(2, 5\), got \(2, 4\)"):
        kernel(q, k, k, AttentionContext(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)))
    with pytest.raises(TypeError, match="bool"):
        kernel(q, k, k, AttentionContext(key_padding_mask=torch.ones(2, 5)))
    with pytest.raises(ValueError, match="more queries"):
        kernel(q, k[:, :, :3], k[:, :, :3], AttentionContext(causal=True))
