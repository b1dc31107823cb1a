"""Large Kernel Attention (Guo, Lu, Liu, Cheng & Hu 2022, "Visual Attention Network").

A large ``K x K`` convolution split into a ``5 x 5`` depth-wise convolution, a ``7 x 7`` depth-wise convolution with
dilation 3 and a ``1 x 1`` convolution, whose output multiplies the input: ``LKA(x) = x * conv1(dw_d(dw(x)))``. The
paper names the decomposition after ``K = 21``; composed, the two depth-wise convolutions reach ``5 + 6 * 3 = 23``
pixels on a side (tested), at ``HW * C * (25 + 49 + C)`` multiply-adds: linear in the number of pixels.

Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``. Parameter names follow the reference (``conv0``, ``conv_spatial``,
``conv1``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_grid_attention


@register_grid_attention("lka")
class LargeKernelAttention(nn.Module):
    """``x * conv1(conv_spatial(conv0(x)))`` (see the module docstring).

    Args:
        channels: ``C``.
        kernel_size: side of the dense depth-wise convolution (5 in VAN).
        dilated_kernel_size: side of the dilated depth-wise convolution (7 in VAN).
        dilation: its dilation (3 in VAN).

    Raises:
        ValueError: an even kernel side (the output would shift).
    """

    role = "gate"

    def __init__(self, channels: int, kernel_size: int = 5, dilated_kernel_size: int = 7, dilation: int = 3):
        super().__init__()
        if kernel_size % 2 == 0 or dilated_kernel_size % 2 == 0:
            raise ValueError(f"LKA needs odd kernel sides to keep the grid centred, got {kernel_size} and "
                             f"{dilated_kernel_size}")
        self.conv0 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.conv_spatial = nn.Conv2d(channels, channels, dilated_kernel_size, dilation=dilation,
                                      padding=dilation * (dilated_kernel_size // 2), groups=channels)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))
