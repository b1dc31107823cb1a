"""Positional encodings.

- :class:`LearnedPositionalEmbedding` — absolute, learned (BERT, GPT-2).
- :class:`SinusoidalPositionalEmbedding` — absolute, fixed (Vaswani et al. 2017).
- :class:`RotaryEmbedding` — RoPE (Su et al. 2021, "RoFormer"), rotate-half layout as in GPT-NeoX/Llama.
- :class:`ALiBi` — linear distance bias (Press et al. 2022, "Train Short, Test Long").
- :class:`RelativePositionBias` — T5's bucketed relative bias (Raffel et al. 2020).

Biases return ``(1, H, T, S)`` additive tensors under the bottom-right alignment of
:mod:`attnlab.attention.context` (query ``t`` sits at key position ``t + S - T``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn



def query_key_positions(T: int, S: int, device=None) -> tuple[Tensor, Tensor]:
    """Absolute key-axis positions (bottom-right alignment: query ``t`` sits at key ``t + S - T``) of the ``T`` queries and ``S`` keys: ``(T,)`` and ``(S,)``."""
    if T > S:
        raise ValueError(f"got more queries ({T}) than keys ({S}); queries must be the last T keys")
    q_pos = torch.arange(S - T, S, device=device)
    k_pos = torch.arange(S, device=device)
    return q_pos, k_pos


class LearnedPositionalEmbedding(nn.Embedding):
    """``positions (..)`` long -> ``(.., dim)``; positions must be ``< max_seq_len``."""

    def __init__(self, max_seq_len: int, dim: int):
        super().__init__(max_seq_len, dim)
        nn.init.normal_(self.weight, std=0.02)


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sin/cos table ``(max_seq_len, dim)``: even features sin, odd features cos."""

    def __init__(self, max_seq_len: int, dim: int, base: float = 10000.0):
        super().__init__()
        pos = torch.arange(max_seq_len, dtype=torch.float32)[:, None]
        inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))
        table = torch.zeros(max_seq_len, dim)
        table[:, 0::2] = torch.sin(pos * inv)
        table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE: rotate feature pairs ``(i, i + Dh/2)`` by angle ``pos * base^(-2i/Dh)``.

    ``q . k`` after rotation depends only on the offset between their positions.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions ``(T,)`` or ``(B, T)`` -> cos, sin broadcastable to ``(B, H, T, Dh)``."""
        angles = positions.float()[..., None] * self.inv_freq  # (.., T, Dh/2)
        emb = torch.cat((angles, angles), dim=-1)  # (.., T, Dh)
        if emb.dim() == 3:
            emb = emb[:, None]  # (B, 1, T, Dh)
        return emb.cos(), emb.sin()

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x ``(B, H, T, Dh)`` -> rotated, same shape and dtype."""
        cos, sin = self.cos_sin(positions)
        xf = x.float()
        return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def alibi_slopes(num_heads: int) -> Tensor:
    """Head slopes from the ALiBi paper's code: geometric ``2^(-8/n)``; non-powers of two interleave."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(pow2(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = pow2(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(pow2(closest) + extra)


class ALiBi(nn.Module):
    """Bias ``-slope_h * |i - j|`` (causal models only ever see ``j <= i``, where it is ``slope*(j-i)``)."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def forward(self, T: int, S: int) -> Tensor:
        q_pos, k_pos = query_key_positions(T, S, self.slopes.device)
        dist = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (T, S)
        return (-self.slopes[:, None, None] * dist)[None]  # (1, H, T, S)


def t5_relative_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucketing of ``key_pos - query_pos``: exact for small offsets, log-spaced up to ``max_distance``."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """T5 bucketed relative position bias: a learned scalar per (bucket, head)."""

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, T: int, S: int) -> Tensor:
        q_pos, k_pos = query_key_positions(T, S, self.embedding.weight.device)
        rel = k_pos[None, :] - q_pos[:, None]  # (T, S)
        buckets = t5_relative_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)
