"""iTransformer (Liu, Hu, Zhang, Wu, Wang, Ma & Long 2024, "iTransformer: Inverted Transformers Are Effective for
Time Series Forecasting", arXiv 2310.06625) on the shared body, with any attention kernel.

Each variate's whole look-back window is one token (``Linear(L, d)``), attention mixes variates, the MLP acts per
variate token; no positional encoding, so permuting the variates permutes the output. Exogenous columns are tokens
too (they inform the targets through attention); ``Linear(d, T)`` projects every token and the target tokens are
kept. Non-stationary normalisation (RevIN without affine) per window and variate.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights
from ...layers.norms import build_norm
from .layers import RevIN, check_inputs, check_kernels, series_shape


class VariateEmbedding(nn.Module):
    """``(B, C, L)`` -> variate tokens ``(B, C, dim)``: one linear map of the whole window, dropout."""

    def __init__(self, cfg: ModelConfig, lookback: int):
        super().__init__()
        self.proj = nn.Linear(lookback, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, series: Tensor) -> Tensor:
        return self.dropout(self.proj(series))


class ITransformer(TransformerBody):
    """``inputs (B, L, C)`` -> forecast ``(B, T, C_t)``; every one of the ``C`` columns is a token.

    Raises:
        ValueError: unset series shape, ``position`` other than ``none`` (variates have no order), ``max_seq_len``
            below the variate count; at call, inputs of the wrong shape.
        CapabilityError: a kernel that cannot attend bidirectionally over the variate tokens (names those that can).
    """

    causal = False
    forecaster = True  # what the forecast objective trains (attnlab.train.build)

    def __init__(self, cfg: ModelConfig):
        L, T, c_t, c_x = series_shape(cfg, "iTransformer")
        if cfg.position != "none":
            raise ValueError(f"iTransformer's tokens are variates, which have no order: set position='none', got "
                             f"{cfg.position!r}")
        if cfg.max_seq_len < c_t + c_x:
            raise ValueError(f"{c_t + c_x} variate tokens but max_seq_len={cfg.max_seq_len}; raise max_seq_len")
        super().__init__(cfg, embed=VariateEmbedding(cfg, L))
        self.shape = (L, T, c_t, c_x)
        self.revin = RevIN(c_t + c_x) if cfg.revin else None
        self.out_norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias)  # the reference's final LayerNorm
        self.head = nn.Linear(cfg.dim, T)
        init_weights(self, cfg)
        check_kernels([b.attn for b in self.blocks], c_t + c_x, "iTransformer")

    def forward(self, inputs: Tensor) -> Tensor:
        L, T, c_t, c_x = self.shape
        check_inputs(inputs, L, c_t + c_x, "iTransformer")
        x = self.revin.norm(inputs) if self.revin is not None else inputs
        h = self.encode(None, inputs_embeds=self.embed(x.transpose(1, 2)))  # (B, C, d)
        y = self.head(self.out_norm(h)).transpose(1, 2)[..., :c_t]  # (B, T, C_t)
        return self.revin.denorm(y) if self.revin is not None else y
