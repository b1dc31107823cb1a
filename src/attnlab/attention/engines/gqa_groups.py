"""Shared machinery of the key-driven GQA variants (KDGQA, DGQA, PGQA).

Source: Khan et al. 2024, "Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention"
(arXiv 2408.08454, official code ``zohaib-khan5040/key-driven-gqa``).

A *group allocation* ``a (..., G)`` says how many query heads each K/V head serves (``sum(a) == H``,
zero-size groups allowed); query heads are assigned to K/V heads in **contiguous** chunks of sizes
``a_0, ..., a_{G-1}``. A *group map* ``(B|1, H, T|1)`` gives the K/V head of every query head, per
batch row and per query position when the allocation varies along those axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import fully_masked_rows, zero_if_empty
from ..reference import masked_softmax


def key_norms(k: Tensor, keep: Tensor | None) -> Tensor:
    """Frobenius norms of the visible keys of every K/V head: ``(B, G, T|1)``.

    Args:
        k: ``(B, G, S, Dh)``.
        keep: ``None`` (all keys) or bool broadcastable to ``(B, 1, T, S)``; ``T`` may be 1.
    """
    sq = k.float().pow(2).sum(-1)  # (B, G, S)
    if keep is None:
        return sq.sum(-1, keepdim=True).sqrt()  # (B, G, 1)
    w = keep[:, 0].to(sq.dtype)  # (B|1, T, S)
    return torch.matmul(sq, w.transpose(-1, -2)).clamp_min(0).sqrt()  # (B, G, T)


def uniform_allocation(shape: tuple[int, ...], num_heads: int, groups: int, device=None) -> Tensor:
    """``(*shape, G)`` long, every group serving ``H / G`` heads (plain GQA)."""
    return torch.full((*shape, groups), num_heads // groups, dtype=torch.long, device=device)


def greedy_repair(a: Tensor, num_heads: int) -> Tensor:
    """KDGQA repair: while ``sum > H`` decrement ``argmax``; while ``sum < H`` increment ``argmin``.

    Vectorised over leading axes; ``argmax``/``argmin`` pick the first index on ties, as the reference.
    """
    if a.numel() == 0:
        return a
    steps = int((a.sum(-1) - num_heads).abs().max())  # each step moves every unbalanced row by 1
    for _ in range(steps):
        tot = a.sum(-1, keepdim=True)  # (..., 1)
        over, under = tot > num_heads, tot < num_heads
        a = a.scatter_add(-1, a.argmax(-1, keepdim=True), -over.long())
        a = a.scatter_add(-1, a.argmin(-1, keepdim=True), under.long())
    return a


def minmax_allocation(n: Tensor, num_heads: int, eps: float = 1e-6) -> Tensor:
    """KDGQA allocation from norms ``n (..., G)``: min-max normalise, ``round(H * n / sum n)``, repair.

    Ties (``max - min <= eps * max``, where the reference divides 0 by 0) fall back to uniform
    groups [choice].
    """
    G = n.shape[-1]
    lo, hi = n.amin(-1, keepdim=True), n.amax(-1, keepdim=True)
    span = hi - lo
    tie = span <= eps * hi.abs().clamp_min(eps)  # (..., 1)
    nn_ = (n - lo) / span.clamp_min(eps)  # (..., G) in [0, 1]
    a = torch.round(num_heads * nn_ / nn_.sum(-1, keepdim=True).clamp_min(eps)).long()
    a = greedy_repair(a, num_heads)
    uniform = torch.full_like(a, num_heads // G)
    return torch.where(tie, uniform, a)


def random_repair(a: Tensor, num_heads: int, generator: torch.Generator | None) -> Tensor:
    """DGQA repair of one allocation ``(G,)``: random decrements (only where ``a > 0``), random increments.

    Every draw comes from ``generator`` (the reference uses the global RNG) [choice].
    """
    a = a.clone()
    G = a.shape[0]
    draw = lambda: int(torch.randint(0, G, (1,), generator=generator, device=generator.device if generator else "cpu"))
    while int(a.sum()) > num_heads:
        i = draw()
        if a[i] > 0:
            a[i] -= 1
    while int(a.sum()) < num_heads:
        a[draw()] += 1
    return a


def proportional_allocation(s: Tensor, num_heads: int, generator: torch.Generator | None) -> Tensor:
    """DGQA allocation ``round(H * s / sum s)`` with random repair; uniform if ``sum s == 0``."""
    G = s.shape[0]
    total = float(s.sum())
    if not total > 0 or not torch.isfinite(s).all():
        return uniform_allocation((), num_heads, G, s.device)
    a = torch.round(num_heads * s / total).long()
    return random_repair(a, num_heads, generator)


def heads_to_groups(a: Tensor, num_heads: int) -> Tensor:
    """Allocation ``(..., G)`` -> group of every query head ``(..., H)`` (contiguous chunks)."""
    ends = a.cumsum(-1)  # (..., G) exclusive end head of each chunk
    h = torch.arange(num_heads, device=a.device)
    return (ends[..., None, :] <= h[:, None]).sum(-1)  # (..., H)


def group_map(a: Tensor, num_heads: int) -> Tensor:
    """Allocation ``(B|1, T|1, G)`` -> group map ``(B|1, H, T|1)``."""
    return heads_to_groups(a, num_heads).transpose(1, 2)


def _float_mask(keep: Tensor | None, bias: Tensor | None, dtype) -> Tensor | None:
    if bias is None:
        return keep
    bias = bias.to(dtype)
    return bias if keep is None else bias.masked_fill(~keep, float("-inf"))


def sdpa(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, bias: Tensor | None, scale: float,
         dropout_p: float = 0.0) -> Tensor:
    """Softmax attention ``(B, H, T, Dh)`` with equal head counts; fully masked rows -> 0."""
    empty = fully_masked_rows(keep)
    if empty is not None:
        keep = keep | empty  # one dummy key keeps softmax finite; the row is zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_float_mask(keep, bias, q.dtype),
                                         dropout_p=dropout_p, scale=scale)
    return zero_if_empty(out, empty)


def _all_pairs(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Pair every query head with every K/V head: q ``(B, H*G, T, Dh)``, k ``(B, H*G, S, Dh)``."""
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    qq = q[:, :, None].expand(B, H, G, T, D).reshape(B, H * G, T, D)
    kk = k[:, None].expand(B, H, G, S, D).reshape(B, H * G, S, D)
    return qq, kk


