"""UniFormer (Li et al. 2023, "UniFormer: Unifying Convolution and Self-attention for
Visual Recognition"), with any attention kernel in its global stages.

Four stages (``depths``, ``stage_dims``), each opened by a patch embedding (``stage_embed[i] = [kernel, stride,
padding]``; UniFormer: ``4x4`` stride 4, then ``2x2`` stride 2; then a LayerNorm over the channels). Every block
starts with a *dynamic position embedding* ``x + DWConv3x3(x)`` (its zero padding is the only absolute position).
Its *relation aggregator* (MHRA) is

- local in the first ``local_stages`` stages: ``x + dp(conv2(DWConv5x5(conv1(BN x))))``, a learnt, content-free
  affinity over each pixel's 5x5 neighbourhood (per channel), then ``x + dp(mlp(BN x))`` with 1x1 convolutions;
- global in the others: pre-norm self-attention over the stage's pixels, ``x + dp(attn(LN x))`` and
  ``x + dp(mlp(LN x))``, with the attention kernel of the block (``attention=``, one name for every global block, or
  a per-block schedule covering all blocks where the local stages' entries stay ``softmax``: they are unused).
  ``layer_scale > 0`` scales both branches per channel (the ``_ls`` variants, 1e-6).

A final BatchNorm, the mean over the last grid and a linear head classify. Attention runs only on the two smallest
grids (14x14 and 7x7 at 224 px), which is the design: quadratic attention where tokens are few.

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, H_last * W_last, C_last)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.droppath import DropPath
from ...layers.mlp import build_mlp
from ..config import ModelConfig
from ..transformer import collect_attention_maps
from .pixels import Classifies, check_pixels
from ..probe import kernels_serving, probe_failure
from .swin import init_linear_and_norm, stage_module
from .van import stage_layout

UNIFORMER_EMBED = [[4, 4, 0], [2, 2, 0], [2, 2, 0], [2, 2, 0]]


class ChannelNormEmbed(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, C, H', W')``: strided convolution, LayerNorm over the channels."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(c_out, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocalBlock(nn.Module):
    """UniFormer's ``CBlock`` on ``(B, C, H, W)``: position conv, local 5x5 aggregator, convolutional MLP."""

    def __init__(self, dim: int, hidden: int, drop_path: float, dropout: float):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.conv1 = nn.BatchNorm2d(dim), nn.Conv2d(dim, dim, 1)
        self.attn, self.conv2 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim), nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Dropout(dropout), nn.Conv2d(hidden, dim, 1),
                                 nn.Dropout(dropout))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalBlock(nn.Module):
    """UniFormer's ``SABlock`` on ``(B, C, H, W)``: position conv, then a pre-norm Transformer block on the pixels
    with any attention kernel (the grid is passed to grid kernels)."""

    def __init__(self, attn: MultiHeadAttention, mlp: nn.Module, dim: int, eps: float, drop_path: float,
                 layer_scale: float):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), attn
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), mlp
        self.drop_path = DropPath(drop_path)
        self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None
        self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        a = self.attn(self.norm1(t), AttentionContext(causal=False, grid=(H, W)))
        t = t + self.drop_path(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(t))
        t = t + self.drop_path(m if self.gamma_2 is None else self.gamma_2 * m)
        return t.transpose(1, 2).reshape(B, C, H, W)


class UniStage(nn.Module):
    """One resolution: patch embedding, local or global blocks, an optional grid attention module (``x + m(x)``)."""

    def __init__(self, embed: nn.Module, blocks: list[nn.Module], module: nn.Module | None = None):
        super().__init__()
        self.patch_embed, self.blocks, self.module = embed, nn.ModuleList(blocks), module

    def forward(self, x: Tensor) -> Tensor:
        # channels-last activations: faster depth-wise convolutions on CPU, and the token layout of global blocks
        x = self.patch_embed(x).contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
        return x if self.module is None else x + self.module(x)


