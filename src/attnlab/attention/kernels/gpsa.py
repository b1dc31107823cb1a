"""ConViT gated positional self-attention (GPSA) on a 2-D token grid.

d'Ascoli et al. 2021, "ConViT: Improving Vision Transformers with Soft Convolutional Inductive
Biases" (official code ``facebookresearch/convit``, ``convit.py``: ``GPSA``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import MixingMapKernel
from ..capabilities import Capabilities, CapabilityError
from ..context import AttentionContext
from ..masks import context_mask
from ..reference import expand_kv_heads, masked_softmax
from ..registry import register_attention


def relative_indices(rows: int, cols: int, device=None) -> Tensor:
    """``(N, N, 3)`` float, ``N = rows*cols`` row-major: ``(dx, dy, dx^2 + dy^2)`` with ``d = key - query``
    (``dx`` along columns, ``dy`` along rows), as ConViT's ``get_rel_indices`` for square grids."""
    r = torch.arange(rows, device=device).repeat_interleave(cols)  # (N,) row of each token
    c = torch.arange(cols, device=device).repeat(rows)  # (N,) column of each token
    dx = (c[None, :] - c[:, None]).float()  # (N, N)
    dy = (r[None, :] - r[:, None]).float()
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)


def local_init_(pos_proj: nn.Linear, num_heads: int, locality_strength: float) -> None:
    """ConViT ``local_init``: head ``h1 + k*h2`` on a ``k x k`` grid (``k = floor(sqrt(H))``) peaks at
    offset ``(dx, dy) = (h2 - c, h1 - c)``: weights ``alpha * (2(h2-c), 2(h1-c), -1)``. Heads beyond
    ``k^2`` keep their random init (also scaled by ``alpha``, as the reference); the bias stays 0."""
    k = int(num_heads ** 0.5)
    center = (k - 1) / 2 if k % 2 == 0 else k // 2
    with torch.no_grad():
        for h1 in range(k):
            for h2 in range(k):
                w = pos_proj.weight[h1 + k * h2]
                w[0], w[1], w[2] = 2.0 * (h2 - center), 2.0 * (h1 - center), -1.0
        pos_proj.weight.mul_(locality_strength)  # all heads, as the reference


@register_attention("gpsa")
class GatedPositionalSelfAttention(MixingMapKernel):
    """ConViT gated positional self-attention (d'Ascoli et al. 2021) on a row-major ``(rows, cols)`` grid.

    ``C_h = softmax(q k^T / sqrt(Dh))`` (content), ``P_h = softmax(v_h . r_ij + b_h)`` (positional, from
    relative offsets ``r_ij = (dx, dy, dx^2 + dy^2)``), ``A_h = (1 - g_h) C_h + g_h P_h`` with
    ``g_h = sigmoid(lambda_h)``, renormalised by its row sum; output ``A V``. A padding or document mask
    masks both softmaxes before mixing; fully masked rows give 0.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, T, Dh)`` with ``T = rows*cols`` -> ``(B, H, T, Dh)``.
    Class/register tokens must not be in the grid (ConViT appends the class token after its GPSA layers).
    ConViT also initialises the value projection to the identity: that lives in the shell, see
    :func:`init_value_identity_`.

    Args:
        locality_strength: ``alpha`` of the local initialisation (ConViT default 1).
        local_init: apply the local initialisation (default True).
        gate_init: initial ``lambda`` (1, so the gate starts at ``sigmoid(1) ~ 0.73``, mostly positional).
        scale: content score scale, default ``1/sqrt(Dh)``.
        num_heads: structural (filled in by the shell).

    Raises:
        CapabilityError: no ``ctx.grid``, causal use, or ``rows*cols != T`` (prefix tokens, KV cache).
        ValueError: a head count differing from the construction.
    """

    capabilities = Capabilities(causal=False, kv_cache=False, attn_bias=False, grid_2d=True,
                                requires_grid=True, exact=False, complexity="O(N^2)")

    def __init__(self, locality_strength: float = 1.0, local_init: bool = True, gate_init: float = 1.0,
                 scale: float | None = None, num_heads: int = 4):
        super().__init__(scale=scale)
        self.num_heads = num_heads
        self.pos_proj = nn.Linear(3, num_heads)  # (dx, dy, d^2) -> one positional logit per head
        nn.init.trunc_normal_(self.pos_proj.weight, std=0.02)
        nn.init.zeros_(self.pos_proj.bias)
        if local_init:
            local_init_(self.pos_proj, num_heads, locality_strength)
        self.gating_param = nn.Parameter(torch.full((num_heads,), float(gate_init)))
        self._rel: dict[tuple, Tensor] = {}

    def rel_indices(self, grid: tuple[int, int], device) -> Tensor:
        key = (grid, str(device))
        if key not in self._rel:
            self._rel = {key: relative_indices(grid[0], grid[1], device)}  # rebuilt when the grid changes
        return self._rel[key]

    def mixing_weights(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> Tensor:
        """The gated map ``A (B, H, T, T)``; rows sum to 1 (0 for fully masked rows)."""
        B, H, T, D = q.shape
        rows, cols = ctx.grid
        if rows * cols != T or k.shape[2] != T:
            raise CapabilityError(
                f"gpsa: grid {ctx.grid} has {rows * cols} cells but got {T} queries and {k.shape[2]} keys; "
                "pass grid=(rows, cols) with rows*cols == tokens: no class/prefix token (ConViT appends it after "
                "its GPSA layers; in a ViT use pooling='mean') and no KV cache"
            )
        if H != self.num_heads:
            raise ValueError(f"gpsa was built for num_heads={self.num_heads}, got q with {H} heads")
        keep = context_mask(ctx, T, T, q.device)
        k = expand_kv_heads(k, H)  # (B, H, T, Dh)
        content = masked_softmax(torch.einsum("bhtd,bhsd->bhts", q, k).float() * self.softmax_scale(D), keep)
        pos_scores = self.pos_proj(self.rel_indices(ctx.grid, q.device)).permute(2, 0, 1)[None]  # (1, H, T, T)
        positional = masked_softmax(pos_scores.float(), keep)
        g = torch.sigmoid(self.gating_param).view(1, H, 1, 1)
        attn = (1.0 - g) * content + g * positional  # (B, H, T, T)
        total = attn.sum(-1, keepdim=True)
        return attn / torch.where(total > 0, total, torch.ones_like(total))



def init_value_identity_(model: nn.Module) -> int:
    """ConViT's ``W_v <- I`` for every attention shell running GPSA (square ``v_proj`` only).

    Returns the number of shells initialised.
    """
    n = 0
    for m in model.modules():
        kernel = getattr(m, "kernel", None)
        v_proj = getattr(m, "v_proj", None)
        if isinstance(kernel, GatedPositionalSelfAttention) and v_proj is not None:
            if v_proj.weight.shape[0] == v_proj.weight.shape[1]:
                with torch.no_grad():
                    v_proj.weight.copy_(torch.eye(v_proj.weight.shape[0]))
                    if v_proj.bias is not None:
                        v_proj.bias.zero_()
                n += 1
    return n
