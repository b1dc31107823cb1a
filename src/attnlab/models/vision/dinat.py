"""DiNAT (Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer") on the Swin-style hierarchy, with any
attention kernel.

NAT/DiNAT keep Swin's four-stage layout but replace its parts: an overlapping *convolutional tokenizer* (two
``3x3`` stride-2 convolutions, then LayerNorm: a ``4x`` smaller grid), a *convolutional downsampler* between stages
(``3x3`` stride 2 without bias, then LayerNorm, doubling the width) instead of patch merging, and neighbourhood
attention instead of windows: with the ``neighborhood`` kernel (the default of the presets) even blocks of a stage
attend to their ``k x k`` neighbourhood and odd blocks to a *dilated* one, dilation ``max(1, side // k)`` on a grid
of side ``side`` (224 px and ``k = 7``: 8, 4, 2, 1 per stage, DiNAT's schedule), so local and sparse global context
alternate. A grid smaller than the kernel shrinks it (to the largest odd size that fits). Any other bidirectional
kernel (``attention=`` one name, or one per block) gets the stage's grid instead.

Neighbourhood blocks learn NAT's relative position bias (``relative_bias``, on unless the options turn it off).
Not here: layer scale (off in DiNAT's smaller variants).

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, dim * 2^(stages-1))``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from .cvt import conv_out
from .swin import Swin
from .pixels import check_pixels


class ConvTokenizer(nn.Module):
    """``pixels (B, C, H, W)`` -> ``(B, rows * cols, dim)``: two ``3x3`` stride-2 convolutions (``dim / 2`` then
    ``dim`` channels), LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.image_size, self.num_channels = cfg.image_size, cfg.num_channels
        self.proj = nn.Sequential(nn.Conv2d(cfg.num_channels, cfg.dim // 2, 3, stride=2, padding=1),
                                  nn.Conv2d(cfg.dim // 2, cfg.dim, 3, stride=2, padding=1))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.num_channels, self.image_size)
        x = self.proj(pixels.to(self.proj[0].weight.dtype))
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, rows * cols, dim)


class ConvDownsampler(nn.Module):
    """``(B, rows * cols, C)`` -> ``(B, rows' * cols', 2C)``: ``3x3`` stride-2 convolution without bias, LayerNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=eps)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, _, C = x.shape
        x = self.reduction(x.transpose(1, 2).reshape(B, C, *grid))
        return self.norm(x.flatten(2).transpose(1, 2))


class DiNAT(Swin):
    """Swin-style hierarchy with a convolutional tokenizer and downsampler and (dilated) neighbourhood attention.

    Config fields as :class:`Swin`, plus ``window_size`` as the neighbourhood kernel size ``k`` (7 in DiNAT); a
    ``neighborhood`` block's own ``kernel_size`` / ``dilation`` options win over the schedule.

    Raises:
        ValueError: no ``depths``, widths not divisible by their heads, an odd ``dim`` (the tokenizer halves it).
        CapabilityError: a kernel that cannot attend bidirectionally on a stage grid, at build time.
    """

    def __init__(self, cfg: ModelConfig):
        if cfg.dim % 2:
            raise ValueError(f"DiNAT's tokenizer has dim / 2 channels in between: dim={cfg.dim} must be even")
        super().__init__(cfg)

    def _embed(self, cfg: ModelConfig) -> nn.Module:
        return ConvTokenizer(cfg)

    def _grids(self, cfg: ModelConfig) -> list[tuple[int, int]]:
        side = conv_out(conv_out(cfg.image_size, 3, 2, 1), 3, 2, 1)
        grids = []
        for _ in cfg.depths:
            grids.append((side, side))
            side = conv_out(side, 3, 2, 1)
        return grids

    def _downsample(self, width: int, eps: float) -> nn.Module:
        return ConvDownsampler(width, eps)

    def _attention(self, cfg: ModelConfig, stage: int, j: int, index: int) -> tuple[str, dict, int]:
        name, opts = cfg.layer_attention(index)
        if name == "neighborhood":
            side = min(self.grids[stage])
            k = min(cfg.window_size, side if side % 2 else side - 1)
            schedule = {"kernel_size": k, "dilation": 1 if j % 2 == 0 or k == 1 else max(1, side // k),
                        "relative_bias": True}  # NAT/DiNAT's relative position bias
            opts = {**schedule, **opts}
        return name, opts, 1
