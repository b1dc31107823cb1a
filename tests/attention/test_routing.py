"""Routing attention: properties (a)-(e) plus EMA, local heads, cache and options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import AttentionContext, MultiHeadAttention, build_attention, reference_attention
from attnlab.attention.masks import causal_mask
from attnlab.attention.reference import expand_kv_heads

B, H, T, D = 2, 4, 24, 16
ATOL, RTOL = 1e-5, 1e-4


def kernel(**opts):
    structural = dict(num_heads=H, head_dim=D, max_seq_len=64)
    return build_attention("routing", structural=structural, **opts)


def qkv(hkv=H, t=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, t, D, generator=g), torch.randn(B, hkv, t, D, generator=g),
            torch.randn(B, hkv, t, D, generator=g))


def ln(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hkv", [H, 2])
def test_a_one_cluster_full_window_is_dense_attention(causal, hkv):
    q, k, v = qkv(hkv)
    keep = causal_mask(T, T) if causal else None
    out = kernel(num_clusters=1, window=T).eval()(q, k, v, AttentionContext(causal=causal))
    ref, _ = reference_attention(q, k, v, keep=keep)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    # official logits: LN(q) . LN(k), unscaled
    out = kernel(num_clusters=1, window=T, qk_norm=True).eval()(q, k, v, AttentionContext(causal=causal))
    ref, _ = reference_attention(ln(q), ln(k), v, keep=keep, scale=1.0)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def separable(nc=3, per=8):
    """Tokens in ``nc`` clusters along orthogonal directions; centroids at the cluster directions."""
    dirs = ln(torch.eye(D)[:nc] * 4.0)  # (nc, D) unit-LN directions, mutually far apart
    labels = torch.randperm(nc * per) % nc  # (N,) shuffled, exactly `per` per cluster
    x = dirs[labels] + 0.05 * torch.randn(B, H, nc * per, D)
    return dirs, labels, x


@pytest.mark.parametrize("causal", [False, True])
def test_b_partitioning_windows_are_block_attention(causal):
    nc, per = 3, 8
    dirs, labels, x = separable(nc, per)
    ker = kernel(num_clusters=nc, window=per).eval()
    with torch.no_grad():
        ker.centroids.copy_(dirs.expand(H, nc, D))
    v = torch.randn(B, H, nc * per, D)
    out = ker(x, x, v, AttentionContext(causal=causal))
    same = (labels[:, None] == labels[None, :])[None, None]
    keep = same & causal_mask(nc * per, nc * per) if causal else same
    ref, _ = reference_attention(x, x, v, keep=keep)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    if not causal:  # every token selected exactly once: the scatter inverts the gather
        w = ker.attention_weights(x, x, v, AttentionContext(causal=False))
        torch.testing.assert_close(w.sum(-1), torch.ones(B, H, nc * per), atol=ATOL, rtol=RTOL)


def test_c_ema_converges_to_cluster_means():
    nc, per = 3, 8
    dirs, labels, x = separable(nc, per)
    ker = kernel(num_clusters=nc, window=per, decay=0.8).train()
    with torch.no_grad():
        ker.centroids.copy_(dirs + 0.3 * torch.randn(H, nc, D))
    items = ln(x)  # what the kernel clusters
    want = torch.stack([items[:, :, labels == c].mean(dim=(0, 2)) for c in range(nc)], dim=1)  # (H, nc, D)
    for _ in range(60):  # 0.8**60 ~ 1e-6 of the initial centroids remains
        ker(x, x, x, AttentionContext(causal=False))
    torch.testing.assert_close(ker.centroids, want, atol=1e-3, rtol=0)
    assert ker.aux_loss is not None and ker.aux_loss.item() > 0


@pytest.mark.parametrize("hkv", [H, 1])
def test_d_causal_gradients_do_not_reach_the_future(hkv):
    q, k, v = (t.requires_grad_() for t in qkv(hkv))
    ker = kernel(num_clusters=3, window=5, local_heads=1, local_window=4).train()
    out = ker(q, k, v, AttentionContext(causal=True))
    i = 9
    out[:, :, i].sum().backward(retain_graph=True)
    for t in (q, k, v):
        assert t.grad[:, :, i + 1:].abs().sum() == 0
    assert k.grad[:, :, : i + 1].abs().sum() > 0


def test_e_unrouted_tokens_are_exactly_zero_and_weights_reproduce_the_output():
    q, k, v = qkv()
    ker = kernel(num_clusters=2, window=5, local_heads=1).eval()  # 2 * 5 < T: some tokens unrouted
    ctx = AttentionContext(causal=False)
    out = ker(q, k, v, ctx)
    w = ker.attention_weights(q, k, v, ctx)
    torch.testing.assert_close(w @ expand_kv_heads(v, H), out, atol=ATOL, rtol=RTOL)
    unrouted = w[:, 1:].sum(-1) == 0  # routing heads only
    assert unrouted.any() and (out[:, 1:][unrouted] == 0).all()
    routed = w[:, 1:].sum(-1)[~unrouted]
    torch.testing.assert_close(routed, torch.ones_like(routed), atol=ATOL, rtol=RTOL)


def test_causal_rule_is_newest_window_tokens_of_own_cluster():
    q, k, v = qkv()
    ker = kernel(num_clusters=3, window=4).eval()
    mu = ker.centroids
    cid = torch.einsum("bhtd,hcd->bhtc", ln(q) + ln(k), mu).argmax(-1)  # one cluster per token
    same = (cid[..., :, None] == cid[..., None, :]) & causal_mask(T, T)  # (B, H, T, S)
    rank = same.flip(-1).long().cumsum(-1).flip(-1)  # 1 = the query itself, 2 = the previous member ...
    ref, _ = reference_attention(q, k, v, keep=same & (rank <= 4))
    torch.testing.assert_close(ker(q, k, v, AttentionContext(causal=True)), ref, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="cache"):  # earlier tokens' clusters are unknown without the cache
        ker(q[:, :, -3:], k, v, AttentionContext(causal=True))


@pytest.mark.parametrize("causal", [True, False])
def test_local_heads_are_sliding_windows(causal):
    q, k, v = qkv()
    ker = kernel(local_heads=H, local_window=6).eval()
    dist = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    keep = ((dist >= 0) & (dist < 6)) if causal else (dist.abs() <= 3)
    ref, _ = reference_attention(q, k, v, keep=keep[None, None])
    torch.testing.assert_close(ker(q, k, v, AttentionContext(causal=causal)), ref, atol=ATOL, rtol=RTOL)


def test_centroids_update_in_training_only_and_not_while_decoding():
    q, k, v = qkv()
    ker = kernel(num_clusters=3, decay=0.5).eval()
    before = ker.centroids.clone()
    ker(q, k, v, AttentionContext(causal=True))
    assert torch.equal(ker.centroids, before) and ker.aux_loss is None
    ker.train()(q, k, v, AttentionContext(causal=True))
    assert not torch.allclose(ker.centroids, before)


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 4, 2, kernel="routing", max_seq_len=64,
                             kernel_options=dict(num_clusters=3, window=5, local_heads=1, local_window=4)).eval()
    x = torch.randn(B, 30, 64)
    full = mha(x, AttentionContext(causal=True))
    cache, outs, t = mha.new_cache(B, 64), [], 0
    for step in (7, 1, 1, 12, 9):
        outs.append(mha(x[:, t:t + step], AttentionContext(causal=True), cache=cache))
        t += step
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=RTOL)


def test_seed_fixes_the_centroids():
    a, b, c = kernel(seed=5), kernel(seed=5), kernel(seed=6)
    assert torch.equal(a.centroids, b.centroids) and not torch.equal(a.centroids, c.centroids)


@pytest.mark.parametrize("opts", [dict(num_clusters=0), dict(window=0), dict(local_heads=5), dict(decay=1.0),
                                  dict(commitment=-1.0), dict(local_window=0)])
def test_bad_options_raise(opts):
    with pytest.raises(ValueError):
        kernel(**opts)
