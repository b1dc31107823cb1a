"""Standard scaled dot-product attention ("Attention Is All You Need", Vaswani et al. 2017).

Runs on PyTorch's fused ``scaled_dot_product_attention`` (Flash / memory-efficient / math backends
chosen by PyTorch) for MHA, GQA and MQA (GQA paper, Ainslie et al. 2023: contiguous head groups,
``repeat_interleave`` semantics), with causal, padding and packed-sequence masks and an optional
additive position bias (ALiBi, T5 relative bias), and cross-attention to a memory of another length
(``ctx.cross``, with the memory's padding and packing). On x86-64 CPUs, causal, full and packed-document
self-attention without other masks, bias or dropout runs on attnlab's native kernels (:mod:`attnlab.native`):
in bfloat16 on AMX tiles, forward and backward (AVX-512 BF16 for inference), same result to bf16
precision; in float32 on AVX-512 FMA, forward and backward, for documents up to 1,024 tokens, same result to
fp32 rounding; a decoding step (at most 16 queries per head, any masks and bias, fp32 or bf16, no gradient) on
attnlab's native decoding kernel (:mod:`attnlab.native.decode`). PyTorch's SDPA takes every other case.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ...native import decode
from ...native.attention import documents_attention
from ..base import AttentionKernel, fully_masked_rows, zero_if_empty
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.documents import document_spans, per_document_attention, per_document_pays
from ..masks import context_mask
from ..reference import expand_kv_heads
from ..registry import register_attention


@register_attention("softmax")
class SoftmaxAttention(AttentionKernel):
    """Exact softmax attention on the fused SDPA kernel.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        dropout: attention-probability dropout, applied in training mode only.
        scale: score scale, default ``1/sqrt(Dh)``.

    Raises:
        ValueError: mismatched shapes or masks (message names the expected shape).
    """

    capabilities = Capabilities(complexity="O(N^2)", cross_attention=True)

    def __init__(self, dropout: float = 0.0, scale: float | None = None):
        super().__init__(scale=scale)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        plain_causal = ctx.causal and T == S and not ctx.has_masks and ctx.attn_bias is None
        # causal / documents at most, queries aligned with keys (not cross-attention): the native and per-document paths
        unbiased = T == S and not ctx.cross and ctx.key_padding_mask is None and ctx.attn_bias is None
        # packed sequences: the runs of each document, None when ids repeat in separate runs
        spans = document_spans(ctx.document_ids) if unbiased and ctx.document_ids is not None else None
        if unbiased and dropout_p == 0.0 and (spans or ctx.document_ids is None):
            # bf16 / fp32 on x86-64 CPUs (attnlab.native picks the path); None when it cannot run here
            out = documents_attention(q, k, v, spans, causal=ctx.causal, scale=self.scale)
            if out is not None:
                return out
        if spans is not None and per_document_pays(spans, T, q.shape[1] * q.shape[3]):
            k, v = expand_kv_heads(k, q.shape[1]), expand_kv_heads(v, q.shape[1])  # (B, H, S, Dh)
            return per_document_attention(q, k, v, spans, causal=ctx.causal, scale=self.scale, dropout_p=dropout_p)
        keep = None if plain_causal else context_mask(ctx, T, S, q.device)
        if T <= decode.MAX_QUERIES and not plain_causal and dropout_p == 0.0:
            # a decoding step (few queries against a cache): the native kernel, None where it cannot run
            out = decode.attention(q, k, v, keep, ctx.attn_bias, scale=self.scale)
            if out is not None:
                return out
        empty = fully_masked_rows(keep)
        if empty is not None:
            # give fully masked rows one dummy key so softmax stays finite; their output is zeroed below
            keep = keep | empty
        mask = keep
        if ctx.attn_bias is not None:
            bias = ctx.attn_bias.to(q.dtype)
            mask = bias if keep is None else bias.masked_fill(~keep, float("-inf"))
        if q.shape[1] != k.shape[1]:
            k = expand_kv_heads(k, q.shape[1])  # (B, H, S, Dh)
            v = expand_kv_heads(v, q.shape[1])
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=plain_causal, scale=self.scale
        )
        return zero_if_empty(out, empty)
