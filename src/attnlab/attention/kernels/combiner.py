"""Combiner-Fixed attention: full attention coverage at sub-quadratic cost.

Ren, Dai, Dai, Yang, Leskovec, Schuurmans, Dai, "Combiner: Full Attention Transformer with Sparse
Computation Cost" (NeurIPS 2021); official ``combiner/tf/approx_attention.py::sqrt_fixed_full``.

The sequence is cut into segments of ``s`` tokens. A query attends **directly** to the keys of its own
segment and **indirectly** to every other (causal: every earlier) segment through one summary key and
one summary value per segment, all in one joint softmax, so every visible position keeps a non-zero
weight::

    q_bar_r = pool_{t in r}(q_t),   k_bar_r = pool_{t in r}(k_t)          (default: element-wise max)
    v_bar_r = sum_{t in r} softmax_t(q_bar_r . k_t) v_t                   (unmasked inside the segment)
    out_i   = sum_{j in seg(i)} a_ij v_j + sum_{r in R(i)} a_ir v_bar_r,  a = softmax over both sets

``R(i)`` is ``r < seg(i)`` when causal. Bidirectional, the official code also attends to the summary
of the query's own segment (already covered directly); the paper's factorisation partitions the
support and excludes it. ``exclude_own_summary=True`` (default) follows the paper, ``False`` the code.
Cost per query ``s + N/s``; with ``s ~ sqrt(N)``, ``O(N sqrt(N) Dh)`` time and ``O(N sqrt(N))`` memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import AttentionKernel
from ..cache import DenseKVCache
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.gathered import softmax_keep
from ..reference import expand_kv_heads, masked_softmax
from ..registry import register_attention

POOLINGS = tuple(f"{pre}-{red}" for pre in ("identity", "relu") for red in ("max", "mean", "sum"))


class CombinerCache(DenseKVCache):
    """A dense KV cache that also keeps past queries: a segment's summary pools its queries.

    The kernel stores each call's queries with :meth:`store_queries` (memory ``1.5x`` a KV cache).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.q: Tensor | None = None

    def store_queries(self, q: Tensor) -> Tensor:
        """Write ``q (B, H, T, Dh)`` at the newest ``T`` positions; return all queries ``(B, H, seen, Dh)``."""
        B, H, T, D = q.shape
        if self.q is None or self.q.shape[1] != H or self.q.dtype != q.dtype:
            self.q = torch.zeros(B, H, self.max_len, D, device=q.device, dtype=q.dtype)
        self.q[:, :, self.seen - T:self.seen] = q
        return self.q[:, :, :self.seen]

    @property
    def num_bytes(self) -> int:
        extra = 0 if self.q is None else self.q.numel() * self.q.element_size()
        return super().num_bytes + extra


