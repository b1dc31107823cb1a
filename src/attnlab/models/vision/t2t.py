"""T2T-ViT (Yuan et al. 2021, "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet"), with any
attention kernel in the backbone and in the tokens-to-token layers.

Instead of ViT's hard patches, the image is tokenised progressively: a *soft split* (an overlapping ``unfold``:
every token is the ``C * k * k`` pixels of a ``k x k`` window, channel-major), then a *re-structurisation* layer (one
head of width ``token_dim`` over those wide tokens, reshaped back to a grid), repeated, then a last soft split and a
linear projection to the backbone width. ``stage_embed`` lists the soft splits as ``[kernel, stride, padding]``
(``[[7, 4, 2], [3, 2, 1], [3, 2, 1]]`` at 224 px: grids 56, 28, 14); there is one re-structurisation layer between
consecutive splits. Grid sides follow the convolution formula (the reference's ``image // 16`` is wrong for images
that are not multiples of 16). The backbone is a deep-narrow ViT on the shared body with a class token and a fixed
interleaved sinusoidal position table (``position="sinusoidal"``; ``"learned"`` and ``"none"`` work too).

The re-structurisation layer (the reference's ``Token_transformer``): ``q, k, v = Linear(d_in -> 3 * token_dim,
no bias)(LN x)``, ``y = v + proj(attn(q, k, v))`` (the skip is ``v``: the widths differ), ``y + MLP(LN y)`` with
ratio 1; scores scaled by ``d_in^-1/2`` (the input width). Its kernel is ``token_attention`` (softmax: T2T-ViT_t;
the reference's default Performer is any linear-time kernel here, e.g. ``linear``).

Shapes: ``pixels (B, C, H, W)`` -> hidden ``(B, 1 + rows * cols, dim)`` (``pooling="cls"``) or ``(B, rows * cols,
dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.context import AttentionContext
from ...attention.registry import attention_options, build_attention
from ...layers.mlp import MLP
from ..config import ModelConfig
from .cvt import conv_out
from .vit import ViT
from .pixels import check_pixels


def soft_split(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H' * W', C * kernel^2)``: overlapping windows, features channel-major
    (``c * k^2 + ky * k + kx``), tokens row-major."""
    return F.unfold(x, kernel, padding=padding, stride=stride).transpose(1, 2)


def sinusoid_table(tokens: int, dim: int) -> Tensor:
    """T2T-ViT's fixed ``(tokens, dim)`` table: ``sin`` in even and ``cos`` in odd columns (interleaved) of
    ``pos / 10000^(2 floor(j / 2) / dim)``."""
    pos = torch.arange(tokens, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, 2 * (j // 2).double() / dim)
    return torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


class TokenLayer(nn.Module):
    """One re-structurisation layer: ``(B, N, d_in)`` on a ``grid`` -> ``(B, N, token_dim)`` (see the module doc)."""

    def __init__(self, d_in: int, token_dim: int, kernel: str, options: dict, tokens: int, eps: float):
        super().__init__()
        self.token_dim = token_dim
        self.norm1 = nn.LayerNorm(d_in, eps=eps)
        self.qkv = nn.Linear(d_in, 3 * token_dim, bias=False)
        if "scale" in attention_options(kernel):
            options = {"scale": d_in ** -0.5, **options}  # the reference scales by the input width
        structural = dict(num_heads=1, num_kv_heads=1, head_dim=token_dim, max_seq_len=tokens)
        self.kernel = build_attention(kernel, structural=structural, **options)
        self.kernel.capabilities.require(self.kernel.name, bidirectional=True)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim, eps=eps)
        self.mlp = MLP(token_dim, token_dim, "gelu")

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).split(self.token_dim, dim=-1)  # (B, N, token_dim) each
        a = self.kernel(q[:, None], k[:, None], v[:, None], AttentionContext(causal=False, grid=grid))[:, 0]
        y = v + self.proj(a)
        return y + self.mlp(self.norm2(y))


class TokensToToken(nn.Module):
    """Pixels -> backbone tokens ``(B, rows * cols, dim)`` and the final grid; see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        splits = cfg.stage_embed
        if len(splits) < 1:
            raise ValueError("T2T-ViT needs stage_embed: the soft splits as [kernel, stride, padding], e.g. "
                             "[[7, 4, 2], [3, 2, 1], [3, 2, 1]]")
        self.splits, self.grids, side = [tuple(s) for s in splits], [], cfg.image_size
        for i, (k, s, p) in enumerate(self.splits):
            side = conv_out(side, k, s, p)
            if side < 1:
                raise ValueError(f"a {cfg.image_size}px image leaves no tokens after soft split {i} (kernel {k}, "
                                 f"stride {s}, padding {p}); use a larger image_size or smaller strides")
            self.grids.append((side, side))
        widths = [cfg.num_channels * splits[0][0] ** 2] + [cfg.token_dim * k ** 2 for k, _, _ in self.splits[1:]]
        self.layers = nn.ModuleList(
            TokenLayer(widths[i], cfg.token_dim, cfg.token_attention, dict(cfg.token_attention_options),
                       self.grids[i][0] * self.grids[i][1], cfg.norm_eps) for i in range(len(splits) - 1))
        self.project = nn.Linear(widths[-1], cfg.dim)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels
        for i, split in enumerate(self.splits):
            tokens = soft_split(x, *split)  # (B, N_i, d_in)
            if i < len(self.layers):
                tokens = self.layers[i](tokens, self.grids[i])  # (B, N_i, token_dim)
                x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grids[i])  # back to a grid
        return self.project(tokens)


class T2TEmbeddings(nn.Module):
    """Tokens-to-token, the class token (``pooling="cls"``), the position table, dropout:
    ``pixels (B, C, H, W)`` -> ``(B, T, dim)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.position not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"T2T-ViT supports position 'sinusoidal', 'learned' or 'none', got {cfg.position!r}")
        self.t2t = TokensToToken(cfg)
        self.grid = self.t2t.grids[-1]
        self.image_size, self.num_channels = cfg.image_size, cfg.num_channels
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.num_tokens = self.grid[0] * self.grid[1] + (self.cls_token is not None)
        table = sinusoid_table(self.num_tokens, cfg.dim)[None]
        self.pos_emb = None
        if cfg.position == "sinusoidal":
            self.register_buffer("pos_table", table, persistent=False)  # fixed: rebuilt, never trained or saved
        elif cfg.position == "learned":
            self.pos_emb = nn.Parameter(torch.randn_like(table) * cfg.init_std)
        self.fixed = cfg.position == "sinusoidal"
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.num_channels, self.image_size)
        x = self.t2t(pixels.to(self.t2t.project.weight.dtype))  # (B, rows * cols, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.fixed:
            x = x + self.pos_table.to(x.dtype)
        elif self.pos_emb is not None:
            x = x + self.pos_emb
        return self.dropout(x)


class T2TViT(ViT):
    """T2T-ViT: tokens-to-token embedding, then the ViT body (any kernel; grid kernels see the final grid and must
    place the class token, as in :class:`ViT`).

    Config fields used, beyond :class:`ViT`'s: ``stage_embed`` (the soft splits), ``token_dim``,
    ``token_attention`` / ``token_attention_options`` (the re-structurisation layers' kernel).

    Raises:
        ValueError: no soft splits, an image too small for them, an unsupported ``position``, images of the wrong
            shape. CapabilityError: a kernel that cannot serve the backbone or the token layers, at build time.
    """

    @staticmethod
    def _embedding(cfg: ModelConfig) -> nn.Module:
        return T2TEmbeddings(cfg)

