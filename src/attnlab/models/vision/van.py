"""VAN (Guo, Lu, Liu, Cheng & Hu 2022, "Visual Attention Network"): a convolutional hierarchy whose token mixer is a
grid attention module, large-kernel attention (LKA) by default, or any other of ``attnlab.attention.grid``.

Stage ``i`` starts with an overlapping patch embedding (``stage_embed[i] = [kernel, stride, padding]``: VAN's
``7x7`` stride 4 stem, then ``3x3`` stride 2; convolution + BatchNorm), runs ``depths[i]`` blocks and ends in a
LayerNorm over the channels. A block is

    x = x + drop_path(gamma_1 * mixer(BN(x)))
    x = x + drop_path(gamma_2 * mlp(BN(x)))          mlp: 1x1 -> depth-wise 3x3 -> GELU -> 1x1

with per-channel layer scales ``gamma`` starting at ``layer_scale`` (VAN: 1e-2; 0 = none). A *gate* module (LKA,
PSA, ULSAM) sits in VAN's spatial unit ``proj_2(gate(GELU(proj_1(x)))) + x``; a *mixer* module (ATConv) is the mixer
itself. ``grid_attention`` picks the module (one name, or one per stage); attention kernels do not apply (there are
no token-to-token weights), so ``attention=`` is refused unless left at its default.

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, H_last * W_last, C_last)`` (tokens of the last stage, row-major).
Parameter names follow the reference (``proj_1``, ``spatial_gating_unit``, ``proj_2``, ``layer_scale_1``, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.grid.registry import build_grid_attention, grid_attention_class
from ...layers.droppath import DropPath
from ..config import ModelConfig
from .cvt import conv_out
from .pixels import Classifies, check_pixels

VAN_EMBED = [[7, 4, 3], [3, 2, 1], [3, 2, 1], [3, 2, 1]]


class OverlapPatchEmbed(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, C, H', W')``: a strided, overlapping convolution and BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class ConvMlp(nn.Module):
    """``1x1 -> depth-wise 3x3 -> GELU -> 1x1`` on ``(B, C, H, W)`` (VAN's and PVTv2's MLP)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(nn.functional.gelu(self.dwconv(self.fc1(x))))))


class SpatialUnit(nn.Module):
    """VAN's attention unit around a gate: ``proj_2(gate(GELU(proj_1(x)))) + x`` on ``(B, C, H, W)``."""

    def __init__(self, dim: int, gate: nn.Module):
        super().__init__()
        self.proj_1, self.spatial_gating_unit, self.proj_2 = nn.Conv2d(dim, dim, 1), gate, nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_2(self.spatial_gating_unit(nn.functional.gelu(self.proj_1(x)))) + x


def build_mixer(name: str, dim: int, options: dict) -> nn.Module:
    """Grid module ``name`` as a token mixer: gates inside VAN's spatial unit, mixers as they are."""
    module = build_grid_attention(name, dim, **options)
    return SpatialUnit(dim, module) if grid_attention_class(name).role == "gate" else module


class GridBlock(nn.Module):
    """``x + dp(gamma_1 * mixer(BN x))``, ``x + dp(gamma_2 * mlp(BN x))`` on ``(B, C, H, W)``."""

    def __init__(self, dim: int, mixer: nn.Module, hidden: int, drop_path: float, layer_scale: float,
                 dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.BatchNorm2d(dim), mixer
        self.norm2, self.mlp = nn.BatchNorm2d(dim), ConvMlp(dim, hidden, dropout)
        self.drop_path = DropPath(drop_path)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None

    @staticmethod
    def _scaled(scale: nn.Parameter | None, x: Tensor) -> Tensor:
        return x if scale is None else scale.view(1, -1, 1, 1) * x

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self._scaled(self.layer_scale_1, self.attn(self.norm1(x))))
        return x + self.drop_path(self._scaled(self.layer_scale_2, self.mlp(self.norm2(x))))


class ConvStage(nn.Module):
    """One resolution: patch embedding, blocks, LayerNorm over the channels."""

    def __init__(self, embed: nn.Module, blocks: list[nn.Module], dim: int, eps: float):
        super().__init__()
        self.patch_embed, self.blocks, self.norm = embed, nn.ModuleList(blocks), nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last activations: oneDNN's depth-wise convolutions run ~1.8x faster on them on CPU (same values)
        x = self.patch_embed(x).contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
        B, C, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)


