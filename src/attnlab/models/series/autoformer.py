"""Autoformer (Wu, Xu, Wang & Long 2021, "Autoformer: Decomposition Transformers with Auto-Correlation for Long-Term
Series Forecasting", NeurIPS, arXiv 2106.13008) with any attention kernel; its own mechanism is the registry kernel
``autocorrelation`` (the default of the presets), so it can be swapped for any other.

Encoder: a circular ``Conv1d(C, d, 3)`` value embedding (no positions), then layers of
``x = decomp(x + Attn(x))``, ``x = decomp(x + FFN(x))`` keeping the seasonal parts, and the seasonal LayerNorm
(LayerNorm, then minus its mean over time). Decoder: seasonal input ``[seasonal(x)[-L_lab:], 0_T]``, trend input
``[trend(x)[-L_lab:], mean_t(x) x T]``; each layer decomposes after self-attention, cross-attention to the encoder
and the FFN, and adds ``Conv1d(d, C, 3)`` of the three removed trends to the trend; the forecast is the trend plus
``Linear(d, C)`` of the normalised seasonal part, last ``T`` steps, target columns kept.

[choice] ``L_lab = lookback // 2`` (48 for 96, the reference's scripts); no calendar features (the reference adds a
``Linear(F, d)`` of them); the cross-attention uses ``model.cross_attention`` (softmax by default): the registry's
auto-correlation is self-attention only (decoder and encoder lengths differ).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.norms import build_norm
from ..config import ModelConfig
from .layers import RevIN, check_inputs, check_kernels, decompose, series_shape


class SeasonalNorm(nn.Module):
    """Autoformer's ``my_Layernorm``: LayerNorm over features, then its mean over time removed. ``(B, L, d)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return x - x.mean(1, keepdim=True)


def _circular_conv(c_in: int, c_out: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, 3, padding=1, padding_mode="circular", bias=False)


class _FFN(nn.Module):
    """``Drop(W2 Drop(act(W1 x)))`` with bias-free 1x1 convolutions (per-token linear maps)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.dim, cfg.resolved_mlp_dim, bias=False)
        self.down = nn.Linear(cfg.resolved_mlp_dim, cfg.dim, bias=False)
        self.act = nn.GELU() if cfg.activation.startswith("gelu") else nn.ReLU()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(self.drop(self.act(self.up(x)))))


class Autoformer(nn.Module):
    """``inputs (B, L, C)`` -> forecast ``(B, T, C_t)`` (all ``C`` columns are forecast, the targets kept).

    Config fields: the series shape, ``moving_avg`` (odd), ``num_layers`` (encoder), ``num_decoder_layers`` (None =
    1, the reference), ``attention`` (schedule; decoder layer ``j`` uses layer ``j``'s kernel), ``cross_attention``.

    Raises:
        ValueError: unset series shape, an even ``moving_avg``; at call, inputs of the wrong shape.
        CapabilityError: a kernel that cannot serve the encoder or decoder tokens, or a cross kernel without
            ``cross_attention`` (both name the kernels that can).
    """

    causal = False
    forecaster = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        L, T, c_t, c_x = series_shape(cfg, "Autoformer")
        if cfg.moving_avg % 2 == 0:
            raise ValueError(f"moving_avg={cfg.moving_avg} must be odd (an even kernel shortens the trend)")
        self.cfg, self.shape, self.label_len = cfg, (L, T, c_t, c_x), L // 2
        C, d = c_t + c_x, cfg.dim
        self.enc_embed, self.dec_embed = _circular_conv(C, d), _circular_conv(C, d)
        self.dropout = nn.Dropout(cfg.dropout)
        n_dec = cfg.num_decoder_layers or 1

        def shell(i: int, kernel=None, options=None) -> MultiHeadAttention:
            name, opts = cfg.layer_attention(i % cfg.num_layers)
            return MultiHeadAttention(d, cfg.num_heads, cfg.num_kv_heads, kernel=kernel or name,
                                      kernel_options=opts if kernel is None else options, head_dim=cfg.head_dim,
                                      bias=cfg.bias, dropout=cfg.dropout, max_seq_len=max(L, self.label_len + T))

        self.enc_attn = nn.ModuleList(shell(i) for i in range(cfg.num_layers))
        self.enc_ffn = nn.ModuleList(_FFN(cfg) for _ in range(cfg.num_layers))
        self.enc_norm = SeasonalNorm(cfg)
        self.dec_self = nn.ModuleList(shell(j) for j in range(n_dec))
        self.dec_cross = nn.ModuleList(shell(j, cfg.cross_attention, dict(cfg.cross_attention_options))
                                       for j in range(n_dec))
        self.dec_ffn = nn.ModuleList(_FFN(cfg) for _ in range(n_dec))
        self.dec_trend = nn.ModuleList(_circular_conv(d, C) for _ in range(n_dec))
        self.dec_norm = SeasonalNorm(cfg)
        self.proj = nn.Linear(d, C)
        self.revin = RevIN(C) if cfg.revin else None
        for conv in (self.enc_embed, self.dec_embed):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="leaky_relu")
        check_kernels(list(self.enc_attn), L, "Autoformer's encoder")
        check_kernels(list(self.dec_self), self.label_len + T, "Autoformer's decoder")
        for s in self.dec_cross:
            if not s.kernel.capabilities.cross_attention:
                raise CapabilityError(f"Autoformer's decoder cross-attends to the encoder, which attention "
                                      f"{s.kernel.name!r} cannot do; set model.cross_attention=softmax")

    def decomp(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return decompose(x, self.cfg.moving_avg)

    def encode(self, x: Tensor) -> Tensor:
        """``(B, L, C)`` -> encoder output ``(B, L, d)``."""
        h = self.dropout(self.enc_embed(x.transpose(1, 2)).transpose(1, 2))
        ctx = AttentionContext(causal=False)
        for attn, ffn in zip(self.enc_attn, self.enc_ffn):
            h, _ = self.decomp(h + attn(h, ctx))
            h, _ = self.decomp(h + ffn(h))
        return self.enc_norm(h)

    def decoder_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(seasonal_init, trend_init)``, both ``(B, L_lab + T, C)`` (module docstring)."""
        T, n = self.shape[1], self.label_len
        seasonal, trend = self.decomp(x)
        zeros = torch.zeros(x.shape[0], T, x.shape[2], dtype=x.dtype, device=x.device)
        mean = x.mean(1, keepdim=True).expand(-1, T, -1)
        return torch.cat([seasonal[:, -n:], zeros], 1), torch.cat([trend[:, -n:], mean], 1)

    def forward(self, inputs: Tensor) -> Tensor:
        L, T, c_t, c_x = self.shape
        check_inputs(inputs, L, c_t + c_x, "Autoformer")
        x = self.revin.norm(inputs) if self.revin is not None else inputs
        memory = self.encode(x)
        seasonal, trend = self.decoder_inputs(x)
        h = self.dropout(self.dec_embed(seasonal.transpose(1, 2)).transpose(1, 2))
        ctx = AttentionContext(causal=False)
        for attn, cross, ffn, conv in zip(self.dec_self, self.dec_cross, self.dec_ffn, self.dec_trend):
            h, t1 = self.decomp(h + attn(h, ctx))
            h, t2 = self.decomp(h + cross(h, AttentionContext(causal=False), memory=memory))
            h, t3 = self.decomp(h + ffn(h))
            trend = trend + conv((t1 + t2 + t3).transpose(1, 2)).transpose(1, 2)
        y = (trend + self.proj(self.dec_norm(h)))[:, -T:, :c_t]
        return self.revin.denorm(y) if self.revin is not None else y
