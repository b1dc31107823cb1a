"""HaloNet blocked local self-attention (Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter
Efficient Visual Backbones").

Queries are cut into non-overlapping blocks of ``b`` tokens (2-D: ``b x b`` tiles of the grid); all
queries of a block attend to the same key window, the block grown by a halo of ``h`` on every side
(``b + 2h`` keys in 1-D, ``(b + 2h)^2`` in 2-D). Borders use ``pad_mode="mask"``: window positions
outside the sequence / grid are masked out (not zero keys). Grids or sequences not divisible by ``b``
get a partial last block whose missing queries are discarded.

HaloNet's factorised relative-position logits (``relative_logits=True``; timm's ``PosEmbedRel``): two tables
``R_h, R_w (2 W - 1, Dh)`` with ``W = b + 2h``, shared by the heads, and for a query at ``(y, x)`` and a key at
``(y', x')`` the logit ``q.k / sqrt(Dh) + q.R_h[y' - y + W - 1] + q.R_w[x' - x + W - 1]`` (the unscaled query, timm's
default ``scale_pos_embed=False``; a 1-D sequence is a one-row grid, whose row term is the same for every key
and leaves the softmax unchanged). The term depends on the query, so it is laid
out as a per-example bias of the blocked engine, whose backward gives the tables and the queries their gradient;
it holds ``B H N (b + 2h)^m`` logits, so ``recompute=True`` no longer keeps memory at ``O(N Dh)`` with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.blocked import SpanLayout, blocked_attention, cached_plan, combine_axes, context_drop
from ..engines.blocked import check_grid
from ..reference import reference_attention
from ..registry import register_attention


def halo_axis_layout(length: int, block: int, halo: int, device=None, band: bool = False) -> SpanLayout:
    """One axis: blocks ``[n b, n b + b)`` see keys ``[n b - h, n b + b + h)`` inside ``[0, length)``.

    ``band=True`` (1-D use) rounds the span up to whole blocks, masking the extra keys, so the engine
    can read spans as strided views instead of gathering them.
    """
    b = max(1, min(block, length))  # one block covering the axis is the same pattern as any larger block
    nb = -(-length // b)
    window = b + 2 * halo
    span = -(-window // b) * b if band else window
    q = torch.arange(nb * b, device=device).view(nb, b)  # (nb, b)
    k = q[:, :1] - halo + torch.arange(span, device=device)  # (nb, L)
    pattern = (torch.arange(span, device=device) < window).expand(nb, b, span)  # whole window visible
    k_pos = torch.where((k >= 0) & (k < length), k, -1)
    return SpanLayout(torch.where(q < length, q, -1), k_pos, pattern, band_base=-halo if band else None)


def halo_grid_layout(rows: int, cols: int, block: int, halo: int, device=None) -> SpanLayout:
    """Flat layout of ``block x block`` tiles with halos; a one-row grid gives the 1-D layout."""
    if rows == 1:
        return halo_axis_layout(cols, block, halo, device, band=True)
    return combine_axes(halo_axis_layout(rows, block, halo, device), halo_axis_layout(cols, block, halo, device), cols)


def halo_axis_mask(length: int, block: int, halo: int, device=None) -> Tensor:
    """Dense ``(length, length)`` keep mask of one axis: key within the query block's halo window."""
    i = torch.arange(length, device=device)
    lo = (i // block) * block - halo  # (L,) window start of each query's block
    j = i[None, :]
    return (j >= lo[:, None]) & (j < lo[:, None] + block + 2 * halo)


@register_attention("block_local")
class BlockLocalAttention(AttentionKernel):
    """HaloNet blocked local attention with halos (Vaswani et al. 2021), 1-D or 2-D (``ctx.grid``).

    Exact softmax over each block's halo window, ``pad_mode="mask"`` at borders, no relative-position
    logits. ``halo=0`` is non-overlapping block (window) attention; ``block_size >= N`` is full attention.
    Causal (an extension; HaloNet itself is non-causal): the window is further restricted to keys at or
    before the query in raster order. Time ``O(N (b + 2h)^m Dh)``, memory ``O(N (b + 2h)^m)``.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, T, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        block_size: query block side ``b`` (timm default 8).
        halo: halo width ``h`` on each side (timm default 3).
        recompute: recompute attention probabilities in backward (memory ``O(N * Dh)`` instead of
            ``O(N * span)``, ~20% slower); default keeps them.
        scale: score scale, default ``1/sqrt(Dh)``.
        relative_logits: learn HaloNet's factorised relative-position logits (see the module docstring).
        head_dim: the query size the tables are made for (filled in by the attention shell).

    Raises:
        ValueError: ``block_size < 1``, ``halo < 0``, ``relative_logits`` without ``head_dim``, a grid that does not
            match ``T``, or ``T != S`` (no cached decoding).
    """

    capabilities = Capabilities(attn_bias=False, kv_cache=False, grid_2d=True, complexity="O(N*(b+2h)^m)")

    def __init__(self, block_size: int = 8, halo: int = 3, recompute: bool = False, scale: float | None = None,
                 relative_logits: bool = False, head_dim: int | None = None):
        super().__init__(scale=scale)
        self.recompute = recompute
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        if not isinstance(halo, int) or halo < 0:
            raise ValueError(f"halo must be an int >= 0, got {halo!r}")
        self.block_size, self.halo = block_size, halo
        self.rel_h = self.rel_w = None
        if relative_logits:
            if not head_dim:
                raise ValueError("block_local relative_logits needs head_dim (the attention shell passes it)")
            rows = 2 * (block_size + 2 * halo) - 1
            self.rel_h, self.rel_w = (nn.Parameter(nn.init.trunc_normal_(torch.empty(rows, head_dim),
                                                                         std=head_dim ** -0.5)) for _ in range(2))

    def relative_logits(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, cols: int) -> Tensor:
        """``q (B, H, ..., Dh)`` at key-axis positions ``q_pos`` against keys at ``k_pos`` (broadcastable index
        tensors, ``-1`` = none) -> the relative logits ``(B, H, *broadcast shape)``; ``cols`` is the grid's width
        (a 1-D sequence: its length)."""
        W = self.block_size + 2 * self.halo
        q_pos, k_pos = q_pos.clamp(min=0), k_pos.clamp(min=0)
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32 for bf16 inputs, fp64 stays fp64
        qf = q.to(acc)

        def term(table: Tensor, offset: Tensor) -> Tensor:
            logits = qf @ table.to(acc).t()  # (B, H, ..., 2W - 1)
            idx = (offset + W - 1).clamp(0, 2 * W - 2)  # pairs outside the window are masked out anyway
            idx = idx.expand(*logits.shape[:2], *idx.shape)
            return logits.gather(-1, idx)

        dy, dx = k_pos // cols - q_pos // cols, k_pos % cols - q_pos % cols
        shape = (*q.shape[2:-1], k_pos.shape[-1])
        return term(self.rel_h, dy.expand(shape)) + term(self.rel_w, dx.expand(shape))

    def _check(self, T: int, S: int, ctx: AttentionContext) -> tuple[int, int] | None:
        if ctx.grid is not None:
            return check_grid(ctx.grid, T, S, self.name)
        if T != S:
            raise ValueError(f"{self.name}: needs as many keys as queries (got T={T}, S={S}); "
                             "it has no cached decoding, use sliding_window for that")
        return None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        grid = self._check(T, S, ctx) or (1, S)  # 1-D is a one-row grid
        plan = cached_plan(halo_grid_layout, T, S, ctx.causal, *grid, self.block_size, self.halo, q.device)
        scale = self.softmax_scale(q.shape[-1])
        bias = None
        if self.rel_h is not None:  # per-example (B, H, nb, b, L): the queries of each block against its span
            nb, b = plan.q_pos.shape
            qb = q.index_select(2, plan.q_pos.clamp(min=0).flatten() - (S - T)).view(*q.shape[:2], nb, b, -1)
            bias = self.relative_logits(qb, plan.q_pos[:, :, None], plan.k_pos[:, None, :], grid[1]).to(q.dtype)
        return blocked_attention(q, k, v, plan, context_drop(plan, ctx), scale, self.recompute, bias)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The dense map, with the relative logits when the kernel has them."""
        if self.rel_h is None:
            return super().attention_map(q, k, v, ctx)
        T, S = q.shape[2], k.shape[2]
        keep = self.full_mask(T, S, ctx, q.device)
        cols = S if ctx.grid is None else ctx.grid[1]
        pos = torch.arange(S, device=q.device)
        bias = self.relative_logits(q, pos[S - T:, None], pos[None, :], cols)  # (B, H, T, S)
        _, w = reference_attention(q, k, v, keep=keep, bias=bias.to(q.dtype), scale=self.softmax_scale(q.shape[-1]))
        return w

    def pattern_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor:
        grid = self._check(T, S, ctx)
        b, h = self.block_size, self.halo
        if grid is None:
            return halo_axis_mask(S, b, h, device)[None, None]  # (1, 1, T, S)
        rows, cols = grid
        my, mx = halo_axis_mask(rows, b, h, device), halo_axis_mask(cols, b, h, device)
        return (my[:, None, :, None] & mx[None, :, None, :]).reshape(T, S)[None, None]

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, halo={self.halo}" + (", relative_logits" if self.rel_h is not None else "")
