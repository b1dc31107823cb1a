"""Polarized Self-Attention (Liu, Liu, Fan & Huang 2021, "Polarized Self-Attention: Towards High-quality
Pixel-wise Regression").

Two branches, each keeping ``C / 2`` channels inside and ending in softmax-then-sigmoid:

- channel-only: ``V = W_v x (C/2 x HW)``, ``q = softmax_HW(W_q x) (HW x 1)``, ``z = V q``,
  ``A_ch = sigmoid(LN_C(W_z z)) (C x 1 x 1)``: space collapsed, a gate per channel;
- spatial-only: ``Q = softmax_C/2(GAP(W_q' x)) (1 x C/2)``, ``V' = W_v' x (C/2 x HW)``,
  ``A_sp = sigmoid(Q V') (1 x H x W)``: channels collapsed, a gate per pixel.

``parallel``: ``A_ch * x + A_sp(x) * x``; ``sequential``: ``z = A_ch * x``, then ``A_sp(z) * z``. This is the paper's
form (all projections ``1 x 1`` convolutions with bias, LayerNorm over the ``C`` channel logits); the authors'
segmentation code drops the LayerNorm and biases and moves a softmax, variants not reproduced here.

Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``; ``C`` even.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_grid_attention


@register_grid_attention("psa")
class PolarizedSelfAttention(nn.Module):
    """Channel-only and spatial-only polarized branches, ``parallel`` or ``sequential`` (see the module docstring).

    Raises:
        ValueError: an odd ``channels`` (each branch keeps half), or an unknown ``layout``.
    """

    role = "gate"

    def __init__(self, channels: int, layout: str = "parallel"):
        super().__init__()
        if channels % 2:
            raise ValueError(f"polarized self-attention keeps channels / 2 inside: channels={channels} must be even")
        if layout not in ("parallel", "sequential"):
            raise ValueError(f"psa layout must be 'parallel' or 'sequential', got {layout!r}")
        half = channels // 2
        self.layout = layout
        self.ch_wv, self.ch_wq = nn.Conv2d(channels, half, 1), nn.Conv2d(channels, 1, 1)
        self.ch_wz, self.ln = nn.Conv2d(half, channels, 1), nn.LayerNorm(channels)
        self.sp_wv, self.sp_wq = nn.Conv2d(channels, half, 1), nn.Conv2d(channels, half, 1)

    def channel_gate(self, x: Tensor) -> Tensor:
        """``A_ch``: ``(B, C, 1, 1)`` in ``(0, 1)``."""
        B, C, H, W = x.shape
        v = self.ch_wv(x).flatten(2)                                     # (B, C/2, HW)
        q = torch.softmax(self.ch_wq(x).flatten(2), dim=-1)              # (B, 1, HW)
        z = (v @ q.transpose(1, 2)).unsqueeze(-1)                        # (B, C/2, 1, 1)
        logits = self.ln(self.ch_wz(z).flatten(1))                       # (B, C): LayerNorm over the channels
        return torch.sigmoid(logits).view(B, C, 1, 1)

    def spatial_gate(self, x: Tensor) -> Tensor:
        """``A_sp``: ``(B, 1, H, W)`` in ``(0, 1)``."""
        B, _, H, W = x.shape
        q = torch.softmax(self.sp_wq(x).mean(dim=(2, 3)), dim=-1)        # (B, C/2): GAP, softmax over channels
        v = self.sp_wv(x).flatten(2)                                     # (B, C/2, HW)
        return torch.sigmoid((q.unsqueeze(1) @ v).view(B, 1, H, W))

    def forward(self, x: Tensor) -> Tensor:
        z = self.channel_gate(x) * x
        if self.layout == "sequential":
            return self.spatial_gate(z) * z
        return z + self.spatial_gate(x) * x
