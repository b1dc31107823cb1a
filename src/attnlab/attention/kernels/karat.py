"""Kolmogorov-Arnold Attention (Fourier-KArAt): a learnable operator in place of softmax.

Maity et al. 2025, "Kolmogorov-Arnold Attention: Is Learnable Attention Better For Vision
Transformers?" (project page ``MaitySubhajit/KArAt``, ``docs/index.html``; no code released).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..base import MixingMapKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..masks import context_mask
from ..reference import expand_kv_heads, masked_softmax
from ..registry import register_attention

MODES = ("blockwise", "universal")
BASES = ("zero", "silu", "identity")
NORMALIZE = ("none", "l1", "softmax")


class FourierOperator(nn.Module):
    """One modular Fourier-KArAt operator per head: ``N -> r`` KAN layer, then ``W (N x r)`` back to ``N``.

    ``u_p = sum_q [w_pq b(a_q) + sum_m alpha_pqm cos(m a_q) + beta_pqm sin(m a_q)]``, ``sigma(a) = W u``.
    Parameters per head: ``2*G*N*r + N*r`` (plus ``r*N`` base weights when ``base != "zero"``).
    """

    def __init__(self, num_heads: int, seq_len: int, rank: int, grid_size: int, base: str, init_std: float):
        super().__init__()
        self.num_heads, self.seq_len, self.rank, self.grid_size, self.base = num_heads, seq_len, rank, grid_size, base
        self.alpha = nn.Parameter(torch.randn(num_heads, rank, seq_len, grid_size) * init_std)  # cos coefficients
        self.beta = nn.Parameter(torch.randn(num_heads, rank, seq_len, grid_size) * init_std)  # sin coefficients
        # [choice] W is not specified: scaled so that sigma(a) entries start at ~1/N (like a uniform row)
        coef_std = init_std if init_std > 0 else 1.0
        w_std = 1.0 / (seq_len * coef_std * math.sqrt(rank * seq_len * grid_size))
        self.W = nn.Parameter(torch.randn(num_heads, seq_len, rank) * w_std)
        self.base_weight = (nn.Parameter(torch.randn(num_heads, rank, seq_len) / math.sqrt(seq_len))
                            if base != "zero" else None)

    def signature(self) -> tuple:
        return (self.num_heads, self.seq_len, self.rank, self.grid_size, self.base)

    def forward(self, a: Tensor, keep: Tensor | None) -> Tensor:
        """Rows ``a (B, H, T, S)`` (``S <= N``; masked entries excluded) -> ``sigma(a) (B, H, T, S)``."""
        S = a.shape[-1]
        m = torch.arange(1, self.grid_size + 1, device=a.device, dtype=a.dtype)  # (G,)
        if keep is not None:
            a = a.masked_fill(~keep, 0.0)
        ma = a[..., None] * m  # (B, H, T, S, G)
        cos, sin = torch.cos(ma), torch.sin(ma)
        if keep is not None:
            w = keep[..., None].to(a.dtype)  # masked keys contribute nothing to u
            cos, sin = cos * w, sin * w
        u = torch.einsum("bhtsg,hpsg->bhtp", cos, self.alpha[:, :, :S]) \
            + torch.einsum("bhtsg,hpsg->bhtp", sin, self.beta[:, :, :S])  # (B, H, T, r)
        if self.base_weight is not None:
            b = torch.nn.functional.silu(a) if self.base == "silu" else a
            if keep is not None:
                b = b.masked_fill(~keep, 0.0)
            u = u + torch.einsum("bhts,hps->bhtp", b, self.base_weight[:, :, :S])
        return torch.einsum("bhtp,hsp->bhts", u, self.W[:, :S])  # (B, H, T, S)


@register_attention("karat")
class KArAttention(MixingMapKernel):
    """Fourier-KArAt (Maity et al. 2025): ``O = sigma(Q K^T / sqrt(Dh)) V`` with a learnable row operator.

    Each score row ``a (S,)`` goes through ``r`` learnable Fourier KAN units and a learnable ``N x r``
    map back to length ``N`` (the modular KArAt of the paper). Not an efficient attention: memory is
    ``O(B*H*T*S*G)``. Masked scores are excluded, not set to ``-inf`` (``cos(-inf)`` is undefined):
    they are zeroed, contribute nothing to ``u``, and their columns of ``sigma`` are zeroed [choice].
    Sequences shorter than ``N`` use the first ``S`` coefficient columns, which is exactly the same as
    padding the row to ``N`` with masked keys; longer ones raise.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)``, ``S <= seq_len`` -> ``(B, H, T, Dh)``.

    Args:
        rank: ``r`` KAN units per row (not pinned by the paper; 12 from the authors' talk, [memory]).
        grid_size: Fourier frequencies ``G`` (3 = "G3", best for ViT-Tiny/Small; 1 for ViT-Base).
        mode: ``"blockwise"`` (one operator per layer and head) or ``"universal"`` (one operator per
            head shared by all layers of a model: models built by attnlab tie them, see
            :meth:`link_layers`).
        base: base activation ``b(x)``: ``"zero"`` (best in the paper), ``"silu"`` or ``"identity"``.
        normalize: ``"none"`` (default, the project page's formula), ``"l1"`` (divide each row by its
            absolute sum) or ``"softmax"`` (softmax of ``sigma`` over visible keys) [choice].
        init_std: std of the Fourier coefficients (paper: N(0, 1)).
        seq_len: ``N``; default the model's ``max_seq_len``.
        scale: score scale, default ``1/sqrt(Dh)``. num_heads, max_seq_len: structural.

    Raises:
        ValueError: bad option values, more keys than ``seq_len``, head count mismatch.
    """

    capabilities = Capabilities(attn_bias=False, exact=False, complexity="O(N^2 * r * G)")

    def __init__(self, rank: int = 12, grid_size: int = 3, mode: str = "blockwise", base: str = "zero",
                 normalize: str = "none", init_std: float = 1.0, seq_len: int | None = None,
                 scale: float | None = None, num_heads: int = 4, max_seq_len: int | None = None):
        super().__init__(scale=scale)
        for name, val, valid in (("mode", mode, MODES), ("base", base, BASES), ("normalize", normalize, NORMALIZE)):
            if val not in valid:
                raise ValueError(f"karat: {name}={val!r} is not one of {valid}")
        seq_len = seq_len or max_seq_len
        if not seq_len:
            raise ValueError("karat needs seq_len (or the model's max_seq_len): the operator is tied to N")
        if rank < 1 or grid_size < 1:
            raise ValueError(f"karat: rank and grid_size must be >= 1, got rank={rank}, grid_size={grid_size}")
        self.mode, self.normalize, self.num_heads, self.seq_len = mode, normalize, num_heads, seq_len
        self.operator = FourierOperator(num_heads, seq_len, rank, grid_size, base, init_std)

    @staticmethod
    def link_layers(kernels: list["KArAttention"]) -> None:
        """Universal mode: every universal KArAt layer of one model shares the first one's operator."""
        shared: dict[tuple, FourierOperator] = {}
        for k in kernels:
            if k.mode == "universal":
                k.operator = shared.setdefault(k.operator.signature(), k.operator)

    def mixing_weights(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> Tensor:
        """``sigma(A)`` ``(B, H, T, S)`` with masked columns zeroed and the chosen normalisation."""
        T, S = q.shape[2], k.shape[2]
        if S > self.seq_len:
            raise ValueError(f"karat was built for N={self.seq_len} keys but got {S}; build it with seq_len >= {S}")
        if q.shape[1] != self.num_heads:
            raise ValueError(f"karat was built for num_heads={self.num_heads}, got q with {q.shape[1]} heads")
        keep = context_mask(ctx, T, S, q.device)
        scores = torch.einsum("bhtd,bhsd->bhts", q, expand_kv_heads(k, q.shape[1])).float() * self.softmax_scale(q.shape[-1])
        sig = self.operator(scores, keep)
        if keep is not None:
            sig = sig.masked_fill(~keep, 0.0)
        if self.normalize == "l1":
            sig = sig / sig.abs().sum(-1, keepdim=True).clamp_min(1e-6)
        elif self.normalize == "softmax":
            sig = masked_softmax(sig, keep)
        return sig

