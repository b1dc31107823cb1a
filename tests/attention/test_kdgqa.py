"""KDGQA: allocation sums to H, uniform case equals GQA, batch-permutation invariance,
zero-size groups, prefix norms keep causal models causal."""

import pytest
import torch

from attnlab.attention import AttentionContext, CapabilityError, build_attention, reference_attention
from attnlab.attention.engines.gqa_groups import greedy_repair, heads_to_groups, minmax_allocation
from attnlab.attention.masks import causal_mask


def qkv(B=2, H=6, G=3, T=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, G, T, D, generator=g),
            torch.randn(B, G, T, D, generator=g))


def test_allocation_sums_to_num_heads():
    g = torch.Generator().manual_seed(0)
    for H, G in [(4, 2), (6, 3), (12, 4), (8, 8), (16, 5)]:
        n = torch.rand(200, G, generator=g) * torch.rand(200, 1, generator=g) * 10
        a = minmax_allocation(n, H)
        assert (a.sum(-1) == H).all() and (a >= 0).all()
        raw = torch.randint(0, H, (200, G), generator=g)
        assert (greedy_repair(raw, H).sum(-1) == H).all()


def test_allocation_follows_the_reference_procedure():
    # n = [1, 2, 4] -> minmax [0, 1/3, 1] -> round(6 * [0, .25, .75]) = [0, 2, 4] (round half to even)
    a = minmax_allocation(torch.tensor([1.0, 2.0, 4.0]), 6)
    assert a.tolist() == [0, 2, 4]
    # sum 7 > 6: decrement argmax (first on ties); [0, 3.5->4, 3.5->4] -> [0, 3, 3] after one step? check sum
    a = minmax_allocation(torch.tensor([0.0, 1.0, 1.0]), 7)  # round(7*[0,.5,.5]) = [0,4,4] -> [0,3,4]
    assert a.tolist() == [0, 3, 4]
    assert heads_to_groups(torch.tensor([0, 3, 4]), 7).tolist() == [1, 1, 1, 2, 2, 2, 2]


def test_uniform_allocation_equals_gqa():
    q, k, v = qkv()
    k = k[:, :1].expand_as(k).clone()  # equal norms in every group -> tie -> uniform groups
    kern = build_attention("kdgqa")
    for causal in (False, True):
        ctx = AttentionContext(causal=causal)
        out = kern(q, k, v, ctx)
        assert (kern.last_allocation == 2).all()
        keep = causal_mask(12, 12) if causal else None
        ref, _ = reference_attention(q, k, v, keep=keep)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_non_uniform_grouping_equals_explicit_loop():
    q, k, v = qkv()
    k = k * torch.tensor([1.0, 2.0, 4.0])[None, :, None, None]  # distinct norms -> [0, 2, 4]
    kern = build_attention("kdgqa")
    out = kern(q, k, v, AttentionContext())
    a = kern.last_allocation.flatten().tolist()
    assert a == [0, 2, 4]
    groups = [1, 1, 2, 2, 2, 2]
    for h, g in enumerate(groups):
        ref, _ = reference_attention(q[:, h : h + 1], k[:, g : g + 1], v[:, g : g + 1])
        torch.testing.assert_close(out[:, h : h + 1], ref, atol=1e-5, rtol=1e-4)


def test_batch_permutation_leaves_allocation_unchanged():
    q, k, v = qkv(B=4)
    kern = build_attention("kdgqa")
    out = kern(q, k, v, AttentionContext())
    a = kern.last_allocation.clone()
    perm = torch.tensor([2, 0, 3, 1])
    out_p = kern(q[perm], k[perm], v[perm], AttentionContext())
    assert torch.equal(kern.last_allocation, a)
    torch.testing.assert_close(out_p, out[perm])


def test_zero_size_group_has_no_gradient():
    q, k, v = qkv()
    k = (k * torch.tensor([0.1, 2.0, 4.0])[None, :, None, None]).requires_grad_(True)
    v = v.clone().requires_grad_(True)
    kern = build_attention("kdgqa")
    out = kern(q, k, v, AttentionContext())
    assert kern.last_allocation.flatten()[0] == 0
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.count_nonzero(k.grad[:, 0]) == 0 and torch.count_nonzero(v.grad[:, 0]) == 0
    assert torch.count_nonzero(k.grad[:, 2]) > 0


def test_prefix_norms_are_causal_and_per_position():
    q, k, v = qkv(T=10)
    kern = build_attention("kdgqa")  # norm_scope="auto" -> prefix when causal
    ctx = AttentionContext(causal=True)
    out = kern(q, k, v, ctx)
    assert kern.last_allocation.shape == (1, 10, 3)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:] *= 5.0  # change the future only
    v2[:, :, 7:] += 1.0
    out2 = kern(q, k2, v2, ctx)
    torch.testing.assert_close(out2[:, :, :7], out[:, :, :7])
    faithful = build_attention("kdgqa", norm_scope="sequence")
    faithful(q, k, v, AttentionContext())
    assert faithful.last_allocation.shape == (1, 1, 3)
    with pytest.raises(CapabilityError, match="causal"):  # whole-sequence norms would read the future
        faithful(q, k, v, ctx)


def test_per_sample_is_batch_independent():
    q, k, v = qkv(B=3)
    kern = build_attention("kdgqa", per_sample=True)
    assert kern.capabilities.batch_independent and not build_attention("kdgqa").capabilities.batch_independent
    out = kern(q, k, v, AttentionContext())
    one = kern(q[1:2], k[1:2], v[1:2], AttentionContext())
    torch.testing.assert_close(one, out[1:2])


def test_padded_keys_do_not_change_the_allocation_or_valid_outputs():
    q, k, v = qkv(B=2)
    kpm = torch.ones(2, 12, dtype=torch.bool)
    kpm[:, 9:] = False
    kern = build_attention("kdgqa")
    out = kern(q, k, v, AttentionContext(key_padding_mask=kpm))
    k2 = k.clone()
    k2[:, :, 9:] = 100.0
    out2 = kern(q, k2, v, AttentionContext(key_padding_mask=kpm))
    torch.testing.assert_close(out2, out)


def test_cached_decoding_matches_full_forward():
    q, k, v = qkv(T=9)
    k = k * torch.tensor([1.0, 1.5, 3.0])[None, :, None, None]
    kern = build_attention("kdgqa")
    full = kern(q, k, v, AttentionContext(causal=True))
    last = kern(q[:, :, -2:], k, v, AttentionContext(causal=True))  # 2 new queries, all keys cached
    torch.testing.assert_close(last, full[:, :, -2:], atol=1e-5, rtol=1e-4)
