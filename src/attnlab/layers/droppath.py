"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"): drop a sample's residual branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DropPath(nn.Module):
    """In training, zero each sample's branch ``(B, ...)`` with probability ``p`` and scale the kept ones by
    ``1 / (1 - p)``; the identity in eval mode or for ``p = 0``.

    Raises:
        ValueError: ``p`` outside [0, 1).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
