"""SReT (Shen et al. 2022, "Sliced Recursive Transformer"), with any attention kernel.

Weights are shared across depth: each unique block of a stage is applied ``loops`` times in a row (``depths`` counts
applications, so a stage has ``depths[s] / loops`` unique blocks), and a small non-shared *NLL* block (LayerNorm and
an MLP of ``np_mlp_ratio`` times the width, no attention) follows every application. Every residual add has
learnable scalar coefficients (``x <- a1 x + a2 f(LN x)``, all 1 at init). To pay for the recursion, attention is
*sliced*: the tokens are cut into ``G`` contiguous groups that attend within themselves (``groups[s]`` on a block's
first application, ``recursive_groups[s]`` on the later ones, where the tokens are first shuffled by one random
permutation shared across the batch and put back after; in eval the permutation is the identity unless
``permute_in_eval``, the reference's behaviour). Unshuffled groups of whole grid rows keep a grid, so grid kernels
serve there; shuffled ones have none.

Around the stages: a convolutional stem (``stage_embed``: ``[kernel, stride, padding]`` per conv, each followed by
BatchNorm and ReLU; channels ``dim / 2`` then ``dim``) and a learned position map, depth-wise-multiplier
convolutions (``3x3``, stride 2, ``groups = C_s``) between stages, global average pooling, LayerNorm.

The wide-vs-deep knob is the presets: ``sret-fashion-deep`` (narrow blocks, many applications) against
``sret-fashion-wide`` (one wide block per stage, looped).

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, C_last)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.mlp import MLP
from ..config import ModelConfig
from ..transformer import collect_attention_maps
from .cvt import conv_out
from .pixels import Classifies, check_pixels
from ..probe import kernels_serving, probe_failure
from .swin import init_linear_and_norm


class Coefficient(nn.Module):
    """A learnable scalar, 1 at init (the learnable residual connection's coefficients)."""

    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.value * x


class SlicedAttention(nn.Module):
    """Group self-attention around any kernel: ``x (B, N, C)`` -> ``(B, N, C)``, attention within ``groups``
    contiguous slices of ``N / groups`` tokens, after a permutation ``perm (N,)`` when one is given."""

    def __init__(self, shell: MultiHeadAttention):
        super().__init__()
        self.attn = shell

    def forward(self, x: Tensor, grid: tuple[int, int], groups: int, perm: Tensor | None) -> Tensor:
        B, N, C = x.shape
        if perm is not None:
            x = x[:, perm]
        sub = slice_grid(grid, groups) if perm is None else None
        y = self.attn(x.reshape(B * groups, N // groups, C), AttentionContext(causal=False, grid=sub))
        y = y.reshape(B, N, C)
        return y if perm is None else y[:, torch.argsort(perm)]


def slice_grid(grid: tuple[int, int], groups: int) -> tuple[int, int] | None:
    """The grid of one of ``groups`` contiguous slices of a row-major ``grid`` (whole rows), or ``None``."""
    rows, cols = grid
    return (rows // groups, cols) if rows % groups == 0 else None


def _shared_attention(cfg: ModelConfig, stage: int, r: int, first: int) -> tuple[str, dict]:
    """The kernel of shared block ``r`` of ``stage``: the schedule's entries of its ``loops`` applications
    (``first`` ...), which must agree, as one block's weights serve them all.

    Raises:
        ValueError: the applications' entries differ, naming them.
    """
    entries = [cfg.layer_attention(first + j) for j in range(cfg.loops)]
    if any(e != entries[0] for e in entries[1:]):
        raise ValueError(f"SReT stage {stage}'s shared block {r} runs {cfg.loops} times with one kernel (its weights "
                         f"are shared), but the schedule gives its applications (layers {first}..{first + cfg.loops - 1})"
                         f" {[name for name, _ in entries]} (options {[opts for _, opts in entries]}); repeat one "
                         "entry per application, or give one name per stage")
    return entries[0]


def _block_diagonal(maps: Tensor, groups: int, perm: Tensor | None) -> Tensor:
    """``(B * G, H, n, n)`` slice maps -> ``(B, H, G n, G n)`` over the tokens in grid order (``perm``: the
    shuffle that made the slices, undone)."""
    n = maps.shape[-1]
    per_image = maps.view(-1, groups, *maps.shape[1:])  # (B, G, H, n, n)
    full = maps.new_zeros(per_image.shape[0], maps.shape[1], groups * n, groups * n)
    for g in range(groups):
        full[:, :, g * n:(g + 1) * n, g * n:(g + 1) * n] = per_image[:, g]
    if perm is None:
        return full
    where = torch.argsort(perm)  # the shuffled position of each token
    return full[:, :, where][:, :, :, where]


class RecursiveBlock(nn.Module):
    """``x <- a1 x + a2 attn(LN x)``, ``x <- a3 x + a4 mlp(LN x)`` (applied ``loops`` times per stage)."""

    def __init__(self, attn: SlicedAttention, width: int, mlp_dim: int, eps: float, dropout: float):
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(width, eps=eps), attn
        self.mlp_norm, self.mlp = nn.LayerNorm(width, eps=eps), MLP(width, mlp_dim, "gelu", dropout=dropout)
        self.a1, self.a2, self.a3, self.a4 = (Coefficient() for _ in range(4))

    def forward(self, x: Tensor, grid: tuple[int, int], groups: int, perm: Tensor | None) -> Tensor:
        x = self.a1(x) + self.a2(self.attn(self.attn_norm(x), grid, groups, perm))
        return self.a3(x) + self.a4(self.mlp(self.mlp_norm(x)))


class NLL(nn.Module):
    """The non-shared projection after each application: ``x <- b1 x + b2 mlp(LN x)``."""

    def __init__(self, width: int, hidden: int, eps: float):
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(width, eps=eps), MLP(width, hidden, "gelu")
        self.b1, self.b2 = Coefficient(), Coefficient()

    def forward(self, x: Tensor) -> Tensor:
        return self.b1(x) + self.b2(self.mlp(self.norm(x)))


class SReTStage(nn.Module):
    """Unique blocks, one NLL per application, the group counts; ``forward`` runs the recursion."""

    def __init__(self, blocks: list[RecursiveBlock], nlls: list[NLL], loops: int, groups: tuple[int, int]):
        super().__init__()
        self.blocks, self.nlls, self.loops, self.groups = nn.ModuleList(blocks), nn.ModuleList(nlls), loops, groups

    def forward(self, x: Tensor, grid: tuple[int, int], permute: bool) -> Tensor:
        n = x.shape[1]
        for r, block in enumerate(self.blocks):
            for loop in range(self.loops):
                groups = self.groups[0] if loop == 0 else self.groups[1]
                perm = torch.randperm(n, device=x.device) if loop > 0 and groups > 1 and permute else None
                x = self.nlls[r * self.loops + loop](block(x, grid, groups, perm))
        return x


class SReT(Classifies, nn.Module):
    """Sliced recursive Transformer: ``pixels (B, C, H, W)`` -> hidden ``(B, T_last, C_last)`` (module docstring).

    Config fields used: ``image_size``, ``num_channels``, ``dim`` (stem width), ``stage_dims`` (widths; empty = dim
    doubling), ``depths`` (applications per stage), ``stage_heads``, ``loops``, ``groups``, ``recursive_groups``,
    ``np_mlp_ratio``, ``permute_in_eval``, ``stage_embed`` (the stem), ``attention`` (one name, one per stage, or one
    per block application, repeated over the applications of one shared block), ``mlp_dim`` (ratio of ``dim``), ``norm_eps``, ``dropout``, ``num_classes``.

    Raises:
        ValueError: inconsistent stage lists, ``depths`` not multiples of ``loops``, group counts that do not divide
            a stage's tokens, widths not divisible by heads, a schedule whose entries differ within one shared
            block's applications, images of the wrong shape.
        CapabilityError: a kernel that cannot serve a stage's slices, at build time, naming those that can.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = len(cfg.depths)
        dims = list(cfg.stage_dims) or [cfg.dim * 2 ** i for i in range(n)]
        self._check(cfg, n, dims)
        self.cfg, self.dims = cfg, dims
        self.stem, side = self._stem(cfg)
        self.pos = nn.Parameter(torch.zeros(1, side * side, dims[0]))
        self.grids = [(side, side)]
        for _ in range(n - 1):
            side = conv_out(side, 3, 2, 1)
            self.grids.append((side, side))
        self.stages = nn.ModuleList(self._stage(cfg, s, dims[s]) for s in range(n))
        self.pools = nn.ModuleList(nn.Conv2d(dims[s], dims[s + 1], 3, stride=2, padding=1, groups=dims[s])
                                   for s in range(n - 1))
        self.width = dims[-1]
        self.norm = nn.LayerNorm(self.width, eps=cfg.norm_eps)
        self.head = nn.Linear(self.width, cfg.num_classes) if cfg.num_classes else None
        self.apply(init_linear_and_norm)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self._check_kernels()

    @staticmethod
    def _check(cfg: ModelConfig, n: int, dims: list[int]) -> None:
        if not n or len(cfg.groups) != n or len(cfg.recursive_groups) != n:
            raise ValueError(f"a SReT needs one entry per stage in depths, stage_heads, groups and recursive_groups; "
                             f"got depths={cfg.depths} groups={cfg.groups} recursive_groups={cfg.recursive_groups}")
        if any(d % cfg.loops for d in cfg.depths):
            raise ValueError(f"depths={cfg.depths} count block applications: each must be a multiple of "
                             f"loops={cfg.loops}")
        if any(b % a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"stage widths {dims}: each must be a multiple of the one before (the pooling convolution "
                             "between stages has groups = the narrower width)")
        if cfg.dim % 2:
            raise ValueError(f"SReT's stem has dim / 2 channels first: dim={cfg.dim} must be even")

    def _stem(self, cfg: ModelConfig) -> tuple[nn.Sequential, int]:
        layers, c_in, side = [], cfg.num_channels, cfg.image_size
        for i, (k, s, p) in enumerate(cfg.stage_embed):
            c_out = cfg.dim // 2 if i == 0 and len(cfg.stage_embed) > 1 else cfg.dim
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=p), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in, side = c_out, conv_out(side, k, s, p)
        if side < 1 or not layers:
            raise ValueError(f"SReT's stem (stage_embed={cfg.stage_embed}) must leave tokens of a {cfg.image_size}px "
                             "image: give at least one [kernel, stride, padding] and smaller strides")
        return nn.Sequential(*layers), side

    def _stage(self, cfg: ModelConfig, s: int, width: int) -> SReTStage:
        heads, (rows, cols), first = cfg.stage_heads[s], self.grids[s], sum(cfg.depths[:s])
        tokens = rows * cols
        for g in (cfg.groups[s], cfg.recursive_groups[s]):
            if tokens % g:
                raise ValueError(f"stage {s} has {rows}x{cols} = {tokens} tokens, not divisible into {g} groups; "
                                 f"valid group counts: {[d for d in range(1, tokens + 1) if tokens % d == 0][:12]}")
        if width % heads:
            raise ValueError(f"stage {s} is {width} wide, not divisible by its {heads} heads; change stage_heads")
        ratio = cfg.mlp_dim / cfg.dim if cfg.mlp_dim else 4
        blocks = []
        for r in range(cfg.depths[s] // cfg.loops):
            name, opts = _shared_attention(cfg, s, r, first + r * cfg.loops)
            shell = MultiHeadAttention(width, heads, heads, kernel=name, kernel_options=opts, bias=cfg.bias,
                                       dropout=cfg.dropout, max_seq_len=tokens)
            blocks.append(RecursiveBlock(SlicedAttention(shell), width, int(ratio * width), cfg.norm_eps, cfg.dropout))
        nlls = [NLL(width, int(cfg.np_mlp_ratio * width), cfg.norm_eps) for _ in range(cfg.depths[s])]
        return SReTStage(blocks, nlls, cfg.loops, (cfg.groups[s], cfg.recursive_groups[s]))

    def _check_kernels(self) -> None:
        """Each kernel tried once per stage on a slice as it runs (grid or none), so an unfit one fails here."""
        for s, stage in enumerate(self.stages):
            tokens = self.grids[s][0] * self.grids[s][1]
            places = [(stage.groups[0], slice_grid(self.grids[s], stage.groups[0]))]
            if stage.loops > 1:
                places.append((stage.groups[1], None if stage.groups[1] > 1 else self.grids[s]))
            for block in stage.blocks:
                shell = block.attn.attn
                for groups, grid in places:
                    ctx = AttentionContext(causal=False, grid=grid)
                    why = probe_failure(shell.kernel, shell.num_heads, shell.head_dim, tokens // groups,
                                        tokens // groups, ctx)
                    if why:
                        where = "a grid" if grid else "no grid (shuffled or ragged slices)"
                        raise CapabilityError(
                            f"attention {shell.kernel.name!r} cannot serve SReT stage {s}: slices of "
                            f"{tokens // groups} tokens with {where} ({why}); kernels that can: "
                            f"{kernels_serving(tokens // groups, tokens // groups, ctx)}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.grids[-1]

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.cfg.num_channels, self.cfg.image_size)
        x = self.stem(pixels.to(self.pos.dtype))  # (B, C0, rows, cols)
        B = x.shape[0]
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, rows * cols, C0)
        permute = self.training or self.cfg.permute_in_eval
        for s, stage in enumerate(self.stages):
            x = stage(x, self.grids[s], permute)
            if s < len(self.pools):
                x = self.pools[s](x.transpose(1, 2).reshape(B, -1, *self.grids[s])).flatten(2).transpose(1, 2)
        return self.norm(x)

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """Per block application a ``(B, heads, N, N)`` map over the stage's ``N`` tokens in grid order: its ``G``
        slices' maps on the diagonal (put back in grid order when the tokens were shuffled), zero between slices,
        where no attention goes. Through each kernel's reference path.

        Raises:
            CapabilityError: a kernel that has no attention weights.
        """
        sliced = [b.attn for stage in self.stages for b in stage.blocks]
        calls: list[tuple[int, Tensor | None]] = []  # (groups, perm) of each application, in call order
        hooks = [m.register_forward_pre_hook(lambda _, args: calls.append((args[2], args[3]))) for m in sliced]
        try:
            maps = collect_attention_maps([m.attn for m in sliced], lambda: self(pixels))
        finally:
            for h in hooks:
                h.remove()
        return [_block_diagonal(m, groups, perm) for m, (groups, perm) in zip(maps, calls)]

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, C_last)``: the mean over the last stage's tokens."""
        return self(pixels).mean(dim=1)

