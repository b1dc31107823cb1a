"""A classifier of irregularly sampled, multi-channel series on the shared body, with any kernel that honours a
padding mask (the representation "grid + masks" with continuous time, for light curves and ICU stays).

One token per time point of a sample: ``Linear([values ⊙ observed, observed])`` (a channel that was not measured
contributes nothing but its mask bit; Che et al. 2018's masking indicator) plus a continuous-time sinusoidal
encoding of the real timestamp, ``PE(t)_{2i} = sin(t / τ^{2i/d})``, ``PE(t)_{2i+1} = cos(t / τ^{2i/d})`` (the
Transformer's table at real-valued positions, ``τ = 10⁴``; Vaswani et al. 2017; as STraTS, Tipirneni & Reddy 2022, and
t2, Allam & McEwen 2023, use time encodings instead of positions); padding slots are masked out of attention
(``key_padding_mask``) and of the mean pooling; a linear head gives class logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..pooling import pool
from ..transformer import TransformerBody, init_weights


def continuous_time_encoding(times: Tensor, dim: int, base: float = 1e4, scale: float = 1.0) -> Tensor:
    """``times (...)`` real -> ``(..., dim)``: the sinusoidal table evaluated at ``times * scale`` (at integer times
    and ``scale = 1`` it is the standard position table)."""
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=times.device) * (-math.log(base) / dim))
    ang = (times.float() * scale)[..., None] * inv  # (..., dim/2)
    out = torch.zeros(*times.shape, dim, device=times.device)
    out[..., 0::2] = torch.sin(ang)
    out[..., 1::2] = torch.cos(ang[..., : dim // 2])
    return out


class ObservationEmbedding(nn.Module):
    """``values, observed (B, S, C)``, ``times (B, S)`` -> tokens ``(B, S, dim)``."""

    def __init__(self, cfg: ModelConfig, channels: int, time_scale: float):
        super().__init__()
        self.proj = nn.Linear(2 * channels, cfg.dim)
        self.dim, self.time_scale = cfg.dim, time_scale
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, values: Tensor, observed: Tensor, times: Tensor) -> Tensor:
        m = observed.to(values.dtype)
        x = self.proj(torch.cat([values * m, m], dim=-1))  # unobserved values are multiplied away
        return self.dropout(x + continuous_time_encoding(times, self.dim, scale=self.time_scale).to(x.dtype))


class IrregularClassifier(TransformerBody):
    """``(times (B, S), values (B, S, C), observed (B, S, C), padding (B, S))`` -> logits ``(B, num_classes)``.

    Config fields: ``num_variates`` (channels ``C``), ``num_classes``, the body's fields. Times enter the encoding as
    given (``time_scale = 1``: measured on the synthetic task, scaling times by 10 or 100 made the encoding too fast
    to learn from in 300 steps); rescale your timestamps to units of that order.

    Raises:
        ValueError: ``num_variates`` or ``num_classes`` unset; at call, mismatched shapes.
        CapabilityError: a kernel without ``key_padding_mask`` (padding slots must not be attended), at build.
    """

    causal = False
    irregular_classifier = True  # what the irregular objective trains (attnlab.train.build)
    time_scale = 1.0

    def __init__(self, cfg: ModelConfig):
        if not cfg.num_variates or not cfg.num_classes:
            raise ValueError("IrregularClassifier needs model.num_variates (channels) and model.num_classes")
        super().__init__(cfg, embed=ObservationEmbedding(cfg, cfg.num_variates, self.time_scale))
        for block in self.blocks:
            block.attn.kernel.capabilities.require(block.attn.kernel.name, key_padding_mask=True, bidirectional=True)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        init_weights(self, cfg)

    def forward(self, times: Tensor, values: Tensor, observed: Tensor, padding: Tensor) -> Tensor:
        B, S, C = values.shape
        if times.shape != (B, S) or observed.shape != values.shape or padding.shape != (B, S) or C != self.cfg.num_variates:
            raise ValueError(f"expected times (B, S), values/observed (B, S, {self.cfg.num_variates}), padding (B, S); "
                             f"got {tuple(times.shape)}, {tuple(values.shape)}, {tuple(observed.shape)}, "
                             f"{tuple(padding.shape)}")
        observed = observed & padding[..., None]  # nothing in a padding slot counts
        tokens = self.embed(values, observed, times)
        hidden = self.encode(None, inputs_embeds=tokens, key_padding_mask=padding)
        return self.head(pool(hidden, padding, "mean"))
