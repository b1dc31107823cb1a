"""Axial attention on a 2-D token grid (Ho et al. 2019, "Axial Attention in Multidimensional
Transformers"; Wang et al. 2020, Axial-DeepLab).

Row attention lets each token attend to its own row, column attention to its own column, at
``O(N (rows + cols))`` cost. ``mode`` picks how one kernel call uses them:

- ``"sequential"`` (default, "rows then columns"): ``out = A_col (A_row V)``: the column pass attends
  with the same ``q, k`` over the *row outputs*, so one call reaches the whole grid. The effective
  attention map ``A_col @ A_row`` is row-stochastic but not a single softmax, so the kernel is
  approximate (``exact=False``); :meth:`attention_weights` returns that product.
- ``"sum"``: ``out = A_row V + A_col V`` (lucidrains ``sum_axial_out=True``).
- ``"row"`` / ``"column"``: one axis only, exact softmax attention (building blocks of the Axial
  Transformer: unmasked row + masked column layers, then masked row layers).

Causal (``ctx.causal``): both passes are causal along their own axis (keys ``x' <= x`` in the row,
``y' <= y`` in the column), as the Axial Transformer's masked row / masked column layers. A sequential
causal call therefore reaches exactly the quadrant ``y' <= y, x' <= x``, a subset of the raster-order
past; the full raster context of the Axial Transformer comes from its shift operations at model level.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.blocked import SpanLayout, blocked_attention, cached_plan, combine_axes, context_drop
from ..masks import context_mask
from ..engines.blocked import check_grid
from ..reference import expand_kv_heads, reference_attention
from ..registry import register_attention

MODES = ("sequential", "sum", "row", "column")


def _whole_axis(length: int, device=None) -> SpanLayout:
    """One block holding the whole axis: every position sees every position."""
    pos = torch.arange(length, device=device)[None]  # (1, L)
    return SpanLayout(pos, pos, torch.ones(1, length, length, dtype=torch.bool, device=device))


def _same_position(length: int, device=None) -> SpanLayout:
    """One block per position, seeing only itself along this axis."""
    pos = torch.arange(length, device=device)[:, None]  # (L, 1)
    return SpanLayout(pos, pos, torch.ones(length, 1, 1, dtype=torch.bool, device=device))


def axis_layout(axis: str, rows: int, cols: int, device=None) -> SpanLayout:
    """Flat layout of row attention (``axis="row"``) or column attention (``"column"``)."""
    if axis == "row":  # blocks = rows, span = the row
        return combine_axes(_same_position(rows, device), _whole_axis(cols, device), cols)
    return combine_axes(_whole_axis(rows, device), _same_position(cols, device), cols)


def axis_mask(axis: str, rows: int, cols: int, device=None) -> Tensor:
    """Dense ``(T, T)`` keep mask: same row (``"row"``) or same column (``"column"``)."""
    idx = torch.arange(rows * cols, device=device)
    key = idx // cols if axis == "row" else idx % cols
    return key[:, None] == key[None, :]


@register_attention("axial")
class AxialAttention(AttentionKernel):
    """Axial attention along rows then columns of ``ctx.grid`` (Ho et al. 2019); see the module doc.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, T, Dh)`` with ``T = rows * cols`` -> ``(B, H, T, Dh)``.

    Args:
        mode: ``"sequential"`` (default), ``"sum"``, ``"row"`` or ``"column"``.
        recompute: recompute attention probabilities in backward (memory ``O(N * Dh)`` instead of
            ``O(N * span)``, ~20% slower); default keeps them.
        scale: score scale, default ``1/sqrt(Dh)``.

    Raises:
        ValueError: unknown ``mode``; a grid that does not match ``T``; ``T != S`` (no cached decoding).
        CapabilityError: called without ``ctx.grid``.
    """

    capabilities = Capabilities(attn_bias=False, kv_cache=False, grid_2d=True, requires_grid=True,
                                exact=False, complexity="O(N*(rows+cols))")

    def __init__(self, mode: str = "sequential", recompute: bool = False, scale: float | None = None):
        super().__init__(scale=scale)
        self.recompute = recompute
        if mode not in MODES:
            raise ValueError(f"axial mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if mode in ("row", "column"):  # a single axis is exact softmax attention under its mask
            self.capabilities = replace(type(self).capabilities, exact=True)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        rows, cols = check_grid(ctx.grid, q.shape[2], k.shape[2], self.name)
        scale = self.softmax_scale(q.shape[-1])

        def attend(axis: str, values: Tensor, keys: Tensor) -> Tensor:
            T = rows * cols
            plan = cached_plan(axis_layout, T, T, ctx.causal, axis, rows, cols, q.device)
            return blocked_attention(q, keys, values, plan, context_drop(plan, ctx), scale, self.recompute)

        if self.mode in ("row", "column"):
            return attend(self.mode, v, k)
        row_out = attend("row", v, k)  # (B, H, T, Dh)
        if self.mode == "sum":
            return row_out + attend("column", v, k)
        # the column pass reads the per-head row outputs, so K is expanded to the H query heads
        return attend("column", row_out, expand_kv_heads(k, q.shape[1]))

    def pattern_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor:
        """Keys that can influence a query: its row / column / both (``sum``) / all (``sequential``)."""
        rows, cols = check_grid(ctx.grid, T, S, self.name)
        if self.mode in ("row", "column"):
            return axis_mask(self.mode, rows, cols, device)[None, None]
        if self.mode == "sum":
            return (axis_mask("row", rows, cols, device) | axis_mask("column", rows, cols, device))[None, None]
        return torch.ones(1, 1, T, S, dtype=torch.bool, device=device)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """``(B, H, T, S)`` effective map ``W`` with ``forward(q, k, v) == W @ v`` (dense, for inspection)."""
        rows, cols = check_grid(ctx.grid, q.shape[2], k.shape[2], self.name)
        base = context_mask(ctx, q.shape[2], k.shape[2], q.device)

        def weights(axis: str) -> Tensor:
            keep = axis_mask(axis, rows, cols, q.device)[None, None]
            keep = keep if base is None else keep & base
            return reference_attention(q, k, v, keep=keep, scale=self.softmax_scale(q.shape[-1]))[1]

        if self.mode in ("row", "column"):
            return weights(self.mode)
        if self.mode == "sum":
            return weights("row") + weights("column")
        return weights("column") @ weights("row")  # (B, H, T, T)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
