"""CvT (Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers"), with any attention kernel.

Three ideas on a hierarchy of stages: each stage starts with a *convolutional token embedding* (an overlapping
strided convolution with bias, then LayerNorm), its blocks take q, k and v through *convolutional projections*
(a depth-wise 3x3 convolution and BatchNorm on the token grid, then the usual linear projection; k and v use
stride ``kv_stride``, so they carry about ``kv_stride^2`` times fewer tokens), and there is no position
embedding: position enters through the zero-padded convolutions. A class token exists in the last stage only
(``pooling="cls"``); it bypasses the convolutions and is put in front of q, k and v.

Scores are ``q k^T C^-1/2`` with ``C`` the stage width, not the head width (CvT's reference code and Hugging
Face's), passed to the kernel as its ``scale`` option.

Which kernels fit where: with ``kv_stride > 1`` the keys live on another, coarser grid than the queries, so a
block is cross-attention between two sequences (``ctx.cross``) and needs a kernel that declares cross-attention;
with ``kv_stride == 1`` it is self-attention on the stage's grid and every bidirectional kernel (the grid ones
too, in stages without a class token) serves. A kernel that cannot is a :class:`CapabilityError` at build time.

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, C_last)`` after the final LayerNorm (token 0 is the class
token when there is one). BatchNorm makes training and eval differ and a batch of one degenerate in training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ...attention.registry import attention_options
from ...attention.shell import MultiHeadAttention
from ...layers.droppath import DropPath
from ...layers.mlp import build_mlp
from ..config import ModelConfig
from .pixels import Classifies, check_pixels
from ..probe import kernels_serving, probe_failure
from ..transformer import collect_attention_maps
from .swin import init_linear_and_norm


def conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution: ``floor((n + 2p - k) / s) + 1``."""
    return (n + 2 * padding - kernel) // stride + 1


class ConvEmbed(nn.Module):
    """``(B, C_in, H, W)`` -> tokens ``(B, H' * W', C)`` (row-major) and the grid ``(H', W')``: conv + LayerNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(c_out, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)  # (B, C, H', W')
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[2], x.shape[3])


class ConvProjection(nn.Module):
    """Depth-wise ``3x3`` convolution (no bias, padding 1, ``stride``) and BatchNorm:
    ``(B, C, H, W)`` -> ``(B, H' * W', C)``."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=stride, padding=1, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, fmap: Tensor) -> Tensor:
        return self.bn(self.conv(fmap)).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """CvT's convolutional-projection attention around a kernel: ``x (B, P + H*W, C)`` -> ``(B, P + H*W, C)``, the
    ``P`` prefix (class) tokens first. Parameters ``conv_q/k/v`` and the shell's ``q/k/v/out_proj``."""

    def __init__(self, width: int, heads: int, kernel: str, options: dict, kv_stride: int, bias: bool,
                 dropout: float, max_seq_len: int):
        super().__init__()
        self.kv_stride = kv_stride
        self.conv_q, self.conv_k, self.conv_v = ConvProjection(width, 1), *(ConvProjection(width, kv_stride)
                                                                            for _ in range(2))
        if "scale" in attention_options(kernel):
            options = {"scale": width ** -0.5, **options}  # CvT scales by the stage width (a user value wins)
        self.attn = MultiHeadAttention(width, heads, heads, kernel=kernel, kernel_options=options, bias=bias,
                                       dropout=dropout, max_seq_len=max_seq_len)

    def context(self, grid: tuple[int, int]) -> AttentionContext:
        """Self-attention on the grid (``kv_stride == 1``), else cross-attention to the strided key grid."""
        return AttentionContext(causal=False, grid=grid) if self.kv_stride == 1 else AttentionContext(cross=True)

    def forward(self, x: Tensor, grid: tuple[int, int], prefix: int) -> Tensor:
        B, T, C = x.shape
        shell = self.attn
        fmap = x[:, prefix:].transpose(1, 2).reshape(B, C, *grid)  # (B, C, rows, cols)
        ins = [torch.cat([x[:, :prefix], conv(fmap)], dim=1) for conv in (self.conv_q, self.conv_k, self.conv_v)]
        q = shell.split_heads(shell.q_proj(ins[0]), shell.num_heads)  # (B, H, T, Dh)
        k = shell.split_heads(shell.k_proj(ins[1]), shell.num_heads)  # (B, H, S, Dh)
        v = shell.split_heads(shell.v_proj(ins[2]), shell.num_heads)
        ctx = self.context(grid)
        out = shell.kernel(q, k, v, ctx)  # (B, H, T, Dh)
        return shell.dropout(shell.out_proj(out.transpose(1, 2).reshape(B, T, C)))


