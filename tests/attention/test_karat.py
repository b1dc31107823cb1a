"""Fourier-KArAt: parameter counts, universal sharing, zero coefficients, gradients, masks."""

import pytest
import torch

from attnlab.attention import AttentionContext, build_attention
from attnlab.models.registry import create_model


def qkv(T=10, seed=0, B=2, H=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, 8, generator=g), torch.randn(B, H, T, 8, generator=g), torch.randn(B, H, T, 8, generator=g)


def karat(**kw):
    return build_attention("karat", structural=dict(num_heads=4, max_seq_len=16), **kw)


def test_shapes_and_parameter_counts():
    kern = karat(rank=5, grid_size=3)
    N, r, G, H = 16, 5, 3, 4
    assert sum(p.numel() for p in kern.parameters()) == H * (2 * G * N * r + N * r)
    assert karat(rank=5, grid_size=3, base="silu").operator.base_weight.shape == (H, r, N)
    q, k, v = qkv()
    assert kern(q, k, v).shape == (2, 4, 10, 8)


def test_blockwise_vs_universal_in_a_model():
    block = create_model("gpt-tiny", num_layers=3, max_seq_len=32, attention="karat")
    uni = create_model("gpt-tiny", num_layers=3, max_seq_len=32, attention="karat",
                       attention_options={"mode": "universal"})
    ops_b = [b.attn.kernel.operator for b in block.blocks]
    ops_u = [b.attn.kernel.operator for b in uni.blocks]
    assert ops_b[0].alpha is not ops_b[1].alpha
    assert all(op.alpha is ops_u[0].alpha and op.W is ops_u[0].W for op in ops_u)
    per_op = sum(p.numel() for p in ops_u[0].parameters())
    assert block.num_parameters() - uni.num_parameters() == 2 * per_op
    uni(torch.randint(0, 256, (2, 20))).sum().backward()
    assert ops_u[0].alpha.grad is not None


def test_zero_coefficients_give_zero_output():
    kern = karat(grid_size=1)
    with torch.no_grad():
        kern.operator.alpha.zero_()
        kern.operator.beta.zero_()
    q, k, v = qkv()
    assert kern(q, k, v, AttentionContext(causal=True)).abs().max() == 0


def test_gradients_reach_every_coefficient():
    kern = karat(base="silu")
    q, k, v = qkv(T=16)
    (kern(q, k, v) * torch.randn(2, 4, 16, 8)).sum().backward()
    for name, p in kern.named_parameters():
        assert p.grad is not None and (p.grad != 0).float().mean() > 0.99, name


def test_masked_positions_are_ignored():
    q, k, v = qkv()
    kpm = torch.ones(2, 10, dtype=torch.bool)
    kpm[:, 7:] = False
    for normalize in ("none", "l1", "softmax"):
        kern = karat(normalize=normalize)
        out = kern(q, k, v, AttentionContext(causal=True, key_padding_mask=kpm))
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 7:] = 50.0  # masked logits become huge: still excluded
        v2[:, :, 7:] = -9.0
        out2 = kern(q, k2, v2, AttentionContext(causal=True, key_padding_mask=kpm))
        torch.testing.assert_close(out2, out)
        k3 = k.clone()
        k3[:, :, 6] += 1.0  # a visible key does matter
        assert (kern(q, k3, v, AttentionContext(causal=True, key_padding_mask=kpm)) - out).abs().max() > 1e-6


def test_shorter_sequences_equal_padding_to_n():
    kern = karat()
    q, k, v = qkv(T=10)
    out = kern(q, k, v)  # S = 10 < N = 16
    pad = lambda x: torch.cat([x, torch.randn(2, 4, 6, 8)], dim=2)
    kpm = torch.zeros(2, 16, dtype=torch.bool)
    kpm[:, :10] = True
    full = kern(pad(q), pad(k), pad(v), AttentionContext(key_padding_mask=kpm))
    torch.testing.assert_close(full[:, :, :10], out, atol=1e-5, rtol=1e-4)


def test_normalisations_and_errors():
    q, k, v = qkv()
    w = karat(normalize="l1").attention_weights(q, k, v, AttentionContext(causal=True))
    torch.testing.assert_close(w.abs().sum(-1), torch.ones(2, 4, 10))
    w = karat(normalize="softmax").attention_weights(q, k, v, AttentionContext(causal=True))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 10))
    assert w[:, :, 0, 1:].abs().max() == 0
    with pytest.raises(ValueError, match="seq_len"):
        karat()(*qkv(T=20))
    with pytest.raises(ValueError, match="normalize"):
        karat(normalize="max")
