"""The blocked span engine every structured sparse kernel runs on (sliding window, block-local halo,
neighbourhood, axial).

The engine (:func:`blocked_attention`) computes softmax attention where queries are cut into blocks
that share one key *span*: ``q_pos (nb, b)`` lists the key-axis positions of each block's queries,
``k_pos (nb, L)`` the keys of its span, and a boolean mask ``(1|B, nb, b, L)`` says which pairs are
visible. Forward and backward run block-chunk by block-chunk: by default the ``O(N * L)`` probabilities
are kept for backward; with ``recompute=True`` they are recomputed per chunk as in FlashAttention
(Dao et al. 2022), so memory is ``O(N * Dh)`` plus ``O(N * L)`` mask bits. Either way an ``N x N``
matrix never exists.
Sliding-window, halo, neighbourhood and axial attention differ only in the layout they build; kernels
validate a 2-D token grid with :func:`check_grid`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..context import AttentionContext

# Scores per chunk. One thread: 2^18 (1 MB fp32, cache-sized). Several threads: 2^21, because every op
# pays an OpenMP fork/join, which on a loaded machine costs a scheduler time slice (measured: 3x faster
# than 2^18 at N=4k, 2 threads, load 10). A chunk's transient memory is ~10x its scores.
_CHUNK_ELEMS = 1 << 18
_CHUNK_ELEMS_THREADED = 1 << 21


class SpanLayout(NamedTuple):
    """Which keys each query block sees. Positions are on the key axis; ``-1`` marks padding slots.

    q_pos: ``(nb, b)`` long; k_pos: ``(nb, L)`` long; pattern: ``(nb, b, L)`` bool (True = may attend).
    Every query position appears in exactly one slot of ``q_pos``.
    """

    q_pos: Tensor
    k_pos: Tensor
    pattern: Tensor
    band_base: int | None = None  # set when span n is exactly keys band_base + n*b + [0, L), L % b == 0


def combine_axes(rows: SpanLayout, cols: SpanLayout, num_cols: int) -> SpanLayout:
    """Cartesian product of a row-axis and a column-axis layout on a row-major grid -> flat layout."""
    def flat(y: Tensor, x: Tensor) -> Tensor:  # (ny, a), (nx, c) -> (ny, nx, a, c)
        pos = y[:, None, :, None] * num_cols + x[None, :, None, :]
        return torch.where((y[:, None, :, None] >= 0) & (x[None, :, None, :] >= 0), pos, -1)

    nby, nbx = rows.q_pos.shape[0], cols.q_pos.shape[0]
    q_pos = flat(rows.q_pos, cols.q_pos).reshape(nby * nbx, -1)  # (nb, by*bx)
    k_pos = flat(rows.k_pos, cols.k_pos).reshape(nby * nbx, -1)  # (nb, Ly*Lx)
    pat = rows.pattern[:, None, :, None, :, None] & cols.pattern[None, :, None, :, None, :]
    return SpanLayout(q_pos, k_pos, pat.reshape(nby * nbx, q_pos.shape[1], k_pos.shape[1]))  # (nb, b, L)


def band_layout(first: int, length: int, left: int, right: int, block: int, device=None) -> SpanLayout:
    """1-D band: queries ``first..length-1`` see keys ``p - left <= j <= p + right`` inside ``[0, length)``."""
    nq = length - first
    b = max(1, min(block, nq))
    nb = -(-nq // b)
    q = first + torch.arange(nb * b, device=device).view(nb, b)  # (nb, b)
    span = -(-(b + left + right) // b) * b  # rounded up to whole blocks: strided views, see _SpanAttention
    k = q[:, :1] - left + torch.arange(span, device=device)  # (nb, L)
    diff = q[:, :, None] - k[:, None, :]  # (nb, b, L)
    pattern = (diff <= left) & (diff >= -right)
    k_pos = torch.where((k >= 0) & (k < length), k, -1)
    return SpanLayout(torch.where(q < length, q, -1), k_pos, pattern, band_base=first - left)


class SpanPlan(NamedTuple):
    """A layout made ready for ``T`` queries and ``S`` keys (cached: kernels build it once per shape).

    rows: ``(nb*b,)`` query row of each slot (``T`` = zero row); slot: ``(T,)`` slot of each query row;
    k_idx: ``(nb, L)`` key index (``S`` = zero row); q_pos, k_pos: the layout's positions (``-1`` = none);
    drop: ``(1, nb, b, L)`` True where the pattern, slot validity or causality forbids the pair.
    """

    rows: Tensor
    slot: Tensor
    k_idx: Tensor
    q_pos: Tensor
    k_pos: Tensor
    drop: Tensor
    q_pad: int | None  # queries are rows 0..T-1 in order, then q_pad padding slots: no gather needed
    band: tuple[int, int, int] | None  # (front, tail, start): zero rows around each head's keys, span 0 row


@functools.lru_cache(maxsize=16)
def cached_plan(builder, T: int, S: int, causal: bool, *args) -> SpanPlan:
    """``builder(*args) -> SpanLayout`` turned into a :class:`SpanPlan` (memoised on the arguments).

    Built outside inference mode so that a plan first made while generating can be saved for backward.
    """
    with torch.inference_mode(False), torch.no_grad():
        qp, kp, pat, layout_band = builder(*args)
        keep = pat & (kp >= 0)[:, None, :] & (qp >= 0)[:, :, None]  # (nb, b, L)
        if causal:
            keep = keep & (kp[:, None, :] <= qp[:, :, None])
        rows = torch.where(qp >= 0, qp - (S - T), T).reshape(-1)  # (nb*b,)
        slot = torch.empty(T + 1, dtype=torch.long, device=qp.device)
        slot[rows] = torch.arange(rows.numel(), device=qp.device)  # query row -> its slot
        k_idx = torch.where(kp >= 0, kp, S)  # (nb, L)
        pad = rows.numel() - T
        in_order = bool((rows[:T] == torch.arange(T, device=rows.device)).all()) and bool((rows[T:] == T).all())
        band = None
        b, L = qp.shape[1], kp.shape[1]
        if layout_band is not None and L % b == 0:
            front = max(0, -layout_band)
            band = (front, max(0, layout_band + (qp.shape[0] - 1) * b + L - S), front + layout_band)
        return SpanPlan(rows, slot[:T].clone(), k_idx, qp, kp, ~keep[None], pad if in_order else None, band)


def context_drop(plan: SpanPlan, ctx: AttentionContext) -> Tensor:
    """The plan's drop mask, plus key padding and documents from ``ctx`` -> ``(1|B, nb, b, L)``."""
    drop = plan.drop
    qi, ki = plan.q_pos.clamp(min=0), plan.k_pos.clamp(min=0)
    if ctx.key_padding_mask is not None:
        drop = drop | ~ctx.key_padding_mask[:, ki][:, :, None, :]  # (B, nb, b, L)
    if ctx.document_ids is not None:
        doc = ctx.document_ids
        drop = drop | (doc[:, qi][:, :, :, None] != doc[:, ki][:, :, None, :])  # (B, nb, b, L)
    return drop


