"""Swin Transformer (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"),
with any attention kernel in any stage.

The image is cut into ``patch_size`` patches (a strided convolution and a LayerNorm; pixels are zero-padded
right/bottom to a multiple of the patch, as Hugging Face does); stage ``i`` runs ``depths[i]`` pre-norm blocks of
width ``dim * 2^i`` with ``stage_heads[i]`` heads, then *patch merging* concatenates each 2x2 neighbourhood
(``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``), normalises the 4C channels and projects them to
2C. A final LayerNorm and the mean over tokens give the pooled representation.

Attention: with the ``window`` kernel (the default schedule of the Swin presets), block ``j`` of a stage attends
inside ``M x M`` windows, shifted by ``M // 2`` in odd blocks; when the stage grid is at most ``M`` on a side
the window shrinks to it and nothing shifts; a grid that is not a multiple of ``M`` is zero-padded after the
block's first norm and cropped after the attention (Hugging Face's semantics: padded tokens are attended to).
Any other kernel (``attention=`` one name, or one per block over all stages) gets the stage's grid instead.

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, dim * 2^(stages-1))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.droppath import DropPath
from ...layers.mlp import build_mlp
from ...native.linear import Linear
from ..config import ModelConfig
from ..transformer import collect_attention_maps
from .pixels import Classifies, check_pixels


def stage_grids(cfg: ModelConfig) -> list[tuple[int, int]]:
    """The token grid of every stage: ``ceil(image / patch)``, then halved (rounding up) at each merge."""
    side = math.ceil(cfg.image_size / cfg.patch_size)
    grids = []
    for _ in cfg.depths:
        grids.append((side, side))
        side = math.ceil(side / 2)
    return grids


class PatchEmbed(nn.Module):
    """``pixels (B, C, H, W)`` -> ``(B, rows * cols, dim)``: padded to whole patches, strided conv, LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch, self.image_size, self.num_channels = cfg.patch_size, cfg.image_size, cfg.num_channels
        self.proj = nn.Conv2d(cfg.num_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.num_channels, self.image_size)
        pad = -self.image_size % self.patch
        x = F.pad(pixels.to(self.proj.weight.dtype), (0, pad, 0, pad))
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, rows * cols, dim)


class PatchMerging(nn.Module):
    """``(B, rows * cols, C)`` -> ``(B, ceil(rows/2) * ceil(cols/2), 2C)``: 2x2 neighbourhoods concatenated
    (odd sides zero-padded), LayerNorm(4C), a linear map to 2C without bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, _, C = x.shape
        rows, cols = grid
        x = x.view(B, rows, cols, C)
        if rows % 2 or cols % 2:  # (a pad of zeros would still copy)
            x = F.pad(x, (0, 0, 0, cols % 2, 0, rows % 2))
        rows, cols = x.shape[1] // 2, x.shape[2] // 2
        # cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1) as one permuted copy:
        # (B, rows, dr, cols, dc, C) -> (B, rows, cols, dc, dr, C). The backward is one copy too, where four
        # strided slices each zero-fill and copy a full-size gradient and autograd sums the four.
        x = x.reshape(B, rows, 2, cols, 2, C).permute(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(B, rows * cols, 4 * C)))


class SwinBlock(nn.Module):
    """Pre-norm block ``x + drop(attn(LN(x)))``, ``x + drop(mlp(LN(x)))`` on a grid; ``pad_to`` pads the normed
    grid to a multiple (window attention) before the attention and crops after it."""

    def __init__(self, attn: MultiHeadAttention, mlp: nn.Module, dim: int, eps: float, drop_path: float, pad_to: int):
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(dim, eps=eps), attn
        self.mlp_norm, self.mlp = nn.LayerNorm(dim, eps=eps), mlp
        self.drop_path, self.pad_to = DropPath(drop_path), pad_to

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, T, C = x.shape
        rows, cols = grid
        h = self.attn_norm(x)
        pad_r, pad_c = -rows % self.pad_to, -cols % self.pad_to
        if pad_r or pad_c:
            h = F.pad(h.view(B, rows, cols, C), (0, 0, 0, pad_c, 0, pad_r)).view(B, -1, C)
        padded = (rows + pad_r, cols + pad_c)
        h = self.attn(h, AttentionContext(causal=False, grid=padded))
        if pad_r or pad_c:
            h = h.view(B, *padded, C)[:, :rows, :cols].reshape(B, T, C)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class Stage(nn.Module):
    """The blocks of one resolution, an optional grid attention module (``x + module(x)`` on the grid), then patch
    merging (all stages but the last)."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None, module: nn.Module | None = None):
        super().__init__()
        self.blocks, self.downsample, self.module = nn.ModuleList(blocks), downsample, module

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        for block in self.blocks:
            x = block(x, grid)
        if self.module is not None:
            B, T, C = x.shape
            fmap = x.transpose(1, 2).reshape(B, C, *grid)
            x = x + self.module(fmap).flatten(2).transpose(1, 2)
        return x if self.downsample is None else self.downsample(x, grid)


