"""GQA/MQA and the mean-pooling uptraining conversion."""

import pytest
import torch

from attnlab.attention import AttentionContext, MultiHeadAttention, reference_attention
from attnlab.attention.gqa_convert import convert_shell, convert_to_gqa, mean_pool_heads
from attnlab.models.registry import create_model


def shell(H=4, G=4, dim=32, seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(dim, H, G)


def test_convert_to_same_heads_is_identity():
    mha = shell()
    x = torch.randn(2, 7, 32)
    same = convert_shell(mha, 4)
    torch.testing.assert_close(same(x, AttentionContext(causal=True)), mha(x, AttentionContext(causal=True)))


def test_grouped_heads_identical_within_group_convert_exactly():
    mha = shell()
    with torch.no_grad():  # make heads identical within each group of 2 (K and V, weights and biases)
        for p in (mha.k_proj.weight, mha.k_proj.bias, mha.v_proj.weight, mha.v_proj.bias):
            blocks = p.view(2, 2, 8, *p.shape[1:])
            blocks[:, 1] = blocks[:, 0]
    x = torch.randn(3, 9, 32)
    gqa = convert_shell(mha, 2)
    assert gqa.k_proj.weight.shape == (16, 32)
    for causal in (False, True):
        torch.testing.assert_close(gqa(x, AttentionContext(causal=causal)), mha(x, AttentionContext(causal=causal)),
                                   atol=1e-6, rtol=1e-5)


def test_mqa_uses_the_mean_of_all_heads():
    mha = shell()
    x = torch.randn(2, 6, 32)
    mqa = convert_shell(mha, 1)
    q = mha.q_proj(x).view(2, 6, 4, 8).transpose(1, 2)
    k = (x @ mha.k_proj.weight.view(4, 8, 32).mean(0).T + mha.k_proj.bias.view(4, 8).mean(0)).view(2, 1, 6, 8)
    v = (x @ mha.v_proj.weight.view(4, 8, 32).mean(0).T + mha.v_proj.bias.view(4, 8).mean(0)).view(2, 1, 6, 8)
    o, _ = reference_attention(q, k.expand(2, 4, 6, 8), v.expand(2, 4, 6, 8))
    expected = mha.out_proj(o.transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(mqa(x), expected, atol=1e-5, rtol=1e-4)


def test_grouped_path_equals_explicit_repeat_interleave():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 6, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    out, _ = reference_attention(q, k, v)
    for h in range(6):  # head h uses K/V head h // 3 (contiguous groups), not h % 2
        o, _ = reference_attention(q[:, h : h + 1], k[:, h // 3 : h // 3 + 1], v[:, h // 3 : h // 3 + 1])
        torch.testing.assert_close(out[:, h : h + 1], o)


def test_parameter_count_and_cache_size_follow_the_formulas():
    d, H, G, Dh, B, N = 32, 4, 2, 8, 3, 20
    gqa = convert_shell(shell(H, H, d), G)
    assert gqa.k_proj.weight.numel() + gqa.v_proj.weight.numel() == 2 * d * G * Dh
    cache = gqa.new_cache(B, N)
    assert cache.num_bytes == 2 * B * G * N * Dh * 4  # fp32


def test_mean_pool_heads_rejects_non_divisors():
    with pytest.raises(ValueError, match="must divide"):
        mean_pool_heads(torch.zeros(24, 4), 3, 2, 8)


def test_convert_model_rebuilds_kernels_and_config():
    model = create_model("gpt-tiny", num_layers=2, attention=["softmax", "dgqa"])
    ids = torch.randint(0, 256, (2, 12))
    convert_to_gqa(model, 2)
    assert model.cfg.num_kv_heads == 2
    for block in model.blocks:
        assert block.attn.num_kv_heads == 2 and block.attn.k_proj.weight.shape == (32, 64)
    assert model.blocks[1].attn.kernel.num_kv_heads == 2
    assert torch.isfinite(model(ids)).all()
    with pytest.raises(ValueError):
        convert_to_gqa(model, 3)
