"""Combiner-Fixed: properties (a)-(d), a loop reference, the own-summary option, the cache."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import AttentionContext, MultiHeadAttention, build_attention, reference_attention
from attnlab.attention.kernels.combiner import POOLINGS
from attnlab.attention.masks import causal_mask

B, H, T, D = 2, 4, 23, 8
ATOL, RTOL = 1e-5, 1e-4


def qkv(hkv=H, t=T, seed=1, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(B, n, t, D, generator=g) for n in (H, hkv, hkv)]
    return [x.requires_grad_(grad) for x in out]


def pool(x, pooling):
    pre, red = pooling.split("-")
    x = x.relu() if pre == "relu" else x
    return {"max": x.amax(0), "mean": x.mean(0), "sum": x.sum(0)}[red]


def loop_reference(q, k, v, s, causal, exclude_own=True, pooling="identity-max", kpm=None):
    """The Combiner equations token by token (one head, one row at a time)."""
    Bq, Hq, L, d = q.shape
    scale = d ** -0.5
    valid = torch.ones(Bq, L, dtype=torch.bool) if kpm is None else kpm
    out = torch.zeros_like(q)
    segs = [list(range(r * s, min((r + 1) * s, L))) for r in range(math.ceil(L / s))]
    for b in range(Bq):
        for h in range(Hq):
            kbar, vbar = {}, {}
            for r, seg in enumerate(segs):
                mem = [t for t in seg if valid[b, t]]
                if not mem:
                    continue
                qb = pool(q[b, h, mem] * scale, pooling)
                kbar[r] = pool(k[b, h, mem], pooling)
                vbar[r] = torch.softmax(k[b, h, mem] @ qb, 0) @ v[b, h, mem]
            for i in range(L):
                si = i // s
                local = [j for j in segs[si] if valid[b, j] and (not causal or j <= i)]
                summ = [r for r in kbar if (r < si if causal else (r != si or not exclude_own))]
                logits = [q[b, h, i] @ k[b, h, j] * scale for j in local] + [q[b, h, i] @ kbar[r] * scale for r in summ]
                if not logits:
                    continue
                p = torch.softmax(torch.stack(logits), 0)
                vals = [v[b, h, j] for j in local] + [vbar[r] for r in summ]
                out[b, h, i] = (p[:, None] * torch.stack(vals)).sum(0)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("s", [T, 40, 1])
def test_a_b_one_segment_or_unit_segments_are_dense(causal, s):
    q, k, v = qkv(hkv=2)
    out = build_attention("combiner", segment=s)(q, k, v, AttentionContext(causal=causal))
    ref, _ = reference_attention(q, k, v, keep=causal_mask(T, T) if causal else None)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_loop_reference(pooling, causal):
    q, k, v = (x[:1, :2] for x in qkv())
    kpm = torch.ones(1, T, dtype=torch.bool)
    kpm[0, [3, 9, 10, 11, 22]] = False  # including a whole segment (9..11) and the ragged tail
    ker = build_attention("combiner", segment=3, pooling=pooling)
    out = ker(q, k, v, AttentionContext(causal=causal, key_padding_mask=kpm))
    ref = loop_reference(q, k, v, 3, causal, pooling=pooling, kpm=kpm)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("query_block", [1, 3, 7, 12])
def test_query_blocks_give_the_same_outputs_and_gradients(causal, query_block):
    """Blocks of 1..4 segments (causal blocks skip later summaries) == one block == the loop reference."""
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[0, [2, 8, 9, 10, 11, 21]] = False  # a whole segment (8..11) and a hole in the ragged tail
    ctx = AttentionContext(causal=causal, key_padding_mask=kpm)
    q, k, v = qkv(hkv=2, grad=True)
    blocked = build_attention("combiner", segment=4, query_block=query_block)(q, k, v, ctx)
    grads = torch.autograd.grad(blocked.square().sum(), (q, k, v))
    whole = build_attention("combiner", segment=4, query_block=10_000)(q, k, v, ctx)
    torch.testing.assert_close(blocked, whole, atol=ATOL, rtol=RTOL)
    for g, g_ref in zip(grads, torch.autograd.grad(whole.square().sum(), (q, k, v))):
        torch.testing.assert_close(g, g_ref, atol=ATOL, rtol=RTOL)
    heads = [0, 2]  # query heads 0 and 2 read kv heads 0 and 1 (repeat_interleave grouping)
    q1, k1, v1 = q.detach()[:1, heads], k.detach()[:1], v.detach()[:1]
    ref = loop_reference(q1, k1, v1, 4, causal, kpm=kpm[:1])
    torch.testing.assert_close(blocked[:1, heads], ref, atol=ATOL, rtol=RTOL)


def test_own_segment_summary_option_changes_only_bidirectional():
    q, k, v = qkv()
    paper = build_attention("combiner", segment=5)
    code = build_attention("combiner", segment=5, exclude_own_summary=False)
    bi, causal = AttentionContext(causal=False), AttentionContext(causal=True)
    torch.testing.assert_close(paper(q, k, v, causal), code(q, k, v, causal), atol=0, rtol=0)
    assert not torch.allclose(paper(q, k, v, bi), code(q, k, v, bi), atol=1e-3)
    torch.testing.assert_close(code(q, k, v, bi), loop_reference(q, k, v, 5, False, exclude_own=False),
                               atol=ATOL, rtol=RTOL)
    # s = 1 with the own summary: each token's own value is counted twice, so it is not dense
    ref, _ = reference_attention(q, k, v)
    one = build_attention("combiner", segment=1, exclude_own_summary=False)
    assert not torch.allclose(one(q, k, v, bi), ref, atol=1e-3)


def test_c_causal_gradients_do_not_reach_the_future():
    q, k, v = qkv(grad=True)
    out = build_attention("combiner", segment=4)(q, k, v, AttentionContext(causal=True))
    i = 9  # inside segment 2, so segment 2's (unmasked) summary must not leak back
    out[:, :, i].sum().backward()
    for x in (q, k, v):
        assert x.grad[:, :, i + 1:].abs().sum() == 0


@pytest.mark.parametrize("causal", [True, False])
def test_d_full_support_and_weights_sum_to_one(causal):
    q, k, v = qkv(grad=True)
    ker = build_attention("combiner", segment=4)
    ctx = AttentionContext(causal=causal)
    out = ker(q, k, v, ctx)
    w = ker.attention_weights(q, k, v, ctx)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w @ v, out, atol=ATOL, rtol=RTOL)
    visible = causal_mask(T, T)[0, 0] if causal else torch.ones(T, T, dtype=torch.bool)
    assert (w[..., visible] > 0).all() and (w[..., ~visible] == 0).all()
    for i in (0, 7, T - 1):  # d o_i / d v_j != 0 for every visible j
        (g,) = torch.autograd.grad(out[:, :, i].sum(), v, retain_graph=True)
        assert (g.abs().sum(-1) > 0)[:, :, visible[i]].all()


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2, kernel="combiner", kernel_options=dict(segment=4, query_block=8),
                             max_seq_len=64)
    x = torch.randn(B, 30, 32)
    full = mha(x, AttentionContext(causal=True))
    cache, outs, t = mha.new_cache(B, 64), [], 0
    for step in (6, 1, 1, 9, 1, 12):
        outs.append(mha(x[:, t:t + step], AttentionContext(causal=True), cache=cache))
        t += step
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=RTOL)
    w = mha(x[:, :1], AttentionContext(causal=True), cache=mha.new_cache(B, 64), return_weights=True)[1]
    assert w.shape == (B, 4, 1, 1)


def test_fewer_queries_than_keys_without_its_cache_raises():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="cache"):
        build_attention("combiner")(q[:, :, -3:], k, v, AttentionContext(causal=True))


def test_default_segment_is_sqrt_max_seq_len_and_bad_options_raise():
    assert build_attention("combiner", structural=dict(max_seq_len=256)).segment == 16
    for opts in (dict(segment=0), dict(pooling="deepset-max"), dict(query_block=0)):
        with pytest.raises(ValueError):
            build_attention("combiner", **opts)