class Swin(Classifies, nn.Module):
    """Hierarchical image model: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, C_last)`` (see the module docstring).

    Config fields used: ``image_size``, ``patch_size``, ``num_channels``, ``dim`` (stage-1 width), ``depths``,
    ``stage_heads``, ``window_size``, ``attention`` (one name or one per block), ``attention_options``,
    ``mlp_dim`` ratio (``4 * width`` by default), ``activation``, ``norm_eps``, ``drop_path``, ``dropout``,
    ``num_classes`` (0 = no head).

    Raises:
        ValueError: no ``depths``, or widths not divisible by their stage's heads.
        CapabilityError: a kernel that cannot attend bidirectionally, at build time (naming those that can).
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.depths:
            raise ValueError("a Swin model needs depths (blocks per stage) and stage_heads, e.g. depths=[2, 2, 6, 2] "
                             "stage_heads=[3, 6, 12, 24]")
        self.cfg = cfg
        self.patch_embed = self._embed(cfg)
        self.grids = self._grids(cfg)
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        stages, first = [], 0
        for i, depth in enumerate(cfg.depths):
            width = cfg.dim * 2 ** i
            blocks = [self._block(cfg, i, j, first + j, width, rates[first + j]) for j in range(depth)]
            last = i == len(cfg.depths) - 1
            stages.append(Stage(blocks, None if last else self._downsample(width, cfg.norm_eps),
                                stage_module(cfg, i, width)))
            first += depth
        self.stages = nn.ModuleList(stages)
        self.width = cfg.dim * 2 ** (len(cfg.depths) - 1)
        self.norm = nn.LayerNorm(self.width, eps=cfg.norm_eps)
        self.head = nn.Linear(self.width, cfg.num_classes) if cfg.num_classes else None
        self.apply(init_linear_and_norm)

    # the parts a Swin-style hierarchy may change (DiNAT: convolutional tokenizer and downsampler, dilations)
    def _embed(self, cfg: ModelConfig) -> nn.Module:
        return PatchEmbed(cfg)

    def _grids(self, cfg: ModelConfig) -> list[tuple[int, int]]:
        return stage_grids(cfg)

    def _downsample(self, width: int, eps: float) -> nn.Module:
        return PatchMerging(width, eps)

    def _attention(self, cfg: ModelConfig, stage: int, j: int, index: int) -> tuple[str, dict, int]:
        """Kernel name, options and the multiple the block pads its grid to (window attention: the window)."""
        name, opts = cfg.layer_attention(index)
        pad_to = 1
        if name == "window":
            fixed = sorted({"window_size", "shift"} & set(opts))
            if fixed:  # Swin sets both per block; a kernel option would be silently replaced
                raise ValueError(f"Swin sets the window kernel's window_size (from model.window_size={cfg.window_size},"
                                 f" clamped to small grids) and shift (every other block); remove {fixed} from "
                                 "attention_options and set model.window_size instead")
            m = min(cfg.window_size, *self.grids[stage])  # a grid at most M on a side: one window, no shift
            shift = 0 if j % 2 == 0 or min(self.grids[stage]) <= cfg.window_size else m // 2
            opts, pad_to = {**opts, "window_size": m, "shift": shift}, m
        return name, opts, pad_to

    def _block(self, cfg: ModelConfig, stage: int, j: int, index: int, width: int, rate: float) -> SwinBlock:
        heads = cfg.stage_heads[stage]
        if width % heads:
            raise ValueError(f"stage {stage} is {width} wide, not divisible by its {heads} heads; change stage_heads")
        name, opts, pad_to = self._attention(cfg, stage, j, index)
        attn = MultiHeadAttention(width, heads, heads, kernel=name, kernel_options=opts, bias=cfg.bias,
                                  dropout=cfg.dropout, max_seq_len=self._padded_tokens(stage, pad_to))
        attn.kernel.capabilities.require(attn.kernel.name, bidirectional=True)
        mlp = build_mlp(cfg.mlp, width, cfg.mlp_dim // cfg.dim * width if cfg.mlp_dim else 4 * width,
                        cfg.activation, cfg.bias, cfg.dropout)
        return SwinBlock(attn, mlp, width, cfg.norm_eps, rate, pad_to)

    def _padded_tokens(self, stage: int, pad_to: int) -> int:
        rows, cols = self.grids[stage]
        return (rows + -rows % pad_to) * (cols + -cols % pad_to)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the last stage."""
        return self.grids[-1]

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embed(pixels)
        for stage, grid in zip(self.stages, self.grids):
            x = stage(x, grid)
        return self.norm(x)

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, C_last)``: the mean over the last stage's tokens."""
        return self(pixels).mean(dim=1)

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """Per block ``(B, heads, T, T)`` attention maps (``T`` the stage's padded grid), through each kernel's
        reference path.

        Raises:
            CapabilityError: a kernel that has no attention weights.
        """
        return collect_attention_maps([b.attn for s in self.stages for b in s.blocks], lambda: self(pixels))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def stage_module(cfg: ModelConfig, stage: int, width: int) -> nn.Module | None:
    """The grid attention module ``cfg.stage_modules`` puts after ``stage`` (``None`` for none)."""
    from ...attention.grid import build_grid_attention

    name = cfg.stage_modules[stage] if cfg.stage_modules else ""
    return build_grid_attention(name, width, **cfg.grid_attention_options) if name else None


def init_linear_and_norm(module: nn.Module) -> None:
    """Truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms (the Swin reference)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
