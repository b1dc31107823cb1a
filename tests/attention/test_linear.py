"""SLAB / causal linear attention: properties (a)-(e), chunked == naive formula (values and
gradients), chunked == recurrent, the cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import AttentionContext, MultiHeadAttention, build_attention
from attnlab.attention.kernels.linear import LinearAttentionCache
from attnlab.attention.reference import expand_kv_heads

B, H, T, D = 2, 4, 26, 8
ATOL, RTOL = 1e-5, 1e-4


def kernel(hkv=H, max_len=64, **opts):
    k = build_attention("linear", structural=dict(num_kv_heads=hkv, head_dim=D, max_seq_len=max_len), **opts)
    if k.key_pos is not None:
        with torch.no_grad():  # a non-zero P, so the tests see it
            k.key_pos.copy_(0.3 * torch.randn_like(k.key_pos))
    return k


def qkv(hkv=H, t=T, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, t, D, generator=g).requires_grad_(requires_grad) for h in (H, hkv, hkv))


def explicit_reference(ker, q, k, v, causal, kpm=None):
    """``(phi_q phi_k^T, masked, row-normalised) V + DWC(V)`` with the convolution written as a loop."""
    hkv, S = k.shape[1], k.shape[2]
    kp = k + ker.key_pos[:, :S] if ker.key_pos is not None else k
    fq, fk = F.relu(q), F.relu(kp)
    if kpm is not None:
        fk, v = fk * kpm[:, None, :, None], v * kpm[:, None, :, None]
    a = fq @ expand_kv_heads(fk, H).transpose(-1, -2)  # (B, H, T, S)
    if causal:
        a = a.tril()
    out = a @ expand_kv_heads(v, H) / (a.sum(-1, keepdim=True) + ker.eps)
    if ker.dwc is not None:
        K, w = ker.conv_kernel, ker.dwc.weight[:, 0]  # (Dh, K)
        conv = torch.zeros_like(v)
        for j in range(K):  # y_t = sum_j w_j x_{t + j - shift}
            shift = K - 1 if causal else K // 2
            src = torch.arange(S) + j - shift
            ok = (src >= 0) & (src < S)
            conv[:, :, ok] += v[:, :, src[ok]] * w[:, j]
        out = out + expand_kv_heads(conv, H)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hkv", [H, 2])
def test_a_b_e_equals_explicit_reference_and_both_orderings(causal, hkv):
    q, k, v = qkv(hkv)
    ker = kernel(hkv)
    ctx = AttentionContext(causal=causal)
    out = ker(q, k, v, ctx)
    torch.testing.assert_close(out, explicit_reference(ker, q, k, v, causal), atol=ATOL, rtol=RTOL)
    # quadratic ordering: the actual weight matrix times V, plus the convolution
    conv = expand_kv_heads(ker._conv(v, ctx, None), H)
    torch.testing.assert_close(ker.attention_weights(q, k, v, ctx) @ expand_kv_heads(v, H) + conv, out,
                               atol=ATOL, rtol=RTOL)


def test_c_without_p_and_dwc_rows_are_convex_weights():
    q, k, v = qkv()
    ker = kernel(conv_kernel=0, key_pos=False)
    w = ker.attention_weights(q, k, v, AttentionContext(causal=False))
    assert (w >= 0).all()
    den = F.relu(q) @ expand_kv_heads(F.relu(k), H).sum(2)[..., None]  # (B, H, T, 1)
    live = den[..., 0] > 1e-2
    assert live.float().mean() > 0.9
    torch.testing.assert_close(w.sum(-1)[live], torch.ones_like(w.sum(-1)[live]), atol=1e-5, rtol=0)


def test_d_permutation_equivariant_without_p_and_dwc():
    q, k, v = qkv()
    ker = kernel(conv_kernel=0, key_pos=False)
    perm = torch.randperm(T)
    ctx = AttentionContext(causal=False)
    out = ker(q, k, v, ctx)
    torch.testing.assert_close(ker(q[:, :, perm], k[:, :, perm], v[:, :, perm], ctx), out[:, :, perm],
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("feature_map", ["relu", "elu1"])
@pytest.mark.parametrize("hkv", [H, 1])
def test_chunked_training_form_equals_recurrent_decoding(feature_map, hkv):
    torch.manual_seed(0)
    mha = MultiHeadAttention(H * D, H, hkv, kernel="linear", max_seq_len=64,
                             kernel_options=dict(chunk_size=8, feature_map=feature_map))
    with torch.no_grad():
        mha.kernel.key_pos.normal_()
    x = torch.randn(B, 37, H * D)
    full = mha(x, AttentionContext(causal=True))  # chunked parallel form (chunks of 8, ragged end)
    cache = mha.new_cache(B, 64)
    assert isinstance(cache, LinearAttentionCache)
    size = cache.num_bytes
    outs, t = [], 0
    for step in (1, 1, 5, 1, 16, 13):  # token-by-token and multi-token steps
        outs.append(mha(x[:, t:t + step], AttentionContext(causal=True), cache=cache))
        t += step
        assert cache.num_bytes == size  # the state does not grow
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.seen == 37


@pytest.mark.parametrize("t", [26, 300])  # 4 chunks, the last ragged; 38 chunks (two chained prefix runs)
@pytest.mark.parametrize("hkv", [H, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_form_equals_naive_causal_formula_forward_and_gradients(t, hkv, padded):
    """Causal chunked scan (chunks of 8, the last one ragged) == the O(N^2) masked formula, values and
    gradients of q, k, v, the key position term and the convolution weight."""
    ker = kernel(hkv, max_len=t, chunk_size=8)
    kpm = (torch.rand(B, t, generator=torch.Generator().manual_seed(2)) > 0.3) if padded else None
    w = torch.randn(B, H, t, D, generator=torch.Generator().manual_seed(3))  # a loss that weighs every output

    def run(fn):
        q, k, v = qkv(hkv, t, requires_grad=True)
        ker.zero_grad()
        out = fn(q, k, v)
        (out * w).sum().backward()
        return [out.detach(), q.grad, k.grad, v.grad, ker.key_pos.grad.clone(), ker.dwc.weight.grad.clone()]

    got = run(lambda q, k, v: ker(q, k, v, AttentionContext(causal=True, key_padding_mask=kpm)))
    want = run(lambda q, k, v: explicit_reference(ker, q, k, v, True, kpm))
    for name, g, r in zip(["out", "q", "k", "v", "key_pos", "dwc"], got, want):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=RTOL, msg=lambda m, name=name: f"{name}: {m}")


def test_causal_masking_holds():
    q, k, v = qkv()
    ker = kernel(chunk_size=4)
    ctx = AttentionContext(causal=True)
    out = ker(q, k, v, ctx)
    t = 11
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t + 1:] = torch.randn_like(k2[:, :, t + 1:])
    v2[:, :, t + 1:] = torch.randn_like(v2[:, :, t + 1:])
    out2 = ker(q, k2, v2, ctx)
    torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], atol=0, rtol=0)
    assert not torch.allclose(out2[:, :, t + 1:], out[:, :, t + 1:])


@pytest.mark.parametrize("causal", [True, False])
def test_fewer_queries_than_keys_are_the_last_keys(causal):
    q, k, v = qkv()
    ker = kernel()
    ctx = AttentionContext(causal=causal)
    torch.testing.assert_close(ker(q[:, :, -5:], k, v, ctx), ker(q, k, v, ctx)[:, :, -5:], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("causal", [True, False])
def test_key_padding_zeroes_padded_features(causal):
    q, k, v = qkv()
    kpm = torch.rand(B, T) > 0.3
    ker = kernel()
    out = ker(q, k, v, AttentionContext(causal=causal, key_padding_mask=kpm))
    torch.testing.assert_close(out, explicit_reference(ker, q, k, v, causal, kpm), atol=ATOL, rtol=RTOL)
    # without the convolution, padding equals dropping the padded keys
    ker = kernel(conv_kernel=0, key_pos=False)
    out = ker(q, k, v, AttentionContext(causal=False, key_padding_mask=kpm))
    for b in range(B):
        kept = ker(q[b:b + 1], k[b:b + 1, :, kpm[b]], v[b:b + 1, :, kpm[b]], AttentionContext(causal=False))
        torch.testing.assert_close(out[b:b + 1], kept, atol=ATOL, rtol=RTOL)


def test_all_negative_keys_leave_only_the_convolution():
    q, k, v = qkv()
    ker = kernel(key_pos=False)
    ctx = AttentionContext(causal=False)
    out = ker(q, -k.abs() - 0.1, v, ctx)
    torch.testing.assert_close(out, expand_kv_heads(ker._conv(v, ctx, None), H), atol=ATOL, rtol=RTOL)


def test_conv_2d_over_the_grid():
    rows, cols = 4, 6
    q, k, v = qkv(t=rows * cols)
    ker = kernel(conv_kernel=3, conv_2d=True, key_pos=False)
    ctx = AttentionContext(causal=False, grid=(rows, cols))
    out = ker(q, k, v, ctx)
    img = v.view(B * H, rows, cols, D).permute(0, 3, 1, 2)
    conv = F.conv2d(img, ker.dwc.weight, padding=1, groups=D).permute(0, 2, 3, 1).reshape(B, H, rows * cols, D)
    lin = ker.attention_weights(q, k, v, ctx) @ v
    torch.testing.assert_close(out, lin + conv, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="grid"):
        ker(q, k, v, AttentionContext(causal=False))


def test_bad_options_and_misuse_raise():
    for opts in (dict(feature_map="softmax"), dict(conv_kernel=4), dict(chunk_size=0), dict(eps=0.0)):
        with pytest.raises(ValueError):
            kernel(**opts)
    q, k, v = qkv()
    ker = kernel()
    with pytest.raises(ValueError, match="max_seq_len"):
        ker(*qkv(t=70), AttentionContext(causal=True))
    cache = ker.new_cache(B, H, D, 64)
    with pytest.raises(ValueError, match="causal"):
        ker(q, k, v, AttentionContext(causal=False, cache=cache))
