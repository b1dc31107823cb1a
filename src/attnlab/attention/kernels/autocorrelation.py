"""Auto-Correlation (Wu, Xu, Wang & Long 2021, "Autoformer: Decomposition Transformers with Auto-Correlation for
Long-Term Series Forecasting", NeurIPS, arXiv 2106.13008), as a kernel of the registry so any model can use it and
Autoformer-style models can swap it for any other.

Per (batch, head, channel) the correlation of queries and keys at every circular lag,
``R(τ) = Σ_t q[(t + τ) mod T] k[t]``, is computed with FFTs (``irfft(rfft(q) conj(rfft(k)), n=T)``, the official
``n=T``); ``R`` is averaged over heads and channels (``R̄_b(τ)``), the ``top_k = max(1, int(factor ln T))`` delays
are chosen, their scores are softmax-normalised, and the output is the weighted sum of the values rolled by each
delay: ``out[t] = Σ_i w_i V[(t + τ_i) mod T]``. No ``1/sqrt(E)`` scale, no normalisation of ``R`` (the reference).

In training the reference chooses the delays on the batch mean (shared by the batch, so one sample's output depends
on the others); in eval each sample chooses its own. ``per_sample_delays=True`` uses per-sample delays always.
``attention_map`` is the exact ``(B, H, T, T)`` mixing map of those shifts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..reference import expand_kv_heads
from ..registry import register_attention


def lag_correlation(q: Tensor, k: Tensor) -> Tensor:
    """``R (B, H, T, E)`` with ``R[..., τ, :] = Σ_t q[..., (t + τ) mod T, :] k[..., t, :]`` for ``q, k (B, H, T, E)``,
    by FFT along time (float32 at least: FFTs have no bfloat16)."""
    T = q.shape[2]
    dtype = torch.promote_types(q.dtype, torch.float32)
    fq = torch.fft.rfft(q.to(dtype), dim=2)
    fk = torch.fft.rfft(k.to(dtype), dim=2)
    return torch.fft.irfft(fq * torch.conj(fk), n=T, dim=2)


@register_attention("autocorrelation")
class AutoCorrelation(AttentionKernel):
    """Autoformer's Auto-Correlation (module docstring). Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, T, Dh)`` ->
    ``(B, H, T, Dh)``; self-attention only, bidirectional.

    Args:
        factor: ``c`` of ``top_k = int(c ln T)`` (Autoformer's ETTh1 scripts use 3; clamped to ``[1, T]``).
        per_sample_delays: choose delays per sample in training too (batch-independent; not the reference).

    Raises:
        ValueError: ``factor <= 0``; keys of another length than the queries.
    """

    capabilities = Capabilities(causal=False, key_padding_mask=False, packed=False, kv_cache=False, attn_bias=False,
                                exact=False, batch_independent=False, complexity="O(N log N)")

    def __init__(self, factor: float = 3.0, per_sample_delays: bool = False):
        super().__init__()
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.factor, self.per_sample_delays = float(factor), per_sample_delays

    def top_k(self, T: int) -> int:
        return min(T, max(1, int(self.factor * math.log(T)))) if T > 1 else 1

    def delays(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(delays (B, K) long, weights (B, K))`` of queries ``q`` and keys ``k`` (module docstring)."""
        T = q.shape[2]
        if k.shape[2] != T:
            raise ValueError(f"auto-correlation needs keys as long as the queries ({T}), got {k.shape[2]}")
        score = lag_correlation(q, expand_kv_heads(k, q.shape[1])).mean(dim=(1, 3))  # (B, T): mean over heads, E
        K = self.top_k(T)
        if self.training and not self.per_sample_delays:
            idx = score.mean(0).topk(K).indices  # (K,) shared by the batch (reference training path)
            tau = idx.expand(score.shape[0], K)
            w = score.gather(1, tau)
        else:
            w, tau = score.topk(K, dim=1)
        return tau, torch.softmax(w, dim=-1)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        tau, w = self.delays(q, k)
        v = expand_kv_heads(v, q.shape[1])
        T = q.shape[2]
        rows = (torch.arange(T, device=q.device)[None, None] + tau[..., None]) % T  # (B, K, T) source rows
        out = torch.zeros_like(v)
        for i in range(tau.shape[1]):  # K = O(log T) shifted copies
            src = rows[:, i][:, None, :, None].expand(-1, v.shape[1], -1, v.shape[3])  # (B, H, T, Dh)
            out = out + w[:, i, None, None, None].to(v.dtype) * v.gather(2, src)
        return out

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        tau, w = self.delays(q, k)
        B, H, T = q.shape[0], q.shape[1], q.shape[2]
        rows = (torch.arange(T, device=q.device)[None, None] + tau[..., None]) % T  # (B, K, T)
        m = torch.zeros(B, T, T, dtype=q.dtype, device=q.device)
        for i in range(tau.shape[1]):
            m.scatter_add_(2, rows[:, i, :, None], w[:, i, None, None].expand(B, T, 1).to(q.dtype))
        return m[:, None].expand(B, H, T, T)
