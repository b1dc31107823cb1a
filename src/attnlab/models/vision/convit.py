"""ConViT (d'Ascoli et al. 2021, "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases"):
a ViT whose first ``local_layers`` blocks run gated positional self-attention (the ``gpsa`` kernel) on the patch
grid alone; the class token joins just before block ``local_layers`` and the remaining blocks attend over
[CLS] + patches (``softmax`` by default, any kernel that takes a prefix token).

Patches get a learned absolute position embedding (no slot for the class token, which never gets one); the
pooled representation is the final-normed class token. GPSA blocks start with the value projection set to the
identity (the reference's initialisation). ``attention=`` may name other kernels for either part: the local part
must run on a pure grid, the global part over a prefix token, both checked when the model is built.

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, 1 + rows * cols, dim)`` (token 0 is [CLS]).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ...attention.kernels.gpsa import init_value_identity_
from ...layers.residual import run_residual_stack
from ..config import ModelConfig
from ..transformer import TransformerBody, collect_attention_maps, init_weights
from ..probe import kernels_serving, probe_failure
from .pixels import Classifies, check_pixels


class PatchesWithPositions(nn.Module):
    """``pixels (B, C, H, W)`` -> ``(B, rows * cols, dim)``: strided-conv patches plus learned positions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        side = cfg.image_size // cfg.patch_size
        self.grid, self.image_size, self.num_channels = (side, side), cfg.image_size, cfg.num_channels
        self.proj = nn.Conv2d(cfg.num_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, side * side, cfg.dim), std=cfg.init_std))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.num_channels, self.image_size)
        x = self.proj(pixels.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B, rows*cols, D)
        return self.dropout(x + self.pos_emb)


class ConViT(Classifies, TransformerBody):
    """See the module docstring. Config fields: those of :class:`~attnlab.models.vision.vit.ViT` plus
    ``local_layers`` (blocks before the class token joins).

    Raises:
        ValueError: ``local_layers`` not below ``num_layers`` (the class token would never join), an image size not
            divisible by the patch size, ``max_seq_len`` below ``1 + rows * cols``.
        CapabilityError: a local-part kernel that cannot run on the pure grid, or a global-part kernel that cannot
            take the class token, at build time (naming the kernels that can).
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        if not 0 <= cfg.local_layers < cfg.num_layers:
            raise ValueError(f"local_layers={cfg.local_layers} must be below num_layers={cfg.num_layers}: the class "
                             "token joins before block local_layers")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size={cfg.image_size} is not divisible by patch_size={cfg.patch_size}")
        tokens = 1 + (cfg.image_size // cfg.patch_size) ** 2
        if cfg.max_seq_len < tokens:
            raise ValueError(f"{tokens} tokens ([CLS] + patches) but max_seq_len={cfg.max_seq_len}; set "
                             f"max_seq_len={tokens}")
        super().__init__(cfg, embed=PatchesWithPositions(cfg))
        if self.stack_hooks:
            raise CapabilityError("ConViT runs its blocks in two parts; kernels that keep state across the whole stack "
                                  f"({[type(h).__name__ for h in self.stack_hooks]}) are not supported here")
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, cfg.dim), std=cfg.init_std))
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else None
        init_weights(self, cfg)
        init_value_identity_(self)
        self._check_parts()

    def _check_parts(self) -> None:
        rows, cols = self.grid
        ctx = AttentionContext(causal=False, grid=self.grid)
        for i, block in enumerate(self.blocks):
            local = i < self.cfg.local_layers
            tokens = rows * cols + (0 if local else 1)
            why = probe_failure(block.attn.kernel, block.attn.num_heads, block.attn.head_dim, tokens, tokens, ctx)
            if why and local:
                raise CapabilityError(f"block {i} runs before the class token joins, on the {rows}x{cols} patch grid, "
                                      f"but attention {block.attn.kernel.name!r} cannot ({why}); kernels that can: "
                                      f"{kernels_serving(tokens, tokens, ctx)}")
            if why:
                raise CapabilityError(f"block {i} attends over the class token and the patches, which attention "
                                      f"{block.attn.kernel.name!r} cannot ({why}); kernels that can: "
                                      f"{kernels_serving(tokens, tokens, ctx)}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.embed.grid

    def forward(self, pixels: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, 1 + rows * cols, dim)`` after the final norm."""
        x = self.embed(pixels)
        ctx = AttentionContext(causal=False, grid=self.grid)
        L = self.cfg.local_layers
        layer = lambda i: (dataclasses.replace(ctx), None, None)  # noqa: E731  (one context per layer, as encode)
        x = run_residual_stack(self.blocks[:L], x, layer)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = run_residual_stack(self.blocks[L:], x, layer)
        return self.final_norm(x)

    def pooled(self, pixels: Tensor) -> Tensor:
        """``(B, dim)``: the class token."""
        return self(pixels)[:, 0]

    def attention_maps(self, pixels: Tensor) -> list[Tensor]:
        """Per block ``(B, heads, T, T)``: ``T = rows * cols`` in the local blocks, ``1 +`` that after."""
        return collect_attention_maps([b.attn for b in self.blocks], lambda: self(pixels))
