"""Normalisation layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..native.pointwise import add_layer_norm_bf16, autocast_bf16_cpu, layer_norm_bf16


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis; shape-preserving ``(..., D)``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one fused op (a decoding step runs dozens of norms)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


class MatmulInputLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose output only feeds matmuls (pre-norm blocks): under bf16 autocast on CPU it is
    computed by attnlab's native kernel straight to bf16, the dtype the matmul takes (PyTorch writes fp32
    and casts in a second pass, and casts the gradient back in backward; :mod:`attnlab.native.pointwise`).
    Otherwise, and when the kernel is unavailable, it is ``nn.LayerNorm``. Same parameters and state dict."""

    def _native(self, x: Tensor) -> bool:
        """fp32 residual stream under bf16 autocast: the native kernel may run (it declines what it cannot)."""
        return x.dtype == torch.float32 and len(self.normalized_shape) == 1 and autocast_bf16_cpu()

    def forward(self, x: Tensor) -> Tensor:
        y = layer_norm_bf16(x, self.weight, self.bias, self.eps) if self._native(x) else None
        return super().forward(x) if y is None else y

    def add_and_norm(self, x: Tensor, branch: Tensor) -> tuple[Tensor, Tensor]:
        """``(x + branch, self(x + branch))``: a pre-norm block's residual add and this norm, in one native
        pass under bf16 autocast (fp32 residual stream ``x``, bf16 ``branch``)."""
        fused = add_layer_norm_bf16(x, branch, self.weight, self.bias, self.eps) if self._native(x) else None
        if fused is not None:
            return fused
        x = x + branch
        return x, self(x)


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


def build_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True, feeds_matmul: bool = False) -> nn.Module:
    """``kind`` in :data:`NORMS`; ``bias`` only applies to LayerNorm. ``feeds_matmul``: the output is only
    used as a matmul input (pre-norm blocks), so LayerNorm may return bf16 under bf16 autocast
    (:class:`MatmulInputLayerNorm`)."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; valid: {sorted(NORMS)}")
    if kind == "layernorm":
        return (MatmulInputLayerNorm if feeds_matmul else nn.LayerNorm)(dim, eps=eps, bias=bias)
    return RMSNorm(dim, eps=eps)
