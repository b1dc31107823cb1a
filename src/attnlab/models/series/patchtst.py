"""PatchTST (Nie, Nguyen, Sinthong & Kalagnanam 2023, "A Time Series is Worth 64 Words: Long-term Forecasting with
Transformers", arXiv 2211.14730) on the shared body, with any attention kernel.

Each target variate is a separate univariate sample (channel independence; all variates share the weights): RevIN,
patches of ``patch_size`` steps every ``patch_stride`` steps with the last step repeated ``stride`` times at the end,
one token per patch (``Linear(P, d)`` + positions), the body's blocks, then a flatten head ``Linear(d * N, T)`` over
the d-major flattened tokens. Exogenous columns are not read (a channel-independent model has no way to use them).

[choice] The blocks are the body's post-norm blocks with LayerNorm (the Time-Series-Library variant) rather than the
official BatchNorm with residual attention scores, so evaluation is independent of batch composition and every
kernel of the registry plugs in; positions are the official learnable table (``U(-0.02, 0.02)``) for
``position: learned`` or the fixed sinusoidal table for ``position: sinusoidal``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...layers.positional import SinusoidalPositionalEmbedding
from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights
from .layers import RevIN, check_inputs, check_kernels, num_patches, patchify, series_shape


class PatchEmbedding(nn.Module):
    """``patches (B*C, N, P)`` -> tokens ``(B*C, N, dim)``: linear projection, positions, dropout."""

    def __init__(self, cfg: ModelConfig, patch_len: int, n: int):
        super().__init__()
        self.proj = nn.Linear(patch_len, cfg.dim)
        self.pos = None
        if cfg.position == "learned":
            self.pos = nn.Parameter(torch.empty(n, cfg.dim).uniform_(-0.02, 0.02))
        elif cfg.position == "sinusoidal":
            table = SinusoidalPositionalEmbedding(n, cfg.dim)(torch.arange(n))
            self.register_buffer("table", table, persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, patches: Tensor) -> Tensor:
        x = self.proj(patches)
        if self.pos is not None:
            x = x + self.pos
        elif hasattr(self, "table"):
            x = x + self.table.to(x.dtype)
        return self.dropout(x)


class PatchTST(TransformerBody):
    """``inputs (B, L, C)`` -> forecast ``(B, T, C_t)`` of the first ``C_t = num_variates`` columns.

    Config fields used: ``lookback``, ``horizon``, ``num_variates``, ``num_exogenous`` (from the data),
    ``patch_size``, ``patch_stride`` (None = half the patch), ``revin``, ``revin_affine``, ``head_dropout``,
    ``position`` (learned, sinusoidal, none or rope), and the body's fields (``attention`` and schedules included).

    Raises:
        ValueError: unset series shape, ``lookback < patch_size``, an unsupported position, ``max_seq_len`` below the
            patch count; at call, inputs of the wrong shape.
        CapabilityError: a kernel that cannot attend bidirectionally over the patches (names those that can).
    """

    causal = False
    forecaster = True  # what the forecast objective trains (attnlab.train.build)

    def __init__(self, cfg: ModelConfig):
        L, T, c_t, c_x = series_shape(cfg, "PatchTST")
        if isinstance(cfg.patch_stride, list):
            raise ValueError(f"PatchTST patches one axis: patch_stride must be one int, got {cfg.patch_stride}")
        self.patch_len, self.stride = cfg.patch_size, cfg.patch_stride or max(1, cfg.patch_size // 2)
        if L < self.patch_len:
            raise ValueError(f"lookback={L} is shorter than patch_size={self.patch_len}; lower model.patch_size")
        if cfg.position not in ("learned", "sinusoidal", "none", "rope"):
            raise ValueError(f"PatchTST supports position learned, sinusoidal, none or rope, got {cfg.position!r}")
        n = num_patches(L, self.patch_len, self.stride)
        if cfg.max_seq_len < n:
            raise ValueError(f"lookback {L} makes {n} patches but max_seq_len={cfg.max_seq_len}; set max_seq_len={n}")
        super().__init__(cfg, embed=PatchEmbedding(cfg, self.patch_len, n))
        self.shape, self.num_tokens = (L, T, c_t, c_x), n
        self.revin = RevIN(c_t, affine=cfg.revin_affine) if cfg.revin else None
        self.head = nn.Linear(cfg.dim * n, T)
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        init_weights(self, cfg)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(cfg.dim * n))  # a flatten head as wide as d*N
        check_kernels([b.attn for b in self.blocks], n, "PatchTST")

    def forward(self, inputs: Tensor) -> Tensor:
        L, T, c_t, c_x = self.shape
        check_inputs(inputs, L, c_t + c_x, "PatchTST")
        x = inputs[..., :c_t]
        if self.revin is not None:
            x = self.revin.norm(x)
        B = x.shape[0]
        patches = patchify(x.transpose(1, 2).reshape(B * c_t, L), self.patch_len, self.stride)  # (B*C, N, P)
        h = self.encode(None, inputs_embeds=self.embed(patches))  # (B*C, N, d)
        h = h.reshape(B, c_t, self.num_tokens, -1).transpose(2, 3).flatten(2)  # (B, C, d*N), d-major
        y = self.head_dropout(self.head(h)).transpose(1, 2)  # (B, T, C)
        return self.revin.denorm(y) if self.revin is not None else y
