"""Faithfulness of an explanation, measured: deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE:
Randomized Input Sampling for Explanation of Black-box Models").

Patches are ranked by an explanation's relevance. *Deletion* replaces them with a baseline image (e.g. black), most
relevant first, and follows the model's probability for its original prediction: a faithful ranking makes it fall
fast (low area under the curve). *Insertion* starts from the baseline and puts the patches back in the same order:
a faithful ranking makes the probability rise fast (high area). The area is the trapezoid rule over the fraction of
patches, so both lie in [0, 1]; a random ranking is the reference every explanation should beat.

Shapes: ``pixels (B, C, H, W)``, ``relevance (B, rows * cols)`` (row-major patches), curves ``(B, steps + 1)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def patch_index(size: tuple[int, int], grid: tuple[int, int], device=None) -> Tensor:
    """``(H, W)`` long: the row-major patch each pixel lies in (patches cover the image evenly, as in the overlays)."""
    (H, W), (rows, cols) = size, grid
    r = torch.clamp(torch.arange(H, device=device) * rows // H, max=rows - 1)
    c = torch.clamp(torch.arange(W, device=device) * cols // W, max=cols - 1)
    return r[:, None] * cols + c[None, :]


def perturbation_curve(score: Callable[[Tensor], Tensor], pixels: Tensor, relevance: Tensor, grid: tuple[int, int],
                       baseline: Tensor, mode: str = "deletion", steps: int | None = None) -> Tensor:
    """``(B, steps + 1)`` scores as the patches are removed (``deletion``) or added (``insertion``) in the order of
    ``relevance`` (most relevant first; ties by patch index), ``steps`` even stages (default: one patch each).

    Args:
        score: ``(B, C, H, W)`` -> ``(B,)``, e.g. the probability of each image's original prediction.
        baseline: broadcastable to ``pixels``: what a removed patch shows.

    Raises:
        ValueError: unknown mode, relevance not ``(B, rows * cols)``, steps outside ``1..rows * cols``.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    B, n = pixels.shape[0], grid[0] * grid[1]
    if tuple(relevance.shape) != (B, n):
        raise ValueError(f"relevance must be (batch, {n}) for a {grid[0]}x{grid[1]} grid, got {tuple(relevance.shape)}")
    steps = n if steps is None else steps
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in 1..{n}, got {steps}")
    # rank of every patch (0 = most relevant); a stable sort keeps ties in patch order
    order = torch.sort(-relevance.float(), dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(B, n))
    pixel_rank = rank.gather(1, patch_index(pixels.shape[-2:], grid, pixels.device).flatten()[None].expand(B, -1))
    pixel_rank = pixel_rank.view(B, 1, *pixels.shape[-2:])
    base = baseline.expand_as(pixels)
    out = []
    for k in torch.linspace(0, n, steps + 1).round().long().tolist():
        chosen = pixel_rank < k  # the k most relevant patches
        x = torch.where(chosen, base, pixels) if mode == "deletion" else torch.where(chosen, pixels, base)
        out.append(score(x))
    return torch.stack(out, dim=1)


def area_under_curve(curve: Tensor) -> Tensor:
    """``(B, K + 1)`` -> ``(B,)``: the trapezoid rule over ``K`` equal steps of [0, 1]."""
    return torch.trapezoid(curve.float(), dx=1.0 / (curve.shape[1] - 1), dim=1)
