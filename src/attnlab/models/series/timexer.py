"""TimeXer (Wang, Wu, Dong, Qiu, Zhang, Liu & Long 2024, "TimeXer: Empowering Transformers for Time Series
Forecasting with Exogenous Variables", NeurIPS, arXiv 2402.19072), with any attention kernel.

Each target variate is cut into non-overlapping patches of ``patch_size`` steps (``Linear(P, d)`` without bias plus
the sinusoidal table) followed by one learnable global token (``N(0, 1)``); each exogenous column's whole look-back
is one variate token (``Linear(L, d)``, as iTransformer). A layer: self-attention over [patches, global] (post-norm),
then cross-attention from the global tokens of a sample to its exogenous tokens (the shell's cross-attention,
``model.cross_attention``), then the MLP; the exogenous tokens are embedded once and not updated. A final LayerNorm
and a flatten head ``Linear(d (N + 1), T)``. Non-stationary normalisation over every column; the forecast is
denormalised with the target columns' statistics.

Historical exogenous values (the look-back of every exogenous column) are the exogenous input, as in the
reference code. Without exogenous columns every target column is also an exogenous token (the reference's
multivariate mode). With ``future_exog`` (our extension; the paper reads the look-back only) an exogenous column
known in advance over the horizon (calendar features, weather forecasts, schedules) is embedded from its look-back
and horizon together (``Linear(L + T, d)``); RevIN normalises the horizon values with the look-back's statistics.

The blocks come from the shared body's builder (:func:`~attnlab.models.transformer.build_blocks`: the schedule of
``attention`` per layer, post-norm); the cross-attention shells are added per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.norms import build_norm
from ...layers.positional import SinusoidalPositionalEmbedding
from ..config import ModelConfig
from ..transformer import build_blocks, init_weights
from .layers import RevIN, check_inputs, check_kernels, series_shape


class TimeXer(nn.Module):
    """``inputs (B, L, C)`` (targets first, then exogenous columns) and, with ``future_exog``, ``future_exog (B, T,
    C_x)`` -> forecast ``(B, T, C_t)``.

    Raises:
        ValueError: unset series shape, ``lookback`` not a multiple of ``patch_size`` (the reference silently drops
            the newest steps), ``prenorm`` (TimeXer is post-norm), ``future_exog`` without exogenous columns; at call,
            inputs of the wrong shape, or a missing (or unexpected) ``future_exog``.
        CapabilityError: a self-attention kernel that cannot serve the patch tokens, or a cross-attention kernel
            without ``cross_attention`` (both name the kernels that can).
    """

    causal = False
    forecaster = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        L, T, c_t, c_x = series_shape(cfg, "TimeXer")
        P = cfg.patch_size
        if L % P:
            raise ValueError(f"TimeXer needs lookback divisible by patch_size: {L} % {P} = {L % P} (the reference "
                             f"drops the newest steps); use patch_size in {[p for p in range(1, L + 1) if L % p == 0]}")
        if cfg.prenorm:
            raise ValueError("TimeXer's layers are post-norm: set prenorm=false")
        self.cfg, self.shape, self.patch_len, self.num_patches = cfg, (L, T, c_t, c_x), P, L // P
        d = cfg.dim
        self.patch_proj = nn.Linear(P, d, bias=False)
        self.register_buffer("pos", SinusoidalPositionalEmbedding(self.num_patches, d)(torch.arange(self.num_patches)),
                             persistent=False)
        self.global_token = nn.Parameter(torch.randn(c_t, d))
        self.uses_future_exog = bool(cfg.future_exog)
        self.exo_proj = nn.Linear(L + T if self.uses_future_exog else L, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = build_blocks(cfg)
        self.cross = nn.ModuleList(
            MultiHeadAttention(d, cfg.num_heads, cfg.num_kv_heads, kernel=cfg.cross_attention,
                               kernel_options=dict(cfg.cross_attention_options), head_dim=cfg.head_dim, bias=cfg.bias,
                               dropout=cfg.dropout) for _ in range(cfg.num_layers))
        self.cross_norms = nn.ModuleList(build_norm(cfg.norm, d, cfg.norm_eps, cfg.bias) for _ in range(cfg.num_layers))
        self.final_norm = build_norm(cfg.norm, d, cfg.norm_eps, cfg.bias)
        self.revin = RevIN(c_t + c_x) if cfg.revin else None
        self.head = nn.Linear(d * (self.num_patches + 1), T)
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        init_weights(self, cfg)
        nn.init.normal_(self.global_token)  # N(0, 1), the reference
        self._check_kernels()

    def _check_kernels(self) -> None:
        for b in self.blocks:
            b.attn.kernel.capabilities.require(b.attn.kernel.name, bidirectional=True)
        check_kernels([b.attn for b in self.blocks], self.num_patches + 1, "TimeXer")
        from ...attention.registry import get_attention_class, list_attention

        for shell in self.cross:
            if not shell.kernel.capabilities.cross_attention:
                can = [n for n in list_attention() if get_attention_class(n).capabilities.cross_attention]
                raise CapabilityError(f"TimeXer's global tokens cross-attend to the exogenous tokens, which attention "
                                      f"{shell.kernel.name!r} cannot do; set model.cross_attention to one of {can}")

    def forward(self, inputs: Tensor, future_exog: Tensor | None = None) -> Tensor:
        L, T, c_t, c_x = self.shape
        check_inputs(inputs, L, c_t + c_x, "TimeXer")
        x = self.revin.norm(inputs) if self.revin is not None else inputs
        B = x.shape[0]
        exo = x[..., c_t:] if c_x else x[..., :c_t]  # no exogenous columns: the targets are the variate tokens
        if self.uses_future_exog:
            exo = torch.cat([exo, self._future(future_exog, B)], dim=1)  # (B, L + T, C_x)
        elif future_exog is not None:
            raise ValueError("this TimeXer reads the look-back only (model.future_exog=false): do not pass "
                             "future_exog")
        ex = self.dropout(self.exo_proj(exo.transpose(1, 2)))  # (B, C_x, d), fixed across layers
        endo = x[..., :c_t].transpose(1, 2).reshape(B * c_t, self.num_patches, self.patch_len)  # (B*C_t, N, P)
        tokens = self.patch_proj(endo) + self.pos.to(x.dtype)
        g = self.global_token[None].expand(B, -1, -1).reshape(B * c_t, 1, -1)
        h = self.dropout(torch.cat([tokens, g], dim=1))  # (B*C_t, N+1, d), the global token last
        for block, cross, norm in zip(self.blocks, self.cross, self.cross_norms):
            h = block.attn_norm(h + block.attn(h, AttentionContext(causal=False)))
            glob = h[:, -1].reshape(B, c_t, -1)  # the C_t global tokens of a sample query its exogenous tokens
            glob = norm(glob + cross(glob, AttentionContext(causal=False), memory=ex))
            h = torch.cat([h[:, :-1], glob.reshape(B * c_t, 1, -1)], dim=1)  # patch tokens skip the cross norm
            h = block.mlp_norm(h + block.mlp(h))
        h = self.final_norm(h).reshape(B, c_t, self.num_patches + 1, -1).transpose(2, 3).flatten(2)  # d-major
        y = self.head_dropout(self.head(h)).transpose(1, 2)  # (B, T, C_t)
        return self.revin.denorm(y) if self.revin is not None else y

    def _future(self, future_exog: Tensor | None, batch: int) -> Tensor:
        """The horizon's exogenous values, checked and normalised like the look-back's."""
        L, T, c_t, c_x = self.shape
        if future_exog is None:
            raise ValueError("this TimeXer reads exogenous values over the horizon (model.future_exog): pass "
                             f"future_exog of shape (batch, {T}, {c_x})")
        if future_exog.shape != (batch, T, c_x) or not future_exog.is_floating_point():
            raise ValueError(f"TimeXer expects future_exog of shape ({batch}, {T}, {c_x}) (horizon, exogenous "
                             f"columns), got {tuple(future_exog.shape)} {future_exog.dtype}")
        return self.revin.norm_like(future_exog, slice(c_t, None)) if self.revin is not None else future_exog
