"""TNT (Han et al. 2021, "Transformer in Transformer"), with any attention kernel inside and outside.

Each ``patch_size`` patch is a "visual sentence" of ``words_side^2`` "visual words": a per-patch convolution
(``7x7``, stride ``inner_stride``, padding 3, so zero padding applies at patch borders) turns its pixels into
``token_dim``-wide words with a learned word position. Every block first runs an *inner* Transformer block over the
words of each patch (``inner_heads`` heads, kernel ``token_attention``, the words' grid), then adds a projection of
the flattened words to the patch ("sentence") token (``LN(Linear(LN(vec(words))))``; the class token receives
nothing), then an *outer* block over the class token and the patch tokens (kernel ``attention``: one name or one per
block; the patch grid). Sentence tokens start as the same projection of the first words, plus a learned position.

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, 1 + rows * cols, dim)`` (``pooling="cls"``) or ``(B, rows * cols,
dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ..config import ModelConfig
from ..transformer import build_blocks, collect_attention_maps
from .cvt import conv_out
from .pixels import Classifies, check_pixels
from ..probe import check_prefix_tokens, kernels_serving, probe_failure
from .swin import init_linear_and_norm


class WordsToSentence(nn.Module):
    """``(B * N, W, c)`` words -> ``(B, N, D)``: ``LN(Linear(LN(vec(words))))``."""

    def __init__(self, words: int, c: int, dim: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(words * c, eps=eps)
        self.proj = nn.Linear(words * c, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, words: Tensor, batch: int) -> Tensor:
        return self.norm2(self.proj(self.norm1(words.reshape(batch, -1, words.shape[1] * words.shape[2]))))


class TNTBlock(nn.Module):
    """Inner block over words, the fuse into sentence tokens, outer block over sentences."""

    def __init__(self, inner: nn.Module, fuse: WordsToSentence, outer: nn.Module):
        super().__init__()
        self.inner, self.fuse, self.outer = inner, fuse, outer

    def forward(self, words: Tensor, z: Tensor, inner_ctx: AttentionContext, outer_ctx: AttentionContext,
                prefix: int) -> tuple[Tensor, Tensor]:
        words = self.inner(words, inner_ctx)
        z = torch.cat([z[:, :prefix], z[:, prefix:] + self.fuse(words, z.shape[0])], dim=1)  # out of place
        return words, self.outer(z, outer_ctx)


class TNT(Classifies, nn.Module):
    """Transformer in Transformer: ``pixels (B, C, H, W)`` -> hidden sentence tokens ``(B, T, dim)``.

    Config fields used: ``image_size``, ``patch_size``, ``num_channels``, ``dim``, ``num_layers``, ``num_heads``,
    ``attention`` (outer), ``token_dim`` (word width), ``inner_heads``, ``inner_stride``, ``token_attention`` (inner),
    ``mlp_dim`` (outer; the inner MLP is 4x the word width), ``pooling``, ``dropout``, ``norm_eps``, ``bias``,
    ``num_classes``.

    Raises:
        ValueError: ``image_size`` not divisible by ``patch_size``, widths not divisible by their heads, images of
            the wrong shape.
        CapabilityError: a kernel that cannot serve the words' grid or the patch grid with a class token, at build
            time, naming the kernels that can.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size={cfg.image_size} is not divisible by patch_size={cfg.patch_size}; valid "
                             f"patch sizes: {[p for p in range(1, cfg.image_size + 1) if cfg.image_size % p == 0]}")
        if cfg.token_dim % cfg.inner_heads:
            raise ValueError(f"token_dim={cfg.token_dim} is not divisible by inner_heads={cfg.inner_heads}")
        self.cfg = cfg
        side, c = cfg.image_size // cfg.patch_size, cfg.token_dim
        self.grid, self.words_side = (side, side), conv_out(cfg.patch_size, 7, cfg.inner_stride, 3)
        words = self.words_side ** 2
        self.pixel_embed = nn.Conv2d(cfg.num_channels, c, 7, stride=cfg.inner_stride, padding=3)
        self.pixel_pos = nn.Parameter(torch.zeros(1, words, c))
        self.sentence = WordsToSentence(words, c, cfg.dim, cfg.norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.prefix = int(self.cls_token is not None)
        self.patch_pos = nn.Parameter(torch.zeros(1, self.prefix + side * side, cfg.dim))
        inner_cfg = cfg.model_copy(update=dict(dim=c, num_heads=cfg.inner_heads, num_kv_heads=None, head_dim=None,
                                               attention=cfg.token_attention,
                                               attention_options=cfg.token_attention_options, mlp_dim=4 * c,
                                               max_seq_len=words, position="none"))
        inner, outer = build_blocks(inner_cfg), build_blocks(cfg.model_copy(update=dict(position="none")))
        self.blocks = nn.ModuleList(TNTBlock(i, WordsToSentence(words, c, cfg.dim, cfg.norm_eps), o)
                                    for i, o in zip(inner, outer))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.apply(init_linear_and_norm)
        for p in (self.pixel_pos, self.patch_pos, self.cls_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self._check_kernels()

    def _check_kernels(self) -> None:
        """The inner kernels on the words' grid, the outer ones on the patch grid (with the class token)."""
        side, words = self.words_side, self.words_side ** 2
        ctx = AttentionContext(causal=False, grid=(side, side))
        for name in dict.fromkeys(b.inner.attn.kernel.name for b in self.blocks):
            shell = next(b.inner.attn for b in self.blocks if b.inner.attn.kernel.name == name)
            why = probe_failure(shell.kernel, shell.num_heads, shell.head_dim, words, words, ctx)
            if why:
                raise CapabilityError(f"attention {name!r} cannot serve TNT's inner blocks on the {side}x{side} grid of "
                                      f"words ({why}); kernels that can: {kernels_serving(words, words, ctx)}")
        tokens = self.prefix + self.grid[0] * self.grid[1]
        check_prefix_tokens([b.outer.attn for b in self.blocks], tokens, self.grid, "TNT")

    def words(self, pixels: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> words ``(B * rows * cols, words, token_dim)`` with their positions."""
        cfg = self.cfg
        p, B = cfg.patch_size, pixels.shape[0]
        patches = F.unfold(pixels, p, stride=p).transpose(1, 2).reshape(-1, cfg.num_channels, p, p)  # (B*N, C, p, p)
        return self.pixel_embed(patches).flatten(2).transpose(1, 2) + self.pixel_pos

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.cfg.num_channels, self.cfg.image_size)
        B = pixels.shape[0]
        words = self.words(pixels.to(self.pixel_embed.weight.dtype))  # (B*N, W, c)
        z = self.sentence(words, B)  # (B, N, D)
        if self.cls_token is not None:
            z = torch.cat([self.cls_token.expand(B, -1, -1), z], dim=1)
        z = self.dropout(z + self.patch_pos)
        inner_ctx = AttentionContext(causal=False, grid=(self.words_side, self.words_side))
        outer_ctx = AttentionContext(causal=False, grid=self.grid)
        for block in self.blocks:
            words, z = block(words, z, inner_ctx, outer_ctx, self.prefix)
        return self.norm(z)

    @property
    def width(self) -> int:
        return self.cfg.dim

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, dim)``: the class token (``pooling="cls"``) or the mean over the patch tokens."""
        h = self(pixels)
        return h[:, 0] if self.cls_token is not None else h.mean(dim=1)

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """The outer blocks' ``(B, heads, T, T)`` maps, through each kernel's reference path.

        Raises:
            CapabilityError: a kernel that has no attention weights.
        """
        return collect_attention_maps(self.map_shells(), lambda: self(pixels))

    def map_shells(self) -> list[nn.Module]:
        """The outer blocks' attention shells: the ones whose maps relate image patches (the inner blocks attend
        between the pixels of one patch)."""
        return [b.outer.attn for b in self.blocks]
