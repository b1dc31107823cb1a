"""Attentive Convolution, ATConv (the AttNet paper, 2025: "Attentive Convolution: Unifying the Expressivity of
Self-Attention with Convolutional Efficiency").

A ``k x k`` depth-wise convolution whose kernels are generated per sample and per channel from the input (adaptive
routing), minus a learnt share of their mean (lateral inhibition: the taps compete):

1. ``kappa = kernel_proj(x)`` (``1 x 1`` convolution), flattened row-major to ``(B, C, HW)``;
2. adaptive average pooling of that sequence to ``k^2`` contiguous bins (row-major bins, not 2-D cells, as the
   reference does), ``GELU``, a ``k^2 -> k^2`` linear map shared by the channels: ``(B, C, k, k)``;
3. ``kappa - sigmoid(lambda_c) * mean(kappa)`` with ``lambda`` (one per channel) starting at 0 (a factor of 0.5);
4. ``proj(dwconv_kappa(x_proj(x)))``, the per-sample depth-wise convolution run as one grouped convolution with
   ``B * C`` groups, padding ``k // 2``.

``difference_control`` (``lambda``) is 1-D, so the optimiser does not decay it, as in the reference.

Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``; ``O(HW C^2 + HW C k^2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_grid_attention


@register_grid_attention("atconv")
class AttentiveConvolution(nn.Module):
    """Input-generated, laterally inhibited depth-wise convolution (see the module docstring).

    Raises:
        ValueError: an even ``kernel_size`` (the output would shift by half a pixel).
    """

    role = "mixer"

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"ATConv needs an odd kernel_size to stay centred, got {kernel_size}")
        self.kernel_size = kernel_size
        self.kernel_proj = nn.Conv2d(channels, channels, 1)
        self.kernel_gen = nn.Linear(kernel_size ** 2, kernel_size ** 2)
        self.difference_control = nn.Parameter(torch.zeros(channels))
        self.x_proj, self.proj = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)

    def kernels(self, x: Tensor) -> Tensor:
        """``(B, C, k, k)``: every sample's and channel's depth-wise kernel, after lateral inhibition."""
        B, C, _, _ = x.shape
        k = self.kernel_size
        kappa = F.adaptive_avg_pool1d(self.kernel_proj(x).flatten(2), k * k)     # (B, C, k^2)
        kappa = self.kernel_gen(F.gelu(kappa))
        kappa = kappa - torch.sigmoid(self.difference_control).view(1, C, 1) * kappa.mean(-1, keepdim=True)
        return kappa.view(B, C, k, k)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        kernels = self.kernels(x).reshape(B * C, 1, self.kernel_size, self.kernel_size)
        v = self.x_proj(x).reshape(1, B * C, H, W)
        y = F.conv2d(v, kernels, padding=self.kernel_size // 2, groups=B * C)
        return self.proj(y.view(B, C, H, W))