class _SpanAttention(torch.autograd.Function):
    """Chunked softmax attention over key spans; backward reuses kept probabilities or recomputes them.

    Keys and values are two buffers (each below glibc's mmap threshold at 16k; a stacked one was not).
    Two ways to fetch a chunk's spans: ``band=None`` gathers rows ``k_idx`` of ``k_buf, v_buf (B, Hk, S+1, Dh)``
    (any layout); ``band=(start, P, Hk)`` reads overlapping strided views of a padded buffer
    ``k_buf, v_buf (B*Hk*P, Dh)`` where span ``n`` of K/V head ``bh`` starts at row ``bh*P + start + n*b``
    (1-D bands: no copy, and gradients are scattered back with ``L/b`` non-overlapping adds).
    """

    @staticmethod
    def forward(ctx, qb, k_buf, v_buf, k_idx, drop, groups, band, keep_probs, bias):
        # qb (B, Hk, nb, G*b, Dh) pre-scaled; drop (1|B, nb, b, L) True = masked; bias None, (Hk, nb, G*b, L) or
        # (B, Hk, nb, G*b, L) (query-dependent: HaloNet's relative logits)
        B, Hk, nb, M, D = qb.shape
        acc = _acc(qb.dtype)
        out = torch.empty_like(qb)
        lse = torch.empty(B, Hk, nb, M, 1, device=qb.device, dtype=acc)
        # kept probabilities: one tensor per chunk, not one (B, Hk, nb, M, L) buffer. A buffer above glibc's
        # mmap threshold (<= 32 MB; 134 MB at N=16k, H=4, L=512) is mmapped and page-faulted afresh every
        # step (~12% of a 16k step); chunk-sized blocks are reused from the heap
        probs = [] if keep_probs else None
        for sel, s0, s1 in _chunks(qb.shape, k_idx.shape[1], band):
            kc, vc = _spans(k_buf, v_buf, k_idx, band, drop.shape[2], sel, s0, s1)  # (.., c, L, Dh)
            qc = qb[sel][..., s0:s1, :, :]  # (.., c, M, Dh)
            dest = None
            if probs is not None:  # kept: compute in place there
                dest = torch.empty(*qc.shape[:-1], k_idx.shape[1], device=qb.device, dtype=acc)  # (.., c, M, L)
                probs.append(dest)
            s = _masked_scores(qc, kc, _drop(drop, sel, s0, s1), groups, dest)  # (.., c, M, L)
            if bias is not None:
                s.add_(_bias(bias, sel, s0, s1))
            # empty rows have max -inf: clamping to the lowest finite value keeps exp(-inf - m) = 0
            m = s.amax(-1, keepdim=True).clamp_(min=torch.finfo(s.dtype).min)
            p = s.sub_(m).exp_()
            l = p.sum(-1, keepdim=True).clamp_(min=torch.finfo(acc).tiny)  # (.., c, M, 1); empty rows -> 0
            if probs is None:
                _matmul_into(out[sel][..., s0:s1, :, :], p.to(vc.dtype), vc).div_(l)  # (.., c, M, Dh)
            else:
                _matmul_into(out[sel][..., s0:s1, :, :], p.div_(l).to(vc.dtype), vc)
            lse[sel][..., s0:s1, :, :] = l.log_().add_(m)
        ctx.save_for_backward(qb, k_buf, v_buf, k_idx, drop, out, lse, bias)
        ctx.groups, ctx.band, ctx.probs = groups, band, probs  # probs: intermediates, safe to keep on ctx
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        qb, k_buf, v_buf, k_idx, drop, out, lse, bias = ctx.saved_tensors
        probs, ctx.probs = ctx.probs, None  # once_differentiable: freed chunk by chunk below
        groups, band = ctx.groups, ctx.band
        acc, b = _acc(qb.dtype), drop.shape[2]
        dout = dout.contiguous()
        delta = torch.linalg.vecdot(dout.to(acc), out.to(acc)).unsqueeze(-1)  # (B, Hk, nb, M, 1)
        dq = torch.empty_like(qb)
        dk, dv = torch.zeros_like(k_buf, dtype=acc), torch.zeros_like(v_buf, dtype=acc)
        dbias = None if bias is None or not ctx.needs_input_grad[8] else torch.zeros_like(bias, dtype=acc)
        for i, (sel, s0, s1) in enumerate(_chunks(qb.shape, k_idx.shape[1], band)):
            kc, vc = _spans(k_buf, v_buf, k_idx, band, b, sel, s0, s1)  # (.., c, L, Dh)
            qc, dc = qb[sel][..., s0:s1, :, :], dout[sel][..., s0:s1, :, :]
            if probs is None:  # recompute the chunk's probabilities (FlashAttention backward)
                s = _masked_scores(qc, kc, _drop(drop, sel, s0, s1), groups)
                if bias is not None:
                    s.add_(_bias(bias, sel, s0, s1))
                p = s.sub_(lse[sel][..., s0:s1, :, :]).exp_()
            else:
                p, probs[i] = probs[i], None
            dvc = torch.matmul(p.transpose(-1, -2).to(dc.dtype), dc)  # (.., c, L, Dh)
            ds = torch.matmul(dc, vc.transpose(-1, -2)).to(acc).sub_(delta[sel][..., s0:s1, :, :]).mul_(p)
            if dbias is not None:  # the bias adds to the scores: its gradient is theirs (summed over a shared batch)
                _bias(dbias, sel, s0, s1).add_(ds if isinstance(sel[0], int) or dbias.dim() == 5 else ds.sum(0))
            ds = ds.to(qc.dtype)  # (.., c, M, L)
            _matmul_into(dq[sel][..., s0:s1, :, :], ds, kc)
            dkc = torch.matmul(ds.transpose(-1, -2), qc)  # (.., c, L, Dh)
            _scatter_spans((dk, dv), (dkc.to(acc), dvc.to(acc)), k_idx, band, b, sel, s0, s1)
        return (dq, dk.to(k_buf.dtype), dv.to(v_buf.dtype), None, None, None, None, None,
                None if dbias is None else dbias.to(bias.dtype))


