"""Attention over restricted key sets, for content-routed and sliding-window heads (no N x N tensor).

* :func:`sorted_window_attention`: tokens sorted by class (cluster, document) and position, attended in
  Reformer-style blocks; ``O(N * window * Dh)`` in dense block matmuls. Used for full sequences.
* :func:`gathered_attention`: each query attends to its own list of ``L`` key slots, gathered per
  query, ``O(T * L * Dh)``. Used when a few new queries decode against a cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import masked_softmax


def softmax_keep(scores: Tensor, keep: Tensor) -> Tensor:
    """Softmax over the last axis restricted to ``keep`` (broadcastable); rows with no kept entry give 0.

    Two passes over ``scores`` (mask, softmax); the empty-row fix only runs when such rows exist.
    """
    empty = ~keep.any(-1, keepdim=True)
    has_empty = bool(empty.any())
    if has_empty:
        keep = keep | empty  # a finite softmax for them, zeroed below
    p = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    return p.masked_fill(empty, 0.0) if has_empty else p


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x (B, h, S, D)``, ``idx (B, h, T, L)`` -> ``(B, h, T, L, D)`` with ``out[..., t, l, :] = x[..., idx, :]``."""
    B, h, S, D = x.shape
    base = (torch.arange(B * h, device=x.device) * S).view(B, h, 1, 1)
    flat = (idx + base).reshape(-1)  # (B*h*T*L,) row numbers into x viewed as (B*h*S, D)
    return x.reshape(B * h * S, D).index_select(0, flat).view(*idx.shape, D)


