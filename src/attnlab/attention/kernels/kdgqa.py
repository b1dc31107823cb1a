"""Key-Distributed GQA (KDGQA): query heads per K/V head proportional to the key norms.

Khan et al. 2024, "Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention"
(arXiv 2408.08454; official code ``zohaib-khan5040/key-driven-gqa``, ``modules/attention/kdgqa.py``).
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.gqa_groups import grouped_attention, grouped_weights, group_map, key_norms, minmax_allocation
from ..masks import context_mask
from ..registry import register_attention

NORM_SCOPES = ("auto", "sequence", "prefix")


@register_attention("kdgqa")
class KDGQAttention(AttentionKernel):
    """Key-Distributed Grouped-Query Attention (Khan et al. 2024).

    On every call: ``n_g = sum_b ||K[b, g]||_F``; min-max normalise; ``a_g = round(H * n~_g / sum n~)``;
    repair the total greedily (argmax down, argmin up); query heads go to K/V heads in contiguous
    chunks of sizes ``a`` (zero-size groups happen and are supported). The allocation is not
    differentiable; gradients flow through the attention only.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, G, S, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        per_sample: ``False`` (faithful default): norms are summed over the batch, so one sample's
            output depends on the other samples (capability ``batch_independent=False``).
            ``True``: one allocation per batch row.
        norm_scope: which keys feed the norms. ``"sequence"`` (faithful, ViT setting): every
            non-padded key of the query's document. ``"prefix"`` [choice]: only the keys each query
            may see, so causal models never read the future (one allocation per position, costing
            ``G`` x the attention). ``"auto"`` (default): ``"prefix"`` when causal, else ``"sequence"``.
        dropout: attention dropout (training only).
        scale: score scale, default ``1/sqrt(Dh)``.

    Attributes:
        last_allocation: long ``(B|1, T|1, G)`` allocation of the last call (for inspection).

    Raises:
        ValueError: bad option value or shapes (messages name the valid values).
    """

    capabilities = Capabilities(exact=False, batch_independent=False, complexity="O(N^2) (G x with prefix norms)")

    def __init__(self, per_sample: bool = False, norm_scope: str = "auto", dropout: float = 0.0,
                 scale: float | None = None):
        super().__init__(scale=scale)
        if norm_scope not in NORM_SCOPES:
            raise ValueError(f"kdgqa: norm_scope={norm_scope!r} is not one of {NORM_SCOPES}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"kdgqa: dropout must be in [0, 1), got {dropout}")
        self.per_sample, self.norm_scope, self.dropout = per_sample, norm_scope, dropout
        # whole-sequence norms read future keys: not causal (the default "auto" switches to prefix norms)
        self.capabilities = dataclasses.replace(type(self).capabilities, batch_independent=per_sample,
                                                causal=norm_scope != "sequence")
        self.last_allocation: Tensor | None = None

    def allocation(self, k: Tensor, ctx: AttentionContext, T: int, num_heads: int) -> Tensor:
        """Allocation ``(B|1, T|1, G)`` of ``num_heads`` query heads to the K/V heads of ``k (B, G, S, Dh)``."""
        scope = self.norm_scope if self.norm_scope != "auto" else ("prefix" if ctx.causal else "sequence")
        norm_ctx = ctx if scope == "prefix" else dataclasses.replace(ctx, causal=False)
        keep = context_mask(norm_ctx, T, k.shape[2], k.device)  # (B|1, 1, T, S) or None
        if keep is not None and norm_ctx.document_ids is None and not norm_ctx.causal:
            keep = keep[:, :, :1]  # padding only: the same keys for every query, (B, 1, 1, S)
        n = key_norms(k.detach(), keep)  # (B, G, T|1)
        if not self.per_sample:
            n = n.sum(0, keepdim=True)  # (1, G, T|1): the reference sums over the batch
        return minmax_allocation(n.transpose(1, 2), num_heads)  # (B|1, T|1, G)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        a = self.allocation(k, ctx, T, q.shape[1])
        self.last_allocation = a
        keep = context_mask(ctx, T, S, q.device)
        p = self.dropout if self.training else 0.0
        return grouped_attention(q, k, v, group_map(a, q.shape[1]), keep, ctx.attn_bias,
                                 self.softmax_scale(q.shape[-1]), p)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        a = self.allocation(k, ctx, q.shape[2], q.shape[1])
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        return grouped_weights(q, k, group_map(a, q.shape[1]), keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]))