def _matmul_into(dest: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``dest[...] = a @ b``, written in place when ``dest`` is contiguous (saves a copy)."""
    if dest.is_contiguous() and dest.dtype == a.dtype:
        return torch.matmul(a, b, out=dest)
    dest.copy_(torch.matmul(a, b))
    return dest


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Softmax/accumulation dtype: fp32 for half types, else the input's own (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_elems() -> int:
    return _CHUNK_ELEMS if torch.get_num_threads() == 1 else _CHUNK_ELEMS_THREADED


def _chunks(shape, L: int, band):
    """Yield ``(sel, s0, s1)``: index into the (B, Hk) dims (all at once, or one head for bands) and a
    block range holding about ``_CHUNK_ELEMS`` scores."""
    B, Hk, nb, M, _ = shape
    heads = [(slice(None), slice(None))] if band is None else [(i, j) for i in range(B) for j in range(Hk)]
    per_block = M * L * (B * Hk if band is None else 1)
    chunk = max(1, _chunk_elems() // max(1, per_block))
    for sel in heads:
        for s0 in range(0, nb, chunk):
            yield sel, s0, min(nb, s0 + chunk)


def _drop(drop: Tensor, sel, s0: int, s1: int) -> Tensor:
    """Chunk of the mask, shaped to broadcast over ``(.., c, G, b, L)`` scores."""
    if isinstance(sel[0], int):  # one head: (c, 1, b, L)
        return drop[sel[0] if drop.shape[0] > 1 else 0, s0:s1, None]
    return drop[:, None, s0:s1, None]  # (1|B, 1, c, 1, b, L)


def _bias(bias: Tensor, sel, s0: int, s1: int) -> Tensor:
    """Chunk of the ``(Hk, nb, G*b, L)`` score bias: ``(Hk, c, M, L)``, or ``(c, M, L)`` for one head (a view); of a
    per-example ``(B, Hk, nb, G*b, L)`` bias: ``(B, Hk, c, M, L)``, or ``(c, M, L)`` for one example and head."""
    if bias.dim() == 5:
        return bias[sel[0], sel[1], s0:s1] if isinstance(sel[0], int) else bias[:, :, s0:s1]
    return bias[sel[1], s0:s1] if isinstance(sel[0], int) else bias[:, s0:s1]


def _spans(k_buf: Tensor, v_buf: Tensor, k_idx: Tensor, band, b: int, sel, s0: int,
           s1: int) -> tuple[Tensor, Tensor]:
    """Keys and values of blocks ``s0:s1``: ``(B, Hk, c, L, Dh)`` gathered, or ``(c, L, Dh)`` views (band)."""
    L = k_idx.shape[1]
    if band is None:
        B, Hk, _, D = k_buf.shape
        idx = k_idx[s0:s1].reshape(-1)
        return tuple(buf.index_select(2, idx).view(B, Hk, s1 - s0, L, D) for buf in (k_buf, v_buf))
    return tuple(_band_view(buf, band, sel, s0, s1, L, b) for buf in (k_buf, v_buf))


def _band_view(buf: Tensor, band, sel, s0: int, s1: int, L: int, b: int, col: int = 0) -> Tensor:
    """``(c, L, Dh)`` overlapping view of ``buf (B*Hk*P, Dh)``: row ``n`` starts ``b`` rows after row
    ``n - 1`` (no copy)."""
    start, P, Hk = band
    D = buf.shape[-1]
    row = (sel[0] * Hk + sel[1]) * P + start + s0 * b + col
    return buf.as_strided((s1 - s0, L, D), (b * D, D, 1), buf.storage_offset() + row * D)


def _scatter_spans(dbufs: tuple[Tensor, Tensor], grads, k_idx: Tensor, band, b: int, sel, s0: int,
                   s1: int) -> None:
    """Accumulate span gradients ``(.., c, L, Dh)`` for keys and values back onto ``dbufs = (dk, dv)``."""
    if band is None:
        B, Hk, _, D = dbufs[0].shape
        idx = k_idx[s0:s1].reshape(-1)
        for dbuf, g in zip(dbufs, grads):
            dbuf.index_add_(2, idx, g.reshape(B, Hk, -1, D))  # (B, Hk, S+1, Dh)
        return
    for dbuf, g in zip(dbufs, grads):  # L = m*b: the m column pieces of a chunk do not overlap
        for j in range(0, k_idx.shape[1], b):
            _band_view(dbuf, band, sel, s0, s1, b, b, col=j).add_(g[:, j : j + b])


def _masked_scores(qc: Tensor, kc: Tensor, drop: Tensor, groups: int, dest: Tensor | None = None) -> Tensor:
    """Scores ``(.., c, G*b, L)`` in >= fp32 (into ``dest`` if given), dropped pairs at ``-inf``."""
    if dest is not None and dest.dtype == qc.dtype:
        s = _matmul_into(dest, qc, kc.transpose(-1, -2))  # (.., c, G*b, L)
    else:
        s = torch.matmul(qc, kc.transpose(-1, -2)).to(_acc(qc.dtype))
        s = s if dest is None else dest.copy_(s)
    *lead, c, M, L = s.shape
    s.view(*lead, c, groups, M // groups, L).masked_fill_(drop, float("-inf"))
    return s


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, plan: SpanPlan, drop: Tensor, scale: float,
                      recompute: bool = False, bias: Tensor | None = None) -> Tensor:
    """Exact softmax attention on a :class:`SpanPlan`, pairs in ``drop`` masked out, plus an optional additive
    score ``bias (H, nb, b, L)`` or ``(B, H, nb, b, L)`` laid out like the plan's spans (a relative position bias,
    or query-dependent relative logits; differentiable).

    ``recompute=False`` keeps the ``(B, H, T, L)`` probabilities for backward (memory ``O(N * L)``, the
    fastest); ``True`` recomputes them chunk by chunk in backward (memory ``O(N * Dh)``, ~20% slower).

    Shapes: q ``(B, H, T, Dh)``; k, v ``(B, Hkv, S, Dh)``; drop ``(1|B, nb, b, L)`` -> ``(B, H, T, Dh)``.
    Queries sit at key positions ``t + S - T`` (bottom-right alignment); a query with no kept key
    outputs 0. GQA heads share their K/V span: the ``G = H / Hkv`` query heads of a group are stacked
    as extra rows of one block, so K/V are never repeated.
    """
    B, H, T, D = q.shape
    Hk, S = k.shape[1], k.shape[2]
    G = H // Hk
    nb, b = plan.q_pos.shape
    if plan.q_pad is not None:  # queries already in slot order: pad instead of gather
        qs = F.pad(q, (0, 0, 0, plan.q_pad)).mul_(scale)  # (B, H, nb*b, Dh)
    else:
        qs = torch.cat([q * scale, q.new_zeros(B, H, 1, D)], dim=2).index_select(2, plan.rows)  # (B, H, nb*b, Dh)
    qb = qs.view(B, Hk, G, nb, b, D).transpose(2, 3).reshape(B, Hk, nb, G * b, D)
    L = plan.k_idx.shape[1]
    if plan.band is None or nb * G * b * L < _chunk_elems():  # gather: one chunk batches all heads
        k_buf, v_buf = (F.pad(x, (0, 0, 0, 1)) for x in (k, v))  # (B, Hk, S+1, Dh) each: row S is the zero key
        band = None
    else:
        front, tail, start = plan.band
        band = (start, front + S + tail, Hk)
        # (B, Hk, P, Dh) each: zero rows around each head's keys; heads one after another, so spans are
        # strided views of the flat (B*Hk*P, Dh) buffers
        pad = (0, 0, front, tail)
        k_buf, v_buf = (F.pad(x, pad).view(B * Hk * band[1], D) for x in (k, v))
    grads = q.requires_grad or k.requires_grad or v.requires_grad or (bias is not None and bias.requires_grad)
    keep_probs = not recompute and torch.is_grad_enabled() and grads
    if bias is not None:  # (H, nb, b, L) -> (Hk, nb, G*b, L): a group's G query heads are rows of one block
        lead = bias.shape[:-4]  # () or (B,)
        bias = bias.reshape(*lead, Hk, G, nb, b, L).transpose(-4, -3).reshape(*lead, Hk, nb, G * b, L)
    ob = _SpanAttention.apply(qb, k_buf, v_buf, plan.k_idx, drop, G, band, keep_probs, bias)  # (B, Hk, nb, G*b, Dh)
    ob = ob.view(B, Hk, nb, G, b, D).transpose(2, 3).reshape(B, H, nb * b, D)  # (B, H, nb*b, Dh)
    return ob[:, :, :T] if plan.q_pad is not None else ob.index_select(2, plan.slot)  # (B, H, T, Dh)


def default_block(span: int, block: int | None) -> int:
    """Query block size: explicit, or ~1/4 of the span (clamped to [16, 128]): wasted scores vs matmul size."""
    if block is not None:
        if block < 1:
            raise ValueError(f"block_size must be >= 1, got {block}")
        return block
    return int(min(128, max(16, span // 4)))


def check_grid(grid, T: int, S: int, name: str) -> tuple[int, int]:
    """Validate ``grid=(rows, cols)`` against ``T`` queries and ``S`` keys."""
    rows, cols = grid
    if rows * cols != T:
        raise ValueError(f"{name}: grid {tuple(grid)} has {rows * cols} cells but there are {T} tokens; "
                         "pass grid=(rows, cols) with rows*cols equal to the sequence length")
    if T != S:
        raise ValueError(f"{name}: 2-D attention needs as many keys as queries (got T={T}, S={S}); "
                         "cached decoding is 1-D only")
    return rows, cols
