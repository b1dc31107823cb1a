"""DGQA: allocation sums to H, W beyond the steps taken keeps GQA, eval caches the
last norms, training update rule, seeded repair, causal (lagged) use."""

import torch

from attnlab.attention import AttentionContext, build_attention, reference_attention
from attnlab.attention.engines.gqa_groups import key_norms, proportional_allocation
from attnlab.attention.masks import causal_mask

ST = dict(num_heads=6, num_kv_heads=3, head_dim=8)


def qkv(B=2, T=10, seed=0, scales=(1.0, 2.0, 4.0)):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, 3, T, 8, generator=g) * torch.tensor(scales)[None, :, None, None]
    return torch.randn(B, 6, T, 8, generator=g), k, torch.randn(B, 3, T, 8, generator=g)


def test_proportional_allocation_sums_to_num_heads():
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        s = torch.rand(5, generator=g) * 3
        a = proportional_allocation(s, 12, g)
        assert int(a.sum()) == 12 and (a >= 0).all()
    assert proportional_allocation(torch.zeros(3), 6, g).tolist() == [2, 2, 2]


def test_window_beyond_steps_keeps_uniform_gqa():
    kern = build_attention("dgqa", structural=ST, window_size=1000).train()
    for step in range(5):
        q, k, v = qkv(seed=step)
        out = kern(q, k, v, AttentionContext())
        ref, _ = reference_attention(q, k, v)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert kern.allocation.tolist() == [2, 2, 2] and int(kern.step) == 5
    assert torch.count_nonzero(kern.norm_cache) == 0


def test_training_update_rule_at_window():
    kern = build_attention("dgqa", structural=ST, window_size=2, kind="diff").train()
    q, k, v = qkv()
    kern(q, k, v, AttentionContext())  # step 1: no update
    assert torch.count_nonzero(kern.norm_cache) == 0
    kern(q, k, v, AttentionContext())  # step 2: update, c <- (0 + n) / 2
    n = key_norms(k, None).sum(dim=(0, 2))
    torch.testing.assert_close(kern.norm_cache, n / 2)
    # diff with c = 0: s = n ~ (1, 2, 4) scaled -> the largest-norm K head gets the most query heads
    assert int(kern.allocation.sum()) == 6 and int(kern.allocation.argmax()) == 2


def test_eval_caches_last_norms_and_recomputes():
    for kind in ("diff", "ema"):
        kern = build_attention("dgqa", structural=ST, kind=kind).eval()
        q, k, v = qkv(seed=1)
        kern(q, k, v, AttentionContext())
        torch.testing.assert_close(kern.norm_cache, key_norms(k, None).sum(dim=(0, 2)))
        q2, k2, v2 = qkv(seed=2, scales=(4.0, 1.0, 1.0))
        out = kern(q2, k2, v2, AttentionContext())
        torch.testing.assert_close(kern.norm_cache, key_norms(k2, None).sum(dim=(0, 2)))
        assert int(kern.allocation.sum()) == 6
        w = kern.attention_weights(q2, k2, v2, AttentionContext())
        torch.testing.assert_close(torch.einsum("bhts,bhsd->bhtd", w, _expand(v2, kern.allocation)), out,
                                   atol=1e-5, rtol=1e-4)


def _expand(v, allocation):
    idx = torch.repeat_interleave(torch.arange(3), allocation)
    return v[:, idx]


def test_ema_weights_current_norms():
    kern = build_attention("dgqa", structural=ST, kind="ema").eval()
    kern.norm_cache.fill_(10.0)
    n = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(kern.scores(n), 0.9 * n + 0.1 * 10.0)


def test_seeded_repair_is_deterministic():
    outs = []
    for _ in range(2):
        kern = build_attention("dgqa", structural=ST, seed=7).train()
        for step in range(4):
            q, k, v = qkv(seed=step, scales=(1.0, 1.3, 1.7))
            out = kern(q, k, v, AttentionContext())
        outs.append((out, kern.allocation.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def test_causal_use_is_lagged_and_causal():
    kern = build_attention("dgqa", structural=ST).train()
    q, k, v = qkv()
    ctx = AttentionContext(causal=True)
    out = kern(q, k, v, ctx)  # uses the uniform allocation, then updates
    ref, _ = reference_attention(q, k, v, keep=causal_mask(10, 10))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert not torch.equal(kern.allocation, torch.tensor([2, 2, 2]))
    kern.eval()
    frozen = kern.allocation.clone()
    k2 = k.clone()
    k2[:, :, 6:] *= 3.0
    a = kern(q, k, v, ctx)
    b = kern(q, k2, v, ctx)
    torch.testing.assert_close(a[:, :, :6], b[:, :, :6])
    assert torch.equal(kern.allocation, frozen)
