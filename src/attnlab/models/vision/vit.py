"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), with any attention kernel.

An image ``(B, C, H, W)`` is cut into ``rows x cols`` non-overlapping patches by a strided convolution,
each patch becomes one token, and the tokens run through the shared pre-norm Transformer body
(:class:`~attnlab.models.transformer.TransformerBody`, same blocks as every other family).

Token layout and the 2-D grid. The attention context always carries ``grid=(rows, cols)``:

- ``pooling="cls"`` (the original ViT, and every Hugging Face ViT checkpoint): a learned [CLS] token is
  prepended, so ``T = 1 + rows * cols``. The grid describes the LAST ``rows * cols`` tokens; the
  ``T - rows * cols`` tokens before them are *global prefix tokens*. A grid kernel must either treat
  prefix tokens as global (they attend to, and are attended by, every token) or raise a
  ``CapabilityError`` when ``T != rows * cols``.
- ``pooling="mean"`` (global average pooling, Beyer et al. 2022 "Better plain ViT baselines"): no [CLS]
  token, ``T == rows * cols`` exactly, so every grid-native kernel (neighborhood, axial, GPSA ...) runs on
  a pure grid. The built-in ``vit-tiny`` and ``vit-fashion`` presets use this.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights
from ..probe import check_prefix_tokens
from .pixels import Classifies, check_pixels


class PatchEmbeddings(nn.Module):
    """Patches + optional [CLS] token + learned absolute positions.

    Shapes: ``pixels (B, C, H, W)`` -> ``(B, T, D)`` with ``T = rows * cols (+ 1 with [CLS])``.

    Raises:
        ValueError: image of the wrong channel count or size (the position table is fixed).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        side = cfg.image_size // cfg.patch_size
        self.grid = (side, side)
        self.image_size, self.num_channels = cfg.image_size, cfg.num_channels
        self.proj = nn.Conv2d(cfg.num_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.num_tokens = side * side + (1 if self.cls_token is not None else 0)
        self.pos_emb = None
        if cfg.position == "learned":
            self.pos_emb = nn.Parameter(torch.randn(1, self.num_tokens, cfg.dim) * cfg.init_std)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=cfg.init_std)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.num_channels, self.image_size)
        x = self.proj(pixels.to(self.proj.weight.dtype))  # (B, D, rows, cols)
        x = x.flatten(2).transpose(1, 2)  # (B, rows*cols, D), row-major patch order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + rows*cols, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb
        return self.dropout(x)


class ViT(Classifies, TransformerBody):
    """Image classifier / feature extractor: ``pixels (B, C, H, W)`` -> hidden ``(B, T, dim)``.

    Config fields used: ``image_size``, ``patch_size``, ``num_channels``, ``pooling`` ("cls" prepends a
    [CLS] token, "mean" averages the patch tokens), ``num_classes`` (0 = no head), ``position``
    ("learned" or "none" for kernels that bring their own positional signal, e.g. GPSA). The blocks
    follow ``cfg.prenorm`` (ViT is pre-norm).

    Raises:
        ValueError: ``image_size`` not divisible by ``patch_size``, ``max_seq_len`` smaller than the
            number of tokens, an unsupported ``position``, or images of the wrong shape.
        CapabilityError: the attention kernel cannot run bidirectionally, at build time.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        embed = self._embedding(cfg)
        if cfg.max_seq_len < embed.num_tokens:
            raise ValueError(f"an image of {cfg.image_size}px is {embed.num_tokens} tokens here but "
                             f"max_seq_len={cfg.max_seq_len}; set max_seq_len={embed.num_tokens}")
        super().__init__(cfg, embed=embed)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else None
        init_weights(self, cfg)
        if self.embed.cls_token is not None:
            self._check_prefix_token()

    @staticmethod
    def _embedding(cfg: ModelConfig) -> nn.Module:
        """The module turning pixels into tokens (a subclass may bring another: T2T-ViT's tokens-to-token)."""
        if cfg.image_size % cfg.patch_size:
            raise ValueError(
                f"image_size={cfg.image_size} is not divisible by patch_size={cfg.patch_size}; "
                f"valid patch sizes: {[p for p in range(1, cfg.image_size + 1) if cfg.image_size % p == 0]}"
            )
        if cfg.position not in ("learned", "none"):
            raise ValueError(f"ViT supports position 'learned' or 'none', got {cfg.position!r}")
        return PatchEmbeddings(cfg)

    def _check_prefix_token(self) -> None:
        """Every kernel must run on ``1 + rows * cols`` tokens with the patch grid (tried at build time)."""
        check_prefix_tokens([b.attn for b in self.blocks], self.embed.num_tokens, self.grid, type(self).__name__)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid."""
        return self.embed.grid

    def forward(self, pixels: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, T, dim)`` after the final norm (token 0 is [CLS] when present)."""
        return self.encode(None, inputs_embeds=self.embed(pixels), grid=self.grid)

    def attention_maps(self, pixels: Tensor, **kwargs) -> list[Tensor]:
        """Per-layer ``(B, H, T, T)`` attention maps of ``pixels (B, C, H, W)`` (token 0 is [CLS] when present,
        then the patches row-major), recomputed through the reference path of each kernel.

        Raises:
            ValueError: images of the wrong shape. CapabilityError: a kernel that has no attention weights.
        """
        return super().attention_maps(None, inputs_embeds=self.embed(pixels), grid=self.grid, **kwargs)

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, dim)``: the [CLS] token (``pooling="cls"``) or the mean over patch tokens."""
        h = self(pixels)
        return h[:, 0] if self.cfg.pooling == "cls" else h.mean(dim=1)

