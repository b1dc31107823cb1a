"""Neighborhood attention (NA) and dilated neighborhood attention (DiNA) with NATTEN semantics.

Hassani et al. 2023, "Neighborhood Attention Transformer" (CVPR); Hassani & Shi 2022, "Dilated
Neighborhood Attention Transformer".

Per axis of length ``L`` with odd kernel ``k`` and dilation ``d``, query ``i`` lives in dilation group
``g = i mod d`` at in-group index ``i' = i // d``; the group has ``L_g = ceil((L - g) / d)`` members and
``r = k // 2``. Non-causal: window centre ``c = clamp(i', r, L_g - 1 - r)``, neighbours
``{(c - r + t) d + g : t < k}`` (the window is shifted inward at borders, never truncated). Causal:
``{j = i mod d : 0 <= i' - j' <= k - 1}`` (early queries see fewer keys). 2-D is the Cartesian product
of the row and column sets.

Relative position bias (``relative_bias=True``, NAT/DiNAT's RPB): a learned table ``(H, 2k_y - 1, 2k_x - 1)``;
the pair (query ``i``, key ``j``) adds ``table[h, (j_y - i_y) / d_y + k_y - 1, (j_x - i_x) / d_x + k_x - 1]``
(offsets in dilation-group units; at borders the window shifts inward, so offsets reach ``k - 1`` on one side,
which the ``2k - 1`` table covers: NATTEN's indexing). 1-D uses the middle row of the table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import AttentionKernel
from ..cache import RollingKVCache
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.blocked import (
    SpanLayout,
    blocked_attention,
    cached_plan,
    check_grid,
    combine_axes,
    context_drop,
    default_block,
)
from ..registry import register_attention

DEFAULT_KERNEL = 7  # DiNAT's kernel size


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(x, int) for x in pair):
        raise ValueError(f"{name} must be an int or a pair of ints (rows, cols), got {value!r}")
    return pair


def check_axis(length: int, kernel_size: int, dilation: int, axis: str = "sequence") -> None:
    """Raise ``ValueError`` unless ``kernel_size * dilation <= length`` (NATTEN's requirement)."""
    if kernel_size * dilation > length:
        raise ValueError(
            f"neighborhood: kernel_size*dilation = {kernel_size}*{dilation} = {kernel_size * dilation} "
            f"exceeds the {axis} length {length}; use a smaller kernel_size or dilation "
            f"(largest valid dilation here: {max(1, length // kernel_size)}) or a longer input"
        )


def neighbor_window(i: Tensor, length: int, kernel_size: int, dilation: int, causal: bool) -> tuple[Tensor, Tensor]:
    """Closed form of the NATTEN window per query position ``i``.

    Returns ``(start, group)``: in-group index of the first neighbour and the dilation group; the
    neighbours are ``(start + t) * dilation + group`` for ``t < kernel_size`` (causal: those ``>= 0``).
    """
    r = kernel_size // 2
    g, ii = i % dilation, i // dilation
    if causal:
        return ii - (kernel_size - 1), g
    lg = (length - g + dilation - 1) // dilation  # members of the group
    return torch.minimum(torch.clamp(ii - r, min=0), lg - kernel_size), g


def na_axis_layout(length: int, first: int, kernel_size: int, dilation: int, causal: bool,
                   block: int, device=None) -> SpanLayout:
    """Blocked layout along one axis: per dilation group, runs of ``b`` consecutive group members share
    a span of ``b + k - 1`` group members starting at the first query's window start."""
    d, k = dilation, kernel_size
    g = torch.arange(d, device=device)  # (d,)
    lg = (length - g + d - 1) // d  # (d,) group sizes
    q0 = torch.clamp(-((g - first) // d), min=0)  # (d,) first in-group index at or after `first`
    nq = int((lg - q0).max())
    b = max(1, min(block, nq))
    nb = -(-nq // b)
    qi = q0[:, None, None] + torch.arange(nb * b, device=device).view(1, nb, b)  # (d, nb, b) in-group
    start, _ = neighbor_window(qi * d + g[:, None, None], length, k, d, causal)  # (d, nb, b)
    ki = start[:, :, :1] + torch.arange(b + k - 1, device=device)  # (d, nb, L) in-group keys
    st = start[..., None]  # (d, nb, b, 1)
    pattern = (ki[:, :, None, :] >= st) & (ki[:, :, None, :] < st + k)  # (d, nb, b, L)
    q_pos = torch.where(qi < lg[:, None, None], qi * d + g[:, None, None], -1)
    k_ok = (ki >= 0) & (ki < lg[:, None, None])
    k_pos = torch.where(k_ok, ki * d + g[:, None, None], -1)
    L = ki.shape[-1]
    return SpanLayout(q_pos.reshape(d * nb, b), k_pos.reshape(d * nb, L), pattern.reshape(d * nb, b, L))


def na_grid_layout(rows: int, cols: int, kernel: tuple[int, int], dilation: tuple[int, int], causal: bool,
                   block: int, device=None) -> SpanLayout:
    """2-D layout: ``block x block`` query tiles (per dilation group) with their neighbourhood spans."""
    lay_y = na_axis_layout(rows, 0, kernel[0], dilation[0], causal, block, device)
    lay_x = na_axis_layout(cols, 0, kernel[1], dilation[1], causal, block, device)
    return combine_axes(lay_y, lay_x, cols)


def na_axis_mask(length: int, kernel_size: int, dilation: int, causal: bool, device=None) -> Tensor:
    """Dense ``(length, length)`` keep mask of one axis (for the reference path and tests)."""
    i = torch.arange(length, device=device)
    start, g = neighbor_window(i, length, kernel_size, dilation, causal)
    j = torch.arange(length, device=device)[None, :]
    jj = j // dilation
    same = (j % dilation) == g[:, None]
    return same & (jj >= start[:, None]) & (jj < start[:, None] + kernel_size)  # (L, L)


@register_attention("neighborhood")
class NeighborhoodAttention(AttentionKernel):
    """Neighborhood / dilated neighborhood attention (Hassani et al. 2023; Hassani & Shi 2022), NATTEN rule.

    1-D over the sequence, or 2-D over a row-major grid when ``ctx.grid=(rows, cols)`` is given. Exact
    softmax over each query's ``kernel_size`` (2-D: ``ky * kx``) neighbours; without RPB. Causal
    (NATTEN ``is_causal``): 1-D keeps group members ``0 <= i' - j' < k``; 2-D applies that per axis, so
    a query sees the window quadrant above-left of it. Time ``O(N k^m Dh)``, memory ``O(N k^m)``
    (``O(N Dh)`` with ``recompute=True``); never an ``N x N`` matrix.
    Causal 1-D decoding uses a rolling cache of ``(k - 1) d + 1`` keys (the pattern is shift-invariant).

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        kernel_size: odd int (or ``(ky, kx)`` for 2-D); neighbours per axis. Default ``None``: 7
            (DiNAT), or, non-causal on an axis too short for it, the largest odd ``k`` with
            ``k * d <= length``. An explicit size is never changed: a too-long one raises.
        dilation: int (or pair) >= 1; DiNA when > 1.
        block_size: queries per block along each axis (default: derived from the kernel); speed only.
        recompute: recompute attention probabilities in backward (memory ``O(N * Dh)`` instead of
            ``O(N * span)``, ~20% slower); default keeps them.
        scale: score scale, default ``1/sqrt(Dh)``.
        relative_bias: learn NAT's relative position bias table (needs an explicit ``kernel_size``).

    Raises:
        ValueError: even or non-positive ``kernel_size``, ``relative_bias`` without ``kernel_size``,
            ``dilation < 1``, ``kernel_size * dilation``
            larger than the axis (non-causal only: causal windows are never shifted), a grid that does
            not match ``T``, or 2-D decoding (``T != S``).
    """

    capabilities = Capabilities(attn_bias=False, grid_2d=True, complexity="O(N*k^m)")

    def __init__(self, kernel_size: int | tuple[int, int] | None = None, dilation: int | tuple[int, int] = 1,
                 block_size: int | None = None, recompute: bool = False, scale: float | None = None,
                 relative_bias: bool = False, num_heads: int = 1):
        super().__init__(scale=scale)
        self.recompute = recompute
        self.dilation = _pair(dilation, "dilation")
        if min(self.dilation) < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation!r}")
        self.kernel_size = None if kernel_size is None else _pair(kernel_size, "kernel_size")
        for k in self.kernel_size or ():
            if k < 1 or k % 2 == 0:
                hint = f"{k - 1} (or {k + 1} if the grid has room)" if k > 1 else "1"  # the smaller always fits
                raise ValueError(f"kernel_size must be odd and >= 1 (NATTEN v1 rule), got {kernel_size!r}; "
                                 f"try {hint}")
        self.block_size = block_size
        self.block_1d = default_block((self.kernel_size or (DEFAULT_KERNEL,) * 2)[1], block_size)
        self.block_2d = block_size if block_size is not None else 8
        self.rel_bias = None
        if relative_bias:
            if self.kernel_size is None:
                raise ValueError("neighborhood relative_bias needs an explicit kernel_size (the table is "
                                 "(2k - 1) wide per axis), e.g. kernel_size=7")
            ky, kx = self.kernel_size
            self.rel_bias = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 2 * ky - 1, 2 * kx - 1),
                                                               std=0.02))

    def _kernel(self, axis: int, length: int, causal: bool) -> int:
        """Kernel size on ``axis`` (0 rows, 1 cols / 1-D): explicit, or the default (fitted if non-causal)."""
        if self.kernel_size is not None:
            return self.kernel_size[axis]
        if causal:  # causal windows are never shifted, so any length works (and decoding stays consistent)
            return DEFAULT_KERNEL
        fit = max(1, length // self.dilation[axis])  # largest k with k * d <= length ...
        return min(DEFAULT_KERNEL, fit if fit % 2 else fit - 1)  # ... made odd

    def _plan(self, T: int, S: int, ctx: AttentionContext, device):
        dy, dx = self.dilation
        if ctx.grid is None:
            kx = self._kernel(1, S, ctx.causal)
            if not ctx.causal:  # causal windows are never shifted, so short inputs are fine
                check_axis(S, kx, dx)
            return cached_plan(na_axis_layout, T, S, ctx.causal, S, S - T, kx, dx, ctx.causal, self.block_1d, device)
        rows, cols = check_grid(ctx.grid, T, S, self.name)
        ky, kx = self._kernel(0, rows, ctx.causal), self._kernel(1, cols, ctx.causal)
        if not ctx.causal:
            check_axis(rows, ky, dy, "grid row-axis")
            check_axis(cols, kx, dx, "grid column-axis")
        return cached_plan(na_grid_layout, T, S, ctx.causal, rows, cols, (ky, kx), (dy, dx), ctx.causal,
                           self.block_2d, device)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        plan = self._plan(q.shape[2], k.shape[2], ctx, q.device)
        scale = self.softmax_scale(q.shape[-1])
        bias = None
        if self.rel_bias is not None:
            self._check_heads(q.shape[1])
            idx = self._bias_index(plan.q_pos[:, :, None], plan.k_pos[:, None, :], ctx)  # (nb, b, L)
            bias = self.rel_bias.flatten(1)[:, idx].to(q.dtype)  # (H, nb, b, L)
        return blocked_attention(q, k, v, plan, context_drop(plan, ctx), scale, self.recompute, bias)

    def _check_heads(self, heads: int) -> None:
        if heads != self.rel_bias.shape[0]:
            raise ValueError(f"neighborhood: the relative bias table has {self.rel_bias.shape[0]} heads but q has "
                             f"{heads}; build the kernel with num_heads={heads}")

    def _bias_index(self, q_pos: Tensor, k_pos: Tensor, ctx: AttentionContext) -> Tensor:
        """Row of the flattened bias table of each (query, key) pair (key-axis positions, broadcast); pairs that
        are not neighbours get some valid row (they are masked out)."""
        ky, kx = self.kernel_size
        dy, dx = self.dilation
        q_pos, k_pos = q_pos.clamp(min=0), k_pos.clamp(min=0)  # -1 marks padding slots
        if ctx.grid is None:
            oy, ox = torch.zeros_like(k_pos - q_pos), torch.div(k_pos - q_pos, dx, rounding_mode="floor")
        else:
            cols = ctx.grid[1]
            oy = torch.div(k_pos // cols - q_pos // cols, dy, rounding_mode="floor")
            ox = torch.div(k_pos % cols - q_pos % cols, dx, rounding_mode="floor")
        oy, ox = (oy + ky - 1).clamp(0, 2 * ky - 2), (ox + kx - 1).clamp(0, 2 * kx - 2)
        return oy * (2 * kx - 1) + ox

    def pattern_bias(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        """``(1, H, T, S)`` dense relative bias (zero off the neighbourhoods, where the pattern masks anyway)."""
        if self.rel_bias is None:
            return None
        q_pos = torch.arange(S - T, S, device=device)[:, None]  # bottom-right aligned queries
        idx = self._bias_index(q_pos, torch.arange(S, device=device)[None, :], ctx)  # (T, S)
        keep = self.pattern_mask(T, S, ctx, device)[0, 0]
        return torch.where(keep, self.rel_bias.flatten(1)[:, idx], 0.0)[None]

    def pattern_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor:
        dy, dx = self.dilation
        if ctx.grid is None:
            kx = self._kernel(1, S, ctx.causal)
            if not ctx.causal:
                check_axis(S, kx, dx)
            return na_axis_mask(S, kx, dx, ctx.causal, device)[S - T:][None, None]  # (1, 1, T, S)
        rows, cols = check_grid(ctx.grid, T, S, self.name)
        ky, kx = self._kernel(0, rows, ctx.causal), self._kernel(1, cols, ctx.causal)
        if not ctx.causal:
            check_axis(rows, ky, dy, "grid row-axis")
            check_axis(cols, kx, dx, "grid column-axis")
        my = na_axis_mask(rows, ky, dy, ctx.causal, device)  # (rows, rows)
        mx = na_axis_mask(cols, kx, dx, ctx.causal, device)  # (cols, cols)
        full = my[:, None, :, None] & mx[None, :, None, :]  # (rows, cols, rows, cols)
        return full.reshape(T, S)[None, None]

    def new_cache(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                  device=None, dtype=None):
        """Causal 1-D decoding needs only the last ``(k - 1) * d + 1`` keys."""
        window = ((self.kernel_size or (DEFAULT_KERNEL,) * 2)[1] - 1) * self.dilation[1] + 1
        return RollingKVCache(batch_size, num_kv_heads, head_dim, window=window, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}"
