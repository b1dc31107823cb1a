"""Selective self-attention: limit cases, row 0, entropy monotonicity, value temperature."""

import torch

from attnlab.attention import AttentionContext, build_attention, reference_attention
from attnlab.attention.masks import causal_mask
from attnlab.attention.kernels.selective import selective_attention, visible_keys

ST = dict(num_heads=4, num_kv_heads=2, head_dim=8)


def qkv(B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, T, 8, generator=g), torch.randn(B, 2, T, 8, generator=g), torch.randn(B, 2, T, 8, generator=g)


def test_large_beta_without_token_and_value_terms_is_vanilla():
    q, k, v = qkv()
    kern = build_attention("selective", structural=ST, token_temperature=False, value_temperature=False, beta_init=10.0)
    for causal in (False, True):
        out = kern(q, k, v, AttentionContext(causal=causal))
        ref, _ = reference_attention(q, k, v, keep=causal_mask(12, 12) if causal else None)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_position_temperature_is_one_plus_sigma_log_n():
    q, k, v = qkv()
    kern = build_attention("selective", structural=ST, token_temperature=False, value_temperature=False, beta_init=0.0)
    sigma = float(torch.exp(-torch.exp(torch.tensor(0.0))))  # exp(-1)
    out = kern(q, k, v, AttentionContext(causal=True))
    tau = 1 + sigma * torch.log(torch.arange(1, 13.0))  # n_i = i + 1
    ref, _ = reference_attention(q * tau[None, None, :, None], k, v, keep=causal_mask(12, 12))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, :, 0], reference_attention(q, k, v, keep=causal_mask(12, 12))[0][:, :, 0])


def test_row_zero_is_unaffected_by_the_position_term():
    q, k, v = qkv()
    ctx = AttentionContext(causal=True)
    a = build_attention("selective", structural=ST, beta_init=-2.0)(q, k, v, ctx)  # sigma ~ 0.87
    b = build_attention("selective", structural=ST, beta_init=5.0)(q, k, v, ctx)  # sigma ~ 0
    torch.testing.assert_close(a[:, :, 0], b[:, :, 0])
    assert (a[:, :, 5:] - b[:, :, 5:]).abs().max() > 1e-3


def test_entropy_decreases_with_sigma():
    q, k, v = qkv()
    ents = []
    for beta in (3.0, 1.0, 0.0, -1.0, -2.0):  # sigma = exp(-exp(beta)) increasing
        kern = build_attention("selective", structural=ST, token_temperature=False, value_temperature=False, beta_init=beta)
        w = kern.attention_weights(q, k, v, AttentionContext(causal=True)).clamp_min(1e-30)
        ents.append(-(w * w.log()).sum(-1)[:, :, 1:])  # rows with n_i > 1
    for lo, hi in zip(ents[1:], ents[:-1]):
        assert (lo < hi).all()


def test_unit_value_temperature_equals_temperature_only():
    q, k, v = qkv()
    kern = build_attention("selective", structural=ST)  # value term zero-initialised -> tau_v = 1
    only = build_attention("selective", structural=ST, value_temperature=False)
    with torch.no_grad():
        kern.tok_weight.normal_()
        only.tok_weight.copy_(kern.tok_weight)
    ctx = AttentionContext(causal=True)
    torch.testing.assert_close(kern(q, k, v, ctx), only(q, k, v, ctx))


def test_zero_value_temperature_removes_a_token_exactly():
    q, k, v = qkv(B=1)
    tau_v = torch.ones(1, 4, 12, 1)
    tau_v[:, :, 3] = 0.0
    out = selective_attention(q, k, v, None, 8 ** -0.5, None, tau_v)
    weights = torch.softmax(q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 8 ** -0.5, -1)
    vv = v.repeat_interleave(2, 1).clone()
    vv[:, :, 3] = 0.0
    torch.testing.assert_close(out, weights @ vv, atol=1e-5, rtol=1e-4)
    v2 = v.clone()
    v2[:, :, 3] += 100.0  # the removed token's value no longer matters
    torch.testing.assert_close(selective_attention(q, k, v2, None, 8 ** -0.5, None, tau_v), out)


def test_visible_keys_counts_padding_and_causality():
    kpm = torch.tensor([[True] * 5 + [False] * 3])
    keep = causal_mask(8, 8) & kpm[:, None, None, :]
    n = visible_keys(keep, 8, 8, "cpu")[0, 0, :, 0]
    assert n.tolist() == [1, 2, 3, 4, 5, 5, 5, 5]


def test_cached_decoding_matches_full_forward():
    q, k, v = qkv(B=1)
    kern = build_attention("selective", structural=ST, beta_init=0.0)
    with torch.no_grad():
        kern.tok_weight.normal_()
        kern.val_weight.normal_()
    full = kern(q, k, v, AttentionContext(causal=True))
    last = kern(q[:, :, -1:], k, v, AttentionContext(causal=True))  # one query, all keys: bottom-right
    torch.testing.assert_close(last, full[:, :, -1:], atol=1e-5, rtol=1e-4)