def _pair_bias(bias: Tensor | None, G: int) -> Tensor | None:
    if bias is None or bias.shape[1] == 1:
        return bias
    return bias.repeat_interleave(G, dim=1)  # (., H*G, T, S)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, groups: Tensor, keep: Tensor | None,
                      bias: Tensor | None, scale: float, dropout_p: float = 0.0) -> Tensor:
    """Softmax attention where query head ``h`` (at row ``b``, position ``t``) uses K/V head ``groups[b, h, t]``.

    Args:
        q: ``(B, H, T, Dh)``; k, v: ``(B, G, S, Dh)``.
        groups: long ``(B|1, H, T|1)``.
    Returns ``(B, H, T, Dh)``. A group map constant over batch and positions costs one SDPA call;
    otherwise every (query head, K/V head) pair is computed and the right one gathered (``G`` x cost).
    """
    B, H, T, D = q.shape
    G = k.shape[1]
    if groups.shape[0] == 1 and groups.shape[2] == 1:
        idx = groups[0, :, 0]  # (H,)
        return sdpa(q, k[:, idx], v[:, idx], keep, bias, scale, dropout_p)  # k[:, idx]: (B, H, S, Dh)
    qq, kk = _all_pairs(q, k)
    _, vv = _all_pairs(q, v)
    out = sdpa(qq, kk, vv, keep, _pair_bias(bias, G), scale, dropout_p).view(B, H, G, T, D)
    index = groups.expand(B, H, T)[:, :, None, :, None].expand(B, H, 1, T, D)
    return out.gather(2, index).squeeze(2)  # (B, H, T, Dh)


def grouped_weights(q: Tensor, k: Tensor, groups: Tensor, keep: Tensor | None, bias: Tensor | None,
                    scale: float) -> Tensor:
    """The ``(B, H, T, S)`` attention map of :func:`grouped_attention` (dense reference path)."""
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    qq, kk = _all_pairs(q, k)
    scores = torch.einsum("bhtd,bhsd->bhts", qq, kk).float() * scale  # (B, H*G, T, S)
    pb = _pair_bias(bias, G)
    if pb is not None:
        scores = scores + pb
    w = masked_softmax(scores, keep).view(B, H, G, T, S)
    index = groups.expand(B, H, T)[:, :, None, :, None].expand(B, H, 1, T, S)
    return w.gather(2, index).squeeze(2).to(q.dtype)
