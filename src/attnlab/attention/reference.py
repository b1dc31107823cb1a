"""The naive O(N^2) attention formula with explicit masks — the ground truth every kernel is tested against.

``O = softmax(Q K^T * scale + bias, masked) V`` with grouped K/V heads expanded by
``repeat_interleave`` (GQA paper, Ainslie et al. 2023). A query row whose keys are
all masked outputs 0, computed as ``softmax(where(any_keep, S, 0)) * any_keep``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def expand_kv_heads(k: Tensor, num_heads: int) -> Tensor:
    """``(B, Hkv, S, Dh)`` -> ``(B, H, S, Dh)``; query head ``h`` uses K/V head ``h // (H / Hkv)``."""
    hkv = k.shape[1]
    if num_heads % hkv:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={hkv}")
    return k if hkv == num_heads else k.repeat_interleave(num_heads // hkv, dim=1)


def masked_softmax(scores: Tensor, keep: Tensor | None) -> Tensor:
    """Softmax over the last axis; masked entries get 0 and fully masked rows are all 0 (not NaN)."""
    if keep is None:
        return scores.softmax(dim=-1)
    any_keep = keep.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~keep, float("-inf"))
    scores = torch.where(any_keep, scores, torch.zeros_like(scores))
    return scores.softmax(dim=-1) * any_keep


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Dense attention. Returns ``(out (B, H, T, Dh), weights (B, H, T, S))``.

    Args:
        q: ``(B, H, T, Dh)``; k, v: ``(B, Hkv, S, Dh)`` with ``H % Hkv == 0``.
        keep: bool, broadcastable to ``(B, H, T, S)``; True = may attend.
        bias: additive float, broadcastable to ``(B, H, T, S)``.
        scale: defaults to ``1 / sqrt(Dh)``.
    """
    H = q.shape[1]
    k = expand_kv_heads(k, H)
    v = expand_kv_heads(v, H)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) * scale  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias
    weights = masked_softmax(scores.float(), keep).to(q.dtype)
    return torch.einsum("bhts,bhsd->bhtd", weights, v), weights