def stage_layout(cfg: ModelConfig, default: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Every stage's ``[kernel, stride, padding]`` embedding (``cfg.stage_embed``, else ``default``) and the side of
    its grid.

    Raises:
        ValueError: not one embedding per stage, or a stage whose embedding leaves no pixel.
    """
    embed = cfg.stage_embed or default[:len(cfg.depths)]
    if len(embed) != len(cfg.depths):
        raise ValueError(f"stage_embed needs one [kernel, stride, padding] per stage: {len(embed)} for "
                         f"{len(cfg.depths)} stages")
    sides, side = [], cfg.image_size
    for i, (k, s, p) in enumerate(embed):
        side = conv_out(side, k, s, p)
        if side < 1:
            raise ValueError(f"stage {i}'s embedding [kernel {k}, stride {s}, padding {p}] leaves no pixel of a "
                             f"{cfg.image_size}px image; use fewer stages or a larger image_size")
        sides.append(side)
    return embed, sides


class VAN(Classifies, nn.Module):
    """Visual Attention Network with any grid attention module per stage (see the module docstring).

    Config fields used: ``image_size``, ``num_channels``, ``stage_dims``, ``depths``, ``stage_embed`` (default VAN's
    stem and strided 3x3s), ``stage_mlp_ratios``, ``grid_attention`` (+ ``_options``), ``layer_scale``,
    ``drop_path``, ``dropout``, ``norm_eps`` (the stage LayerNorms), ``num_classes``.

    Raises:
        ValueError: no ``depths``/``stage_dims``, a ``stage_embed`` of the wrong length, a grid the embeddings empty,
            or channels a module cannot split (ULSAM groups, PSA's halves).
        CapabilityError: an attention kernel given with ``attention=`` (VAN mixes tokens with grid modules).
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.depths or not cfg.stage_dims:
            raise ValueError("a VAN needs depths and stage_dims (one per stage), e.g. depths=[3, 3, 5, 2] "
                             "stage_dims=[32, 64, 160, 256]")
        if cfg.attention != "softmax" or cfg.attention_options:
            raise CapabilityError(f"a VAN mixes tokens with grid attention modules, not attention kernels: set "
                                  f"grid_attention (one of lka, psa, ulsam, atconv) instead of "
                                  f"attention={cfg.attention!r}, or use uniformer/swin/cvt for attention kernels")
        embed, self.sides = stage_layout(cfg, VAN_EMBED)
        self.cfg = cfg
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        stages, first, c_in = [], 0, cfg.num_channels
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.stage_dims)):
            blocks = [GridBlock(dim, build_mixer(cfg.stage_grid_attention(i), dim, cfg.grid_attention_options),
                                int(dim * cfg.stage_mlp_ratio(i)), rates[first + j], cfg.layer_scale, cfg.dropout)
                      for j in range(depth)]
            stages.append(ConvStage(OverlapPatchEmbed(c_in, dim, *embed[i]), blocks, dim, cfg.norm_eps))
            first, c_in = first + depth, dim
        self.stages = nn.ModuleList(stages)
        self.width = cfg.stage_dims[-1]
        self.head = nn.Linear(self.width, cfg.num_classes) if cfg.num_classes else None
        self.apply(_init_van)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the last stage."""
        return self.sides[-1], self.sides[-1]

    def features(self, pixels: Tensor) -> list[Tensor]:
        """Every stage's output map ``(B, C_i, H_i, W_i)`` (for dense heads and feature inspection)."""
        check_pixels(pixels, self.cfg.num_channels, self.cfg.image_size)
        x, maps = pixels.to(self.stages[0].patch_embed.proj.weight.dtype), []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, pixels: Tensor) -> Tensor:
        return self.features(pixels)[-1].flatten(2).transpose(1, 2)

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, C_last)``: the mean over the last stage's pixels."""
        return self(pixels).mean(dim=1)

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """Raises ``CapabilityError``: a VAN's grid modules have no token-to-token attention weights."""
        raise CapabilityError("a VAN has no token-to-token attention weights (its grid modules re-weight feature "
                              "maps); use a model with attention kernels (vit, swin, cvt, uniformer ...) to see "
                              "attention maps")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_van(module: nn.Module) -> None:
    """The reference's initialisation: truncated-normal linear weights (std 0.02), fan-out normal convolutions."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
