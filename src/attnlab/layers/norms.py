"""Normalisation layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis; shape-preserving ``(..., D)``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


def build_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """``kind`` in :data:`NORMS`; ``bias`` only applies to LayerNorm."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; valid: {sorted(NORMS)}")
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    return RMSNorm(dim, eps=eps)
