"""Perturbed GQA (PGQA): uniform GQA plus structured noise subtracted from each group's output.

Khan et al. 2024, "Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention"
(arXiv 2408.08454; official code ``zohaib-khan5040/key-driven-gqa``, ``modules/attention/pgqa.py``).

Paper vs code: the abstract says noise is subtracted "from the attention maps"; the reference code
subtracts it from each group's attention **output**. We implement the code.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.gqa_groups import sdpa
from ..masks import context_mask
from ..reference import expand_kv_heads
from ..registry import register_attention

STATS = ("auto", "row", "token")


def _standardise(u: Tensor) -> Tensor:
    """Rows (last axis) to mean 0, unbiased std 1; a row with std 0 is divided by 1."""
    u = u - u.mean(-1, keepdim=True)
    std = u.std(-1, keepdim=True)
    return u / torch.where(std > 0, std, torch.ones_like(std))


def group_noise(r: int, width: int, lead: tuple[int, ...], generator, device, dtype) -> Tensor:
    """``U (r, *lead, width)``: Uniform(0, 1) (the reference helper says "gaussian" but draws uniform),
    ``U[i, ..., i] = 0`` for ``i < min(r, width)``, rows standardised."""
    u = torch.rand((r, *lead, width), generator=generator, device=device, dtype=torch.float32)
    d = min(r, width)
    idx = torch.arange(d, device=device)
    u[idx, ..., idx] = 0.0
    return _standardise(u).to(dtype)


def perturb_group(z: Tensor, u: Tensor) -> Tensor:
    """``z - (u * std(z) + mean(z))`` with row statistics of ``z`` over the last axis; ``u`` broadcasts
    over batch. Every row of the result has mean exactly ``mean(z) - mean(z) = 0`` (up to fp error)."""
    mu, sigma = z.mean(-1, keepdim=True), z.std(-1, keepdim=True)
    return z - (u * sigma + mu)


@register_attention("pgqa")
class PGQAttention(AttentionKernel):
    """Perturbed Grouped-Query Attention (Khan et al. 2024): GQA minus rescaled random noise per group.

    For each K/V group ``g`` with output ``O_g (B, r, T, Dh)``: ``Z = O_g`` flattened to ``(B, r, T*Dh)``;
    ``U ~ Uniform(0,1)^(r, T*Dh)`` with ``U[i, i] = 0``, rows standardised; output
    ``Z - (U * std(Z) + mean(Z))`` (row statistics per batch row and head; ``U`` shared by the batch,
    one draw per group per call).

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, G, S, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        stats: ``"row"`` (faithful): statistics and noise over the whole ``T*Dh`` row, so every
            position's output depends on every other position's. ``"token"`` [choice]: per position,
            over ``Dh`` (noise ``(r, T, Dh)``, ``U[i, t, i] = 0``), which keeps causal models causal.
            ``"auto"`` (default): ``"token"`` when causal, else ``"row"``.
        apply_in_eval: perturb in eval mode too (``True``, as the reference).
        perturb: ``False`` switches the noise off (plain GQA).
        seed: seed of the module's own generator (``ctx.generator`` wins if given). The generator
            advances on every call, as the reference draws fresh noise every forward.
        dropout: attention dropout (training only).
        scale: score scale, default ``1/sqrt(Dh)``.

    With a key padding mask, outputs at padded query positions are zeroed before the row statistics,
    so padding content never reaches valid positions. Row statistics span packed documents, so
    ``document_ids`` need ``stats="token"``. No KV-cache decoding: fresh noise per call cannot
    reproduce the noise a full-sequence forward would have drawn.

    Raises:
        ValueError: bad option values or shapes; CapabilityError: ``document_ids`` with row statistics.
    """

    capabilities = Capabilities(exact=False, packed=False, kv_cache=False, complexity="O(N^2)")

    def __init__(self, stats: str = "auto", apply_in_eval: bool = True, perturb: bool = True, seed: int = 0,
                 dropout: float = 0.0, scale: float | None = None):
        super().__init__(scale=scale)
        if stats not in STATS:
            raise ValueError(f"pgqa: stats={stats!r} is not one of {STATS}")
        self.stats, self.apply_in_eval, self.perturb, self.seed, self.dropout = stats, apply_in_eval, perturb, seed, dropout
        if stats != "auto":  # row statistics mix positions (not causal) and documents (not packed)
            self.capabilities = dataclasses.replace(type(self).capabilities, packed=stats == "token",
                                                    causal=stats == "token")
        self._generator: torch.Generator | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        B, H, T, D = q.shape
        G = k.shape[1]
        keep = context_mask(ctx, T, k.shape[2], q.device)
        p = self.dropout if self.training else 0.0
        out = sdpa(q, expand_kv_heads(k, H), expand_kv_heads(v, H), keep, ctx.attn_bias,
                   self.softmax_scale(D), p)  # (B, H, T, Dh)
        if not self.perturb or (not self.training and not self.apply_in_eval):
            return out
        return self.perturb_output(out, G, ctx)

    def perturb_output(self, out: Tensor, num_groups: int, ctx: AttentionContext) -> Tensor:
        """Apply the per-group perturbation to a GQA output ``(B, H, T, Dh)``."""
        B, H, T, D = out.shape
        r = H // num_groups
        stats = self.stats if self.stats != "auto" else ("token" if ctx.causal else "row")
        if ctx.key_padding_mask is not None:
            valid_q = ctx.key_padding_mask[:, -T:]  # (B, T): the queries are the last T keys
            out = out * valid_q[:, None, :, None].to(out.dtype)
        gen = self.seeded_generator(ctx, out.device)
        groups = out.view(B, num_groups, r, T, D)  # (B, G, r, T, Dh), contiguous GQA groups
        res = []
        for g in range(num_groups):
            z = groups[:, g]  # (B, r, T, Dh)
            if stats == "row":
                u = group_noise(r, T * D, (), gen, out.device, out.dtype)  # (r, T*Dh)
                res.append(perturb_group(z.reshape(B, r, T * D), u).view(B, r, T, D))
            else:
                u = group_noise(r, D, (T,), gen, out.device, out.dtype)  # (r, T, Dh)
                res.append(perturb_group(z, u))
        return torch.cat(res, dim=1)  # (B, H, T, Dh)