def _chunk(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, ok: Tensor, scale: float) -> Tensor:
    kg = gather_rows(k, idx)  # (B, h, t, L, D)
    vg = gather_rows(v, idx)
    scores = torch.einsum("bhtd,bhtld->bhtl", q, kg) * scale  # (B, h, t, L)
    p = masked_softmax(scores.float(), ok).to(q.dtype)
    return torch.einsum("bhtl,bhtld->bhtd", p, vg)


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, ok: Tensor, scale: float,
                       chunk_elems: int = 1 << 16) -> Tensor:
    """Softmax attention of each query over its own key slots.

    Args:
        q: ``(B, h, T, D)``; k, v: ``(B, h, S, D)`` (same heads as q).
        idx: ``(B, h, T, L)`` long in ``[0, S)`` (clamp out-of-range slots and mark them in ``ok``).
        ok: ``(B, h, T, L)`` bool, True = the slot is a real key. A query with no real slot outputs 0.
        scale: score multiplier.
        chunk_elems: ``T_chunk * L`` per chunk of queries (bounds the gathered keys to ``B*h*chunk_elems*D``).

    Returns:
        ``(B, h, T, D)``.
    """
    T, L = idx.shape[2], idx.shape[3]
    step = max(1, chunk_elems // max(L, 1))
    outs = [_chunk(q[:, :, t0:t0 + step], k, v, idx[:, :, t0:t0 + step], ok[:, :, t0:t0 + step], scale)
            for t0 in range(0, T, step)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def gathered_weights(q: Tensor, k: Tensor, idx: Tensor, ok: Tensor, scale: float) -> Tensor:
    """The dense ``(B, h, T, S)`` map of :func:`gathered_attention` (for ``attention_weights``)."""
    B, h, T, _ = q.shape
    S = k.shape[2]
    scores = torch.einsum("bhtd,bhtld->bhtl", q, gather_rows(k, idx)) * scale
    p = masked_softmax(scores.float(), ok)  # (B, h, T, L)
    dense = torch.zeros(B, h, T, S, device=q.device, dtype=p.dtype)
    dense.scatter_add_(-1, idx, p)  # slots never repeat a real key, so this is a plain placement
    return dense.to(q.dtype)


def _with_neighbours(x: Tensor, w: int, fill, causal: bool) -> Tensor:
    """``(B, h, n*w, ...)`` -> ``(B, h, n, (2|3)*w, ...)``: each block with the previous (and next) block."""
    B, h = x.shape[:2]
    xb = x.reshape(B, h, -1, w, *x.shape[3:])  # (B, h, n, w, ...)
    edge = torch.full_like(xb[:, :, :1], fill)
    parts = [torch.cat([edge, xb[:, :, :-1]], dim=2), xb]
    if not causal:
        parts.append(torch.cat([xb[:, :, 1:], edge], dim=2))
    return torch.cat(parts, dim=3)


def sorted_window_attention(q: Tensor, k: Tensor, v: Tensor, order: Tensor, cls: Tensor, key_ok: Tensor | None,
                            window: int, scale: float, causal: bool, dense: bool = False) -> Tensor:
    """Attention among tokens of the same class, within ``window`` class members (Reformer-style blocks).

    Tokens are sorted by ``order`` (a permutation putting each class's tokens together, in position
    order), cut into blocks of ``window`` and each block attends to itself and the previous block (and
    the next one when bidirectional). Query ``i`` sees key ``j`` iff ``cls[j] == cls[i]``, ``key_ok[j]``
    and, with ``d`` = number of class members between them in sorted order, ``0 <= d < window`` (causal:
    the newest ``window`` members up to ``i``, itself included) or ``|d| <= window // 2``. Cost
    ``O(N * window * Dh)``, all in dense block matmuls.

    Args:
        q, k, v: ``(B, h, N, Dh)``. order, cls: ``(B, h, N)`` long. key_ok: ``(B, N)`` bool or None.
        dense: return the ``(B, h, N, N)`` weight map instead of the output.
    """
    B, h, N, D = q.shape
    w = window
    pad = -N % w
    order_p = F.pad(order, (0, pad))  # (B, h, Np); padded slots point at token 0 and are masked
    cls_s = F.pad(cls.gather(-1, order), (0, pad), value=-1)
    ok_s = torch.ones(B, h, N, dtype=torch.bool, device=q.device) if key_ok is None else \
        key_ok[:, None, :].expand(B, h, N).gather(-1, order)
    ok_s = F.pad(ok_s, (0, pad), value=False)
    idx = order_p[..., None].expand(B, h, N + pad, D)
    qs, ks, vs = q.gather(2, idx), k.gather(2, idx), v.gather(2, idx)  # (B, h, Np, Dh) sorted
    rank = torch.arange(N + pad, device=q.device)
    rq = rank.view(1, 1, -1, w)  # (1, 1, n, w)
    rk = _with_neighbours(rank.view(1, 1, -1), w, -(w + 1) * 2, causal)  # (1, 1, n, L)
    delta = rq[..., :, None] - rk[..., None, :]  # (1, 1, n, w, L)
    in_win = ((delta >= 0) & (delta < w)) if causal else (delta.abs() <= w // 2)
    same = cls_s.view(B, h, -1, w)[..., :, None] == _with_neighbours(cls_s, w, -2, causal)[..., None, :]
    keep = same & in_win & _with_neighbours(ok_s, w, False, causal)[..., None, :]  # (B, h, n, w, L)
    qs = qs * scale
    scores = torch.einsum("bhnqd,bhnkd->bhnqk", qs.view(B, h, -1, w, D), _with_neighbours(ks, w, 0.0, causal))
    p = softmax_keep(scores.float(), keep)
    if dense:
        pair = order_p.view(B, h, -1, w)[..., :, None] * N + _with_neighbours(order_p, w, 0, causal)[..., None, :]
        out = torch.zeros(B, h, N * N, device=q.device).scatter_add_(-1, pair.flatten(2), p.flatten(2))
        return out.view(B, h, N, N).to(q.dtype)
    ob = torch.einsum("bhnqk,bhnkd->bhnqd", p.to(v.dtype), _with_neighbours(vs, w, 0.0, causal))
    inv = order.argsort(dim=-1)  # token -> sorted slot
    return ob.reshape(B, h, N + pad, D).gather(2, inv[..., None].expand(B, h, N, D))
