"""Positional encodings against their formulas and peers (RoPE, ALiBi, T5 relative bias, sinusoidal)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import AttentionContext, MultiHeadAttention
from attnlab.layers import ALiBi, RelativePositionBias, RotaryEmbedding, SinusoidalPositionalEmbedding
from attnlab.layers.positional import alibi_slopes, t5_relative_bucket

# ---------------------------------------------------------------- RoPE (Su et al. 2021)


def rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Independent RoPE: feature pairs (i, i + Dh/2) as complex numbers times exp(i * pos * theta_i)."""
    half = x.shape[-1] // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)
    return torch.cat([z.real, z.imag], dim=-1).float()


def test_rope_matches_complex_rotation_and_preserves_norm():
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 10, 16)
    pos = torch.arange(10) * 3 + 1
    y = rope(x, pos)
    torch.testing.assert_close(y, rope_complex(x, pos), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope(x, torch.zeros(10, dtype=torch.long)), x)  # position 0 = identity
    # per-row positions (B, T) broadcast over heads
    pos_b = torch.stack([pos, pos + 5])
    torch.testing.assert_close(rope(x, pos_b)[1], rope(x[1:], pos + 5)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)


@settings(max_examples=25)
@given(shift=st.integers(0, 60), seed=st.integers(0, 1000))
def test_rope_scores_depend_only_on_relative_offset(shift, seed):
    g = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 2, 12, 16, generator=g), torch.randn(1, 2, 12, 16, generator=g)
    pos = torch.randperm(12, generator=g)  # arbitrary positions, not just arange
    scores = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    shifted = rope(q, pos + shift) @ rope(k, pos + shift).transpose(-1, -2)
    # fp32 angles of positions up to 71 carry ~71 * 6e-8 rad of rounding each; over 16 dims of N(0, 1) products
    # that is up to ~6e-5 on a score (hypothesis found 1.4e-5 at shift 55): a tolerance scaled to that
    torch.testing.assert_close(shifted, scores, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(scores, q @ k.transpose(-1, -2), atol=1e-3)  # RoPE did rotate


def test_rope_attention_is_shift_invariant_in_the_shell():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, rope=RotaryEmbedding(8)).eval()
    x = torch.randn(2, 9, 32)
    ctx = AttentionContext(causal=True)
    y0, w0 = mha(x, ctx, positions=torch.arange(9), return_weights=True)
    y1, w1 = mha(x, AttentionContext(causal=True), positions=torch.arange(9) + 40, return_weights=True)
    torch.testing.assert_close(w1, w0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- ALiBi (Press et al. 2022)


def paper_slopes(n: int) -> list[float]:
    """``get_slopes`` from the ALiBi paper's code (ofirpress/attention_with_linear_biases)."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    # 6 heads: slopes of 4 heads (2^-2, 2^-4, ...) then every other slope of 8 heads (2^-1, 2^-3)
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]))
    for n in range(1, 33):
        torch.testing.assert_close(alibi_slopes(n), torch.tensor(paper_slopes(n)), atol=0, rtol=1e-6)


def test_alibi_slopes_match_bloom():
    modeling_bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for n in (1, 3, 6, 8, 12, 16):
        peer = modeling_bloom.build_alibi_tensor(torch.ones(1, 4), n, torch.float32)  # (H, 1, S): slope * pos
        torch.testing.assert_close(alibi_slopes(n), peer[:, 0, 1], atol=0, rtol=1e-6)


@pytest.mark.parametrize("T,S", [(5, 5), (2, 7), (1, 4)])
def test_alibi_bias_formula(T, S):
    alibi = ALiBi(6)
    bias = alibi(T, S)
    assert bias.shape == (1, 6, T, S)
    slopes = paper_slopes(6)
    for h in range(6):
        for t in range(T):
            for s in range(S):
                assert bias[0, h, t, s].item() == pytest.approx(-slopes[h] * abs(t + S - T - s), abs=1e-6)


# ---------------------------------------------------------------- T5 relative bias (Raffel et al. 2020)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 20), (8, 4)])
def test_t5_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
    modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-400, 401)[None, :] + torch.zeros(3, 1, dtype=torch.long)  # (3, 801)
    ours = t5_relative_bucket(rel, bidirectional, num_buckets, max_distance)
    peer = modeling_t5.T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    torch.testing.assert_close(ours, peer, atol=0, rtol=0)


def test_t5_bucket_hand_values():
    rel = torch.tensor([-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 200])
    # bidirectional, 32 buckets: 16 per direction, 8 exact, then 8 + floor(ln(n/8) / ln(128/8) * 8)
    # (n=20 -> 10); positive offsets shifted by 16; clamped at 15 / 31
    assert t5_relative_bucket(rel, True, 32, 128).tolist() == [15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31]
    # unidirectional: 16 exact, then 16 + floor(ln(n/16) / ln(8) * 16) (n=20 -> 17); future -> bucket 0
    assert t5_relative_bucket(rel, False, 32, 128).tolist() == [31, 31, 17, 8, 7, 1, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_matches_t5_compute_bias(bidirectional):
    transformers = pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    cfg = transformers.T5Config(d_model=32, d_kv=8, num_heads=4, relative_attention_num_buckets=32,
                                relative_attention_max_distance=128, is_decoder=not bidirectional)
    peer = T5Attention(cfg, has_relative_attention_bias=True)
    ours = RelativePositionBias(4, 32, 128, bidirectional=bidirectional)
    with torch.no_grad():
        peer.relative_attention_bias.weight.copy_(ours.embedding.weight)
        torch.testing.assert_close(ours(19, 19), peer.compute_bias(19, 19), atol=0, rtol=0)
    # bottom-right alignment with T < S: query t sits at key position t + S - T
    part = ours(3, 19)
    torch.testing.assert_close(part, ours(19, 19)[:, :, -3:], atol=0, rtol=0)


# ---------------------------------------------------------------- sinusoidal (Vaswani et al. 2017)


@pytest.mark.parametrize("dim", [8, 7])
def test_sinusoidal_table_formula(dim):
    emb = SinusoidalPositionalEmbedding(20, dim)
    expected = torch.zeros(20, dim)
    for p in range(20):
        for j in range(dim):
            angle = p / 10000 ** ((j - j % 2) / dim)
            expected[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(emb.table, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb(torch.tensor([[3, 0]])), expected[[3, 0]][None])
