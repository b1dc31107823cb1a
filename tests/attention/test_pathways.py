"""Stochastically subsampled attention: properties (a)-(f), the wrapper contract."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionContext, build_attention, reference_attention
from attnlab.attention.masks import causal_mask, padding_mask
from attnlab.attention.reference import expand_kv_heads

B, H, T, D = 2, 4, 24, 8
ATOL, RTOL = 1e-5, 1e-4


def qkv(hkv=H, t=T, seed=1, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, t, D, generator=g).requires_grad_(grad) for n in (H, hkv, hkv)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("causal", [True, False])
def test_a_keep_one_is_the_inner_kernel(causal):
    q, k, v = qkv(hkv=2)
    ker = build_attention("pathways", keep=1.0).train()
    ref, _ = reference_attention(q, k, v, keep=causal_mask(T, T) if causal else None)
    torch.testing.assert_close(ker(q, k, v, AttentionContext(causal=causal, generator=gen())), ref,
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("inner,opts,per_head", [("softmax", {"scale": 0.5}, True), ("linear", {}, False),
                                                 ("combiner", {"segment": 5}, True)])
def test_b_eval_is_exactly_the_wrapped_kernel(inner, opts, per_head):
    q, k, v = qkv(hkv=2)
    torch.manual_seed(3)
    wrapped = build_attention(inner, structural=dict(num_kv_heads=2, head_dim=D, max_seq_len=64), **opts)
    torch.manual_seed(3)
    ker = build_attention("pathways", structural=dict(num_kv_heads=2, head_dim=D, max_seq_len=64), inner=inner,
                          inner_options=opts, per_head=per_head).eval()
    kpm = torch.rand(B, T) > 0.2
    for causal in (True, False):
        ctx = AttentionContext(causal=causal, key_padding_mask=kpm)
        out = ker(q, k, v, ctx)
        torch.testing.assert_close(out, wrapped(q, k, v, ctx), atol=0, rtol=0)
        torch.testing.assert_close(ker(q, k, v, ctx), out, atol=0, rtol=0)  # dense and deterministic


def test_c_fixed_seed_fixes_the_mask_and_the_output():
    q, k, v = qkv()
    ker = build_attention("pathways", keep=0.25).train()
    a = ker(q, k, v, AttentionContext(causal=True, generator=gen(1)))
    b = ker(q, k, v, AttentionContext(causal=True, generator=gen(1)))
    c = ker(q, k, v, AttentionContext(causal=True, generator=gen(2)))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_is_softmax_under_the_sampled_group_mask(per_head, causal):
    q, k, v = qkv(hkv=2)
    ker = build_attention("pathways", keep=0.25, per_head=per_head).train()
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[1, -5:] = False
    out = ker(q, k, v, AttentionContext(causal=causal, key_padding_mask=kpm, generator=gen(4)))
    rows = B * H if per_head else B
    _, _, token_slot = ker.sample_groups(rows, T, kpm.repeat_interleave(H, 0) if per_head else kpm, gen(4))
    same = ker.keep_mask(token_slot, T).view(B, H if per_head else 1, T, T)
    keep = same & padding_mask(kpm, T) & (causal_mask(T, T) if causal else True)
    ref, _ = reference_attention(q, k, v, keep=keep)
    valid = kpm[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], ref[valid], atol=ATOL, rtol=RTOL)
    heads_differ = not torch.equal(same[:, 0], same[:, 1]) if per_head else True
    assert heads_differ


def test_d_each_query_keeps_itself_and_exactly_keep_n_keys():
    ker = build_attention("pathways", keep=0.25)
    _, real, token_slot = ker.sample_groups(64, T, generator=gen())
    same = ker.keep_mask(token_slot, T)  # (64, T, T)
    assert real.all() and same.diagonal(dim1=1, dim2=2).all()
    assert (same.sum(-1) == T // 4).all()
    # ragged length with padding: valid tokens split into groups differing by at most one
    kpm = torch.ones(64, 30, dtype=torch.bool)
    kpm[:, 25:] = False
    _, _, token_slot = ker.sample_groups(64, 30, kpm, gen())
    sizes = (ker.keep_mask(token_slot, 30) & kpm[:, None, :]).sum(-1)[kpm]
    assert set(sizes.unique().tolist()) <= {6, 7}


def test_e_marginals_uniform_and_local():
    n_draws = 2000
    uni = build_attention("pathways", keep=0.25)
    _, _, slots = uni.sample_groups(n_draws, T, generator=gen())
    p = uni.keep_mask(slots, T).float().mean(0)  # (T, T)
    off = ~torch.eye(T, dtype=torch.bool)
    expected = (T // 4 - 1) / (T - 1)  # the other members of a query's group, spread uniformly
    assert abs(p[off].mean().item() - expected) < 1e-6
    assert (p[off] - expected).abs().max() < 0.05
    loc = build_attention("pathways", keep=0.25, sampler="local", local_sigma=2.0)
    _, _, slots = loc.sample_groups(n_draws, T, generator=gen())
    pl = loc.keep_mask(slots, T).float().mean(0)
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs()
    by_dist = torch.stack([pl[dist == d].mean() for d in range(1, 12)])
    assert (by_dist[:-1] >= by_dist[1:] - 0.01).all() and by_dist[0] > 0.6 > 0.05 > by_dist[-1]


def test_f_causal_gradients_do_not_reach_the_future():
    q, k, v = qkv(grad=True)
    ker = build_attention("pathways", keep=0.5).train()
    out = ker(q, k, v, AttentionContext(causal=True, generator=gen()))
    i = 10
    out[:, :, i].sum().backward()
    for x in (q, k, v):
        assert x.grad[:, :, i + 1:].abs().sum() == 0
    assert v.grad[:, :, i].abs().sum() > 0  # the query's own value always counts


def test_eval_sampling_and_attention_weights():
    q, k, v = qkv()
    ker = build_attention("pathways", keep=0.5, eval_sampling=True).eval()
    ctx = AttentionContext(causal=False, generator=gen(5))
    out = ker(q, k, v, ctx)
    ref, _ = reference_attention(q, k, v)
    assert not torch.allclose(out, ref, atol=1e-3)
    w = ker.attention_weights(q, k, v, AttentionContext(causal=False, generator=gen(5)))
    torch.testing.assert_close(w @ expand_kv_heads(v, H), out, atol=ATOL, rtol=RTOL)
    assert ((w > 0).sum(-1) == T // 2).all()


def test_cache_and_capabilities_come_from_the_inner_kernel():
    ker = build_attention("pathways", structural=dict(head_dim=D, num_kv_heads=H, max_seq_len=64),
                          inner="linear", per_head=False)
    assert type(ker.new_cache(B, H, D, 64)).__name__ == "LinearAttentionCache"
    assert not ker.capabilities.packed and not ker.capabilities.exact
    assert build_attention("pathways").capabilities.packed


@pytest.mark.parametrize("opts", [dict(keep=0.3), dict(keep=0.0), dict(sampler="grid"), dict(local_sigma=-1.0),
                                  dict(inner="pathways"), dict(inner="linear", per_head=True)])
def test_bad_options_raise(opts):
    with pytest.raises(ValueError):
        build_attention("pathways", structural=dict(head_dim=D, num_kv_heads=H, max_seq_len=64), **opts)
