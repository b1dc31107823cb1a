"""The attention shell: configuration errors, KV cache, RoPE positions, attention maps."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import (
    AttentionContext,
    DenseKVCache,
    MultiHeadAttention,
    RollingKVCache,
    build_attention,
)
from attnlab.layers import RotaryEmbedding

ATOL, RTOL = 1e-5, 1e-4


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


def test_dim_not_divisible_by_heads_names_values_and_fix():
    with pytest.raises(ValueError) as err:
        MultiHeadAttention(30, 4)
    msg = one_line(err)
    assert "dim=30" in msg and "num_heads=4" in msg and "head_dim" in msg
    assert MultiHeadAttention(30, 4, head_dim=8).q_proj.out_features == 32  # the suggested fix works


def test_heads_not_divisible_by_kv_heads_names_values_and_fix():
    with pytest.raises(ValueError) as err:
        MultiHeadAttention(32, 4, num_kv_heads=3)
    msg = one_line(err)
    assert "num_heads=4" in msg and "num_kv_heads=3" in msg and "[1, 2, 4]" in msg
    with pytest.raises(ValueError, match="num_kv_heads=0"):
        MultiHeadAttention(32, 4, num_kv_heads=0)


def test_other_shell_errors():
    with pytest.raises(ValueError, match="kernel_options only apply"):
        MultiHeadAttention(32, 4, kernel=build_attention("softmax"), kernel_options={"dropout": 0.1})
    mha = MultiHeadAttention(32, 4)
    with pytest.raises(ValueError, match=r"\(batch, tokens, 32\), got \(2, 5, 16\)"):
        mha(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="RoPE needs positions"):
        MultiHeadAttention(32, 4, rope=RotaryEmbedding(8))(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="unknown attention"):
        MultiHeadAttention(32, 4, kernel="nope")


@pytest.mark.parametrize("rope", [False, True], ids=["plain", "rope"])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_kv_cache_incremental_equals_full_forward(num_kv_heads, rope):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, num_kv_heads, rope=RotaryEmbedding(8) if rope else None).eval()
    x = torch.randn(2, 13, 32)
    full = mha(x, AttentionContext(causal=True), positions=torch.arange(13))
    cache = mha.new_cache(batch_size=2, max_len=16)
    assert isinstance(cache, DenseKVCache) and cache.k.shape == (2, num_kv_heads, 16, 8)
    outs, start = [], 0
    for n in (5, 1, 1, 4, 1, 1):  # prefill, steps, a chunk, steps
        pos = torch.arange(start, start + n)
        outs.append(mha(x[:, start:start + n], AttentionContext(causal=True), positions=pos, cache=cache))
        start += n
    assert cache.seen == 13
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=RTOL)


def test_cache_full_error_names_the_fix():
    mha = MultiHeadAttention(16, 2)
    cache = mha.new_cache(batch_size=1, max_len=4)
    mha(torch.randn(1, 3, 16), AttentionContext(causal=True), cache=cache)
    with pytest.raises(ValueError) as err:
        mha(torch.randn(1, 2, 16), AttentionContext(causal=True), cache=cache)
    msg = one_line(err)
    assert "3 cached + 2 new tokens > max_len=4" in msg and "larger max_len" in msg


def test_rolling_cache_keeps_a_window_of_keys():
    """One token at a time through a rolling cache = attention over the last window+1 keys."""
    torch.manual_seed(0)
    kernel = build_attention("softmax")
    window, T = 3, 9
    q, k, v = torch.randn(1, 2, T, 8), torch.randn(1, 2, T, 8), torch.randn(1, 2, T, 8)
    cache = RollingKVCache(1, 2, 8, window)
    outs = []
    for t in range(T):
        kk, vv = cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
        assert kk.shape[2] == min(t, window) + 1
        outs.append(kernel(q[:, :, t:t + 1], kk, vv, AttentionContext(causal=True)))
    pos = torch.arange(T)
    keep = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= pos[:, None] - window)  # (T, S)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(torch.cat(outs, 2), scores.softmax(-1) @ v, atol=ATOL, rtol=RTOL)
    assert cache.seen == T and cache.k.shape[2] == window
    assert cache.num_bytes == 2 * window * 2 * 8 * 4


def test_return_weights_equal_manual_softmax():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2).eval()
    x = torch.randn(2, 6, 32)
    kpm = torch.ones(2, 6, dtype=torch.bool)
    kpm[1, 4:] = False
    y, w = mha(x, AttentionContext(causal=True, key_padding_mask=kpm), return_weights=True)
    assert w.shape == (2, 4, 6, 6)
    q = mha.q_proj(x).view(2, 6, 4, 8).transpose(1, 2)  # (B, H, T, Dh)
    k = mha.k_proj(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)  # (B, H, T, Dh)
    v = mha.v_proj(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    keep = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] & kpm[:, None, None, :]
    expected = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, expected, atol=ATOL, rtol=RTOL)
    y_manual = mha.out_proj((expected @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(y, y_manual, atol=ATOL, rtol=RTOL)


def test_same_parameter_names_for_every_kernel():
    names = {n for n, _ in MultiHeadAttention(32, 4).named_parameters()}
    assert names == {f"{p}_proj.{w}" for p in "qkvo" if p != "o" for w in ("weight", "bias")} | {
        "out_proj.weight", "out_proj.bias"}
    assert {n for n, _ in MultiHeadAttention(32, 4, bias=False).named_parameters()} == {
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"}