class UniFormer(Classifies, nn.Module):
    """UniFormer: local aggregators in the shallow stages, any attention kernel in the deep ones (module docstring).

    Config fields used: ``image_size``, ``num_channels``, ``stage_dims``, ``depths``, ``stage_heads`` (heads of the
    global stages; UniFormer: width / 64), ``local_stages``, ``stage_embed``, ``stage_mlp_ratios``, ``attention``
    (+ ``_options``), ``layer_scale``, ``drop_path``, ``dropout``, ``norm_eps``, ``mlp``, ``activation``,
    ``num_classes``.

    Raises:
        ValueError: no ``depths``/``stage_dims``, ``local_stages`` beyond the stages, a width not divisible by its
            heads, a local stage given a kernel in the schedule, a grid the embeddings empty.
        CapabilityError: a kernel that cannot attend over a global stage's grid, at build time, naming those that can.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.depths or not cfg.stage_dims:
            raise ValueError("a UniFormer needs depths and stage_dims, e.g. depths=[3, 4, 8, 3] "
                             "stage_dims=[64, 128, 320, 512] stage_heads=[1, 2, 5, 8] local_stages=2")
        if cfg.local_stages > len(cfg.depths):
            raise ValueError(f"local_stages={cfg.local_stages} but the model has {len(cfg.depths)} stages")
        embed, self.sides = stage_layout(cfg, UNIFORMER_EMBED)
        self.cfg = cfg
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        stages, first, c_in = [], 0, cfg.num_channels
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.stage_dims)):
            blocks = [self._block(cfg, i, first + j, dim, rates[first + j]) for j in range(depth)]
            stages.append(UniStage(ChannelNormEmbed(c_in, dim, *embed[i], cfg.norm_eps), blocks,
                                   stage_module(cfg, i, dim)))
            first, c_in = first + depth, dim
        self.stages = nn.ModuleList(stages)
        self.width = cfg.stage_dims[-1]
        self.norm = nn.BatchNorm2d(self.width)
        self.head = nn.Linear(self.width, cfg.num_classes) if cfg.num_classes else None
        self.apply(init_linear_and_norm)
        self._check_kernels()

    def _block(self, cfg: ModelConfig, stage: int, index: int, dim: int, rate: float) -> nn.Module:
        hidden = int(dim * cfg.stage_mlp_ratio(stage))
        name, opts = cfg.layer_attention(index)
        if stage < cfg.local_stages:
            if isinstance(cfg.attention, list) and (name != "softmax" or opts):
                raise ValueError(f"block {index} is in local stage {stage} (a 5x5 depth-wise aggregator, no attention "
                                 f"kernel) but the schedule gives it {name!r}; leave local blocks at 'softmax' and put "
                                 f"kernels on the global stages' blocks (local_stages={cfg.local_stages})")
            return LocalBlock(dim, hidden, rate, cfg.dropout)
        heads = cfg.stage_heads[stage]
        if dim % heads:
            raise ValueError(f"stage {stage} is {dim} wide, not divisible by its {heads} heads; change stage_heads")
        attn = MultiHeadAttention(dim, heads, heads, kernel=name, kernel_options=opts, bias=True, dropout=cfg.dropout,
                                  max_seq_len=self.sides[stage] ** 2)
        attn.kernel.capabilities.require(attn.kernel.name, bidirectional=True)
        mlp = build_mlp(cfg.mlp, dim, hidden, cfg.activation, cfg.bias, cfg.dropout)
        return GlobalBlock(attn, mlp, dim, cfg.norm_eps, rate, cfg.layer_scale)

    def _check_kernels(self) -> None:
        """Each distinct (kernel, stage) tried once on the stage's grid, so an unfit kernel fails at build."""
        tried = set()
        for i, stage in enumerate(self.stages):
            side = self.sides[i]
            ctx = AttentionContext(causal=False, grid=(side, side))
            for block in stage.blocks:
                if not isinstance(block, GlobalBlock) or (block.attn.kernel.name, i) in tried:
                    continue
                tried.add((block.attn.kernel.name, i))
                a = block.attn
                why = probe_failure(a.kernel, a.num_heads, a.head_dim, side * side, side * side, ctx)
                if why:
                    raise CapabilityError(f"attention {a.kernel.name!r} cannot serve UniFormer stage {i} "
                                          f"(self-attention on the {side}x{side} grid: {why}); kernels that can: "
                                          f"{kernels_serving(side * side, side * side, ctx)}")

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the last stage."""
        return self.sides[-1], self.sides[-1]

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.cfg.num_channels, self.cfg.image_size)
        x = pixels.to(self.stages[0].patch_embed.proj.weight.dtype)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x).flatten(2).transpose(1, 2)

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, C_last)``: the mean over the last stage's pixels."""
        return self(pixels).mean(dim=1)

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """Per global block ``(B, heads, T, T)`` maps over its stage's pixels (local blocks have none).

        Raises:
            CapabilityError: a kernel without attention weights, or a model with no global stage.
        """
        shells = [b.attn for s in self.stages for b in s.blocks if isinstance(b, GlobalBlock)]
        if not shells:
            raise CapabilityError("this UniFormer has only local stages (local_stages = the number of stages): no "
                                  "attention maps; lower local_stages")
        return collect_attention_maps(shells, lambda: self(pixels))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
