"""ULSAM, the ultra-lightweight subspace attention module (Saini, Jha, Das, Mittal & Mohan 2020, "ULSAM:
Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks").

The channels are split into ``groups`` subspaces; each learns one spatial attention map and re-weights its own
feature maps with a residual: for subspace ``F_n (B, C/g, H, W)``,
``t = MaxPool3x3(ReLU(BN(DW1x1(F_n))))``, ``A_n = softmax_HW(ReLU(BN(Conv1x1_{C/g -> 1}(t))))``,
``F_n * A_n + F_n``; the subspaces are concatenated back. About ``5C + 3g`` parameters. The reference's BatchNorm
momentum 0.9 (a TensorFlow-convention slip: PyTorch weights the new batch by it) is ``bn_momentum``, 0.1 by default.

Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``; ``C`` divisible by ``groups``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_grid_attention


class SubSpace(nn.Module):
    """One subspace's attention map and residual re-weighting, on ``(B, c, H, W)``."""

    def __init__(self, channels: int, bn_momentum: float):
        super().__init__()
        self.conv_dws = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn_dws = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.maxpool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv_point = nn.Conv2d(channels, 1, 1)
        self.bn_point = nn.BatchNorm2d(1, momentum=bn_momentum)

    def attention(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W)``: the subspace's map, summing to 1 over the pixels."""
        t = self.maxpool(torch.relu(self.bn_dws(self.conv_dws(x))))
        a = torch.relu(self.bn_point(self.conv_point(t)))
        B, _, H, W = a.shape
        return torch.softmax(a.flatten(1), dim=-1).view(B, 1, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x) + x


@register_grid_attention("ulsam")
class ULSAM(nn.Module):
    """Subspace attention over ``groups`` channel groups (see the module docstring).

    Raises:
        ValueError: ``channels`` not divisible by ``groups``.
    """

    role = "gate"

    def __init__(self, channels: int, groups: int = 4, bn_momentum: float = 0.1):
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"ULSAM splits channels={channels} into groups={groups} subspaces: choose groups "
                             f"dividing the channels, e.g. {[g for g in (1, 2, 4, 8, 16) if channels % g == 0]}")
        self.groups = groups
        self.subspaces = nn.ModuleList(SubSpace(channels // groups, bn_momentum) for _ in range(groups))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.chunk(x, self.groups, dim=1)
        return torch.cat([sub(part) for sub, part in zip(self.subspaces, parts)], dim=1)