class CvtBlock(nn.Module):
    """Pre-norm ``x + drop(attn(LN x))``, ``x + drop(mlp(LN x))``."""

    def __init__(self, attn: ConvAttention, mlp: nn.Module, width: int, eps: float, drop_path: float):
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(width, eps=eps), attn
        self.mlp_norm, self.mlp = nn.LayerNorm(width, eps=eps), mlp
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, grid: tuple[int, int], prefix: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.attn_norm(x), grid, prefix))
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class CvtStage(nn.Module):
    """Convolutional token embedding, the class token (last stage with ``pooling="cls"``), the blocks."""

    def __init__(self, embed: ConvEmbed, blocks: list[CvtBlock], cls_token: bool, width: int):
        super().__init__()
        self.embed, self.blocks = embed, nn.ModuleList(blocks)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_token else None


class CvT(Classifies, nn.Module):
    """Hierarchical convolution-attention image model: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, C_last)``.

    Config fields used: ``image_size``, ``num_channels``, ``stage_dims`` (widths), ``depths``, ``stage_heads``,
    ``stage_embed`` (``[kernel, stride, padding]`` of each stage's token embedding), ``kv_stride``, ``pooling``
    ("cls": a class token in the last stage; "mean"), ``attention`` (one name or one per block over all stages),
    ``attention_options``, ``mlp_dim`` (a ratio of ``dim``: 4x by default), ``activation``, ``norm_eps``,
    ``drop_path`` (linear over all blocks), ``dropout``, ``bias`` (q/k/v), ``num_classes`` (0 = no head).

    Raises:
        ValueError: missing or inconsistent stage lists, widths not divisible by their heads, an image too small
            for the embeddings, images of the wrong shape.
        CapabilityError: a kernel that cannot serve a block (cross-attention to the strided keys, a class token on
            a grid kernel), at build time, naming the kernels that can.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = len(cfg.depths)
        if not n or len(cfg.stage_dims) != n or len(cfg.stage_embed) != n:
            raise ValueError(f"a CvT needs one entry per stage in depths, stage_heads, stage_dims and stage_embed "
                             f"([kernel, stride, padding]); got depths={cfg.depths} stage_dims={cfg.stage_dims} "
                             f"stage_embed={cfg.stage_embed}")
        self.cfg = cfg
        self.grids = self._grids(cfg)
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        stages, first, c_in = [], 0, cfg.num_channels
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.stage_dims)):
            cls = cfg.pooling == "cls" and i == n - 1
            embed = ConvEmbed(c_in, width, *cfg.stage_embed[i], eps=cfg.norm_eps)
            blocks = [self._block(cfg, i, first + j, width, cls, rates[first + j]) for j in range(depth)]
            stages.append(CvtStage(embed, blocks, cls, width))
            first, c_in = first + depth, width
        self.stages = nn.ModuleList(stages)
        self.width = cfg.stage_dims[-1]
        self.norm = nn.LayerNorm(self.width, eps=cfg.norm_eps)
        self.head = nn.Linear(self.width, cfg.num_classes) if cfg.num_classes else None
        self.apply(_init)
        self._check_kernels()

    @staticmethod
    def _grids(cfg: ModelConfig) -> list[tuple[int, int]]:
        side, grids = cfg.image_size, []
        for i, (k, s, p) in enumerate(cfg.stage_embed):
            side = conv_out(side, k, s, p)
            if side < 1:
                raise ValueError(f"a {cfg.image_size}px image leaves no tokens after stage {i}'s embedding "
                                 f"(kernel {k}, stride {s}, padding {p}); use a larger image_size or smaller strides")
            grids.append((side, side))
        return grids

    def _block(self, cfg: ModelConfig, stage: int, index: int, width: int, cls: bool, rate: float) -> CvtBlock:
        heads = cfg.stage_heads[stage]
        if width % heads:
            raise ValueError(f"stage {stage} is {width} wide, not divisible by its {heads} heads; change stage_heads")
        name, opts = cfg.layer_attention(index)
        rows, cols = self.grids[stage]
        attn = ConvAttention(width, heads, name, opts, cfg.kv_stride, cfg.bias, cfg.dropout,
                             max_seq_len=rows * cols + int(cls))
        ratio = cfg.mlp_dim / cfg.dim if cfg.mlp_dim else 4
        mlp = build_mlp(cfg.mlp, width, int(ratio * width), cfg.activation, True, cfg.dropout)
        return CvtBlock(attn, mlp, width, cfg.norm_eps, rate)

    def _check_kernels(self) -> None:
        """Each distinct (kernel, stage) tried once on a tiny input of the block's real context, so a kernel that
        cannot serve fails here, naming the kernels that can, instead of at the first forward."""
        tried = set()
        for i, stage in enumerate(self.stages):
            prefix = 0 if stage.cls_token is None else 1
            rows, cols = self.grids[i]
            for block in stage.blocks:
                attn, kernel = block.attn, block.attn.attn.kernel
                if (kernel.name, i) in tried:
                    continue
                tried.add((kernel.name, i))
                kv = conv_out(rows, 3, attn.kv_stride, 1) * conv_out(cols, 3, attn.kv_stride, 1) + prefix
                ctx = attn.context((rows, cols))
                why = probe_failure(kernel, attn.attn.num_heads, attn.attn.head_dim, rows * cols + prefix, kv, ctx)
                if why:
                    place = (f"cross-attention from the {rows}x{cols} grid to its stride-{attn.kv_stride} keys"
                             if ctx.cross else f"self-attention on the {rows}x{cols} grid"
                             + (" with a class token" if prefix else ""))
                    raise CapabilityError(
                        f"attention {kernel.name!r} cannot serve CvT stage {i} ({place}: {why}); kernels that can: "
                        f"{kernels_serving(rows * cols + prefix, kv, ctx)}"
                        + ("; or set kv_stride=1 (self-attention on the grid)" if ctx.cross else ""))

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the last stage."""
        return self.grids[-1]

    def forward(self, pixels: Tensor) -> Tensor:
        cfg = self.cfg
        check_pixels(pixels, cfg.num_channels, cfg.image_size)
        x = pixels.to(self.stages[0].embed.proj.weight.dtype)
        for i, stage in enumerate(self.stages):
            x, grid = stage.embed(x)  # (B, rows * cols, C)
            prefix = 0
            if stage.cls_token is not None:
                x, prefix = torch.cat([stage.cls_token.expand(x.shape[0], -1, -1), x], dim=1), 1
            for block in stage.blocks:
                x = block(x, grid, prefix)
            if i < len(self.stages) - 1:
                x = x.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, C, rows, cols) for the next embedding
        return self.norm(x)

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, C_last)``: the class token (``pooling="cls"``) or the mean over the last stage's tokens."""
        h = self(pixels)
        return h[:, 0] if self.cfg.pooling == "cls" else h.mean(dim=1)

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """Per block ``(B, heads, T, S)`` maps (``S`` the strided key tokens), through each kernel's reference path.

        Raises:
            CapabilityError: a kernel that has no attention weights.
        """
        shells = [b.attn.attn for s in self.stages for b in s.blocks]
        return collect_attention_maps(shells, lambda: self(pixels))

    def key_layout(self) -> tuple[int, int, int]:
        """``(kernel, stride, padding)`` of the convolution that makes keys and values from a stage's grid: where
        each key of an attention map sits on the query grid (``attnlab viz`` places strided keys with it)."""
        conv = self.stages[0].blocks[0].attn.conv_k.conv
        return conv.kernel_size[0], self.cfg.kv_stride, conv.padding[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear and convolution weights, zero biases (CvT's reference and Hugging Face's);
    unit LayerNorms; class tokens truncated-normal."""
    if isinstance(module, nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, CvtStage) and module.cls_token is not None:
        nn.init.trunc_normal_(module.cls_token, std=0.02)
    else:
        init_linear_and_norm(module)