@register_attention("combiner")
class CombinerAttention(AttentionKernel):
    """Combiner-Fixed: direct attention inside a segment, summaries of the other segments, one softmax.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``. With ``T < S`` (decoding)
    the queries of earlier positions must come from :class:`CombinerCache` (``kernel.new_cache``).

    Args:
        segment: segment length ``s``; default ``round(sqrt(max_seq_len))``, or 16. ``s = N`` is dense
            attention; ``s = 1`` is dense attention too (each summary is the token itself).
        pooling: ``"{identity,relu}-{max,mean,sum}"`` for the summary query and key (official default
            ``identity-max``; the learned ``deepset`` pooling is not implemented).
        exclude_own_summary: bidirectional only; see the module doc.
        scale: score scale, default ``1/sqrt(Dh)``.
        query_block: queries per block of whole segments (default 1024). Outputs are computed block by
            block; causal blocks skip the summaries of segments at or after the block's last one (results
            do not depend on it; smaller blocks skip more but make more, smaller calls).

    Raises:
        ValueError: bad options; ``T < S`` without the kernel's cache; mismatched shapes or masks.
    """

    capabilities = Capabilities(packed=False, attn_bias=False, exact=False, complexity="O(N*sqrt(N)) (s ~ sqrt(N))")

    def __init__(self, segment: int | None = None, pooling: str = "identity-max", exclude_own_summary: bool = True,
                 scale: float | None = None, max_seq_len: int | None = None, query_block: int = 1024):
        super().__init__(scale=scale)
        if not (isinstance(query_block, int) and query_block >= 1):
            raise ValueError(f"query_block must be a positive int (queries per block), got {query_block!r}")
        self.query_block = query_block
        if segment is not None and not (isinstance(segment, int) and segment >= 1):
            raise ValueError(f"segment must be a positive int or None (auto), got {segment!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        self.segment = segment or (max(1, round(math.sqrt(max_seq_len))) if max_seq_len else 16)
        self.pooling, self.exclude_own_summary = pooling, exclude_own_summary

    def new_cache(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, device=None, dtype=None):
        return CombinerCache(batch_size, num_kv_heads, head_dim, max_len, device=device, dtype=dtype)

    def _all_queries(self, q: Tensor, k: Tensor, ctx: AttentionContext, store: bool) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        if isinstance(ctx.cache, CombinerCache):
            return ctx.cache.store_queries(q) if store else ctx.cache.q[:, :, :ctx.cache.seen]
        if T != S:
            raise ValueError(
                f"combiner: {T} queries but {S} keys; segment summaries pool the earlier queries too, so "
                "decode through the kernel's own cache (model.new_cache / kernel.new_cache)"
            )
        return q

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        q_all = self._all_queries(q, k, ctx, store=True)
        H = q.shape[1]
        return self._combine(q_all, expand_kv_heads(k, H), expand_kv_heads(v, H), q.shape[2], ctx, dense=False)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Effective ``(B, H, T, S)`` weights ``W`` with ``forward == W @ v``: a summary's weight is spread
        over its segment's keys by the summary softmax, so every visible key gets a non-zero weight."""
        q_all = self._all_queries(q, k, ctx, store=False)
        H = q.shape[1]
        with torch.no_grad():
            return self._combine(q_all, expand_kv_heads(k, H), expand_kv_heads(v, H), q.shape[2], ctx, dense=True)

    def _pool(self, x: Tensor, valid: Tensor) -> Tensor:
        """Pool ``x (B, H, n, s, Dh)`` over each segment's valid tokens ``valid (B, 1, n, s)`` -> ``(B, H, n, Dh)``."""
        pre, red = self.pooling.split("-")
        if pre == "relu":
            x = F.relu(x)
        m = valid[..., None]  # (B, 1, n, s, 1)
        if red == "max":
            y = x.masked_fill(~m, float("-inf")).amax(dim=3)
            return y.masked_fill(~valid.any(-1)[..., None], 0.0)  # empty segment: 0, masked later
        y = (x * m).sum(dim=3)
        return y / valid.sum(-1, keepdim=True).clamp(min=1) if red == "mean" else y

    def _combine(self, q_all: Tensor, k: Tensor, v: Tensor, T: int, ctx: AttentionContext, dense: bool) -> Tensor:
        """q_all, k, v ``(B, H, S, Dh)``; outputs (or dense weights) for the last ``T`` positions.

        Outputs are computed over blocks of ``query_block`` queries (whole segments). A causal block only
        scores the summaries of the segments before its last one, which skips the upper triangle of the
        ``(N/s) x (N/s)`` segment-summary scores: about half of the summary work at long N."""
        B, H, S, D = k.shape
        s = self.segment
        n = math.ceil(S / s)
        pad = n * s - S  # right-pad to whole segments with masked tokens
        valid = ctx.key_padding_mask
        if valid is None:
            valid = torch.ones(B, S, dtype=torch.bool, device=k.device)
        vseg = F.pad(valid, (0, pad), value=False).view(B, 1, n, s)
        qs = F.pad(q_all * self.softmax_scale(D), (0, 0, 0, pad)).view(B, H, n, s, D)
        ks = F.pad(k, (0, 0, 0, pad)).view(B, H, n, s, D)
        vs = F.pad(v, (0, 0, 0, pad)).view(B, H, n, s, D)
        q_bar, k_bar = self._pool(qs, vseg), self._pool(ks, vseg)  # (B, H, n, Dh)
        inner = masked_softmax(torch.einsum("bhnd,bhnsd->bhns", q_bar, ks).float(), vseg)  # (B, H, n, s)
        v_bar = torch.einsum("bhns,bhnsd->bhnd", inner.to(v.dtype), vs)
        first = (S - T) // s  # first segment holding an output query
        start = S - T - first * s  # offset of the first output query inside the query segments
        if dense:
            m = n - first
            p = self._joint_probs(qs[:, :, first:], ks[:, :, first:], vseg[:, :, first:], k_bar, vseg.any(-1), first,
                                  ctx.causal)  # (B, H, m, s, s + n)
            p_local, p_summ = p.split([s, n], dim=-1)  # (B, H, m, s, s), (B, H, m, s, n)
            w = torch.einsum("bhmir,bhrj->bhmirj", p_summ, inner).reshape(B, H, m, s, n * s)
            for j in range(m):  # add the direct weights into the query's own segment
                w[:, :, j, :, (first + j) * s:(first + j + 1) * s] += p_local[:, :, j]
            return w.reshape(B, H, m * s, n * s)[:, :, start:start + T, :S].to(q_all.dtype)
        per_block = max(1, self.query_block // s)  # segments per query block
        # split, not slice: a slice's backward writes a zero tensor of the full input per block
        blocks = zip(*(x[:, :, first:].split(per_block, dim=2) for x in (qs, ks, vs, vseg)))
        has_summary = vseg.any(-1)  # (B, 1, n): segments with at least one valid token
        outs = []
        for i, (q_blk, k_blk, v_blk, valid_blk) in enumerate(blocks):
            a = first + i * per_block
            m = q_blk.shape[2]
            r_end = a + m - 1 if ctx.causal else n  # causal: summaries r < seg(i) <= a + m - 1
            p = self._joint_probs(q_blk, k_blk, valid_blk, k_bar[:, :, :r_end], has_summary[..., :r_end], a,
                                  ctx.causal).to(v.dtype)
            p_local, p_summ = p.split([s, r_end], dim=-1)  # (B, H, m, s, s), (B, H, m, s, r_end)
            out = torch.matmul(p_local, v_blk).view(B, H, m * s, D)  # (B, H, m*s, Dh)
            if r_end:  # + summaries: (m*s, r_end) x (r_end, Dh)
                out = out + torch.matmul(p_summ.reshape(B, H, m * s, r_end), v_bar[:, :, :r_end])
            outs.append(out)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, H, (n-first)*s, Dh)
        return out[:, :, start:start + T]

    def _joint_probs(self, q_blk: Tensor, k_blk: Tensor, valid_blk: Tensor, k_bar: Tensor, has_summary: Tensor,
                     a: int, causal: bool) -> Tensor:
        """Joint softmax of the query segments ``a..a+m-1`` over their own segment's ``s`` keys, then the
        summaries ``0..r-1``: q_blk/k_blk ``(B, H, m, s, Dh)``, valid_blk ``(B, 1, m, s)``, k_bar
        ``(B, H, r, Dh)``, has_summary ``(B, 1, r)`` -> float32 ``(B, H, m, s, s + r)``. The summary scores
        are one ``(m*s, Dh) x (Dh, r)`` GEMM per head: no per-segment copies of the summaries."""
        B, H, m, s, D = q_blk.shape
        r = k_bar.shape[2]
        local = torch.matmul(q_blk, k_blk.transpose(-1, -2))  # (B, H, m, s, s)
        summ = torch.matmul(q_blk.reshape(B, H, m * s, D), k_bar.transpose(-1, -2))  # (B, H, m*s, r)
        scores = torch.cat([local, summ.view(B, H, m, s, r)], dim=-1)  # (B, H, m, s, s + r)
        keep_local = valid_blk[:, :, :, None, :].expand(B, 1, m, s, s)
        if causal:
            keep_local = keep_local & torch.ones(s, s, dtype=torch.bool, device=q_blk.device).tril()
        seg_q = torch.arange(a, a + m, device=q_blk.device)[:, None]
        seg_r = torch.arange(r, device=q_blk.device)[None, :]
        if causal:
            rel = seg_r < seg_q
        elif self.exclude_own_summary:
            rel = seg_r != seg_q
        else:
            rel = torch.ones(m, r, dtype=torch.bool, device=q_blk.device)
        keep_summ = (has_summary[:, :, None, :] & rel)[:, :, :, None, :].expand(B, 1, m, s, r)
        keep = torch.cat([keep_local, keep_summ], -1)  # (B, 1, m, s, s + r), shared by the heads
        return softmax_keep(scores.float(), keep)  # one joint softmax over s + r entries

    def extra_repr(self) -> str:
        return (f"segment={self.segment}, pooling={self.pooling!r}, exclude_own_summary={self.exclude_own_summary}, "
                f"query_block={self.query_block}")
