"""Deconstructing Attention: variants relaxing sequence dependency and current-QK (spec 15.1).

Xue, Moosavi, Aletras 2025, "Deconstructing Attention: Investigating Design Principles for Effective
Language Modeling" (arXiv 2510.11602). All three are softmax attention whose queries and keys come
from somewhere other than the current layer's hidden state; values always come from it.

* ``random_qk`` (RndEmbQK): a fixed random embedding stream ``eps ~ N(0, sigma^2)`` of shape
  ``(max_seq_len, dim)`` runs through the **same** Transformer stack in parallel; at layer ``l``
  ``Q, K = X_l W_{Q,K}`` from that stream -> input-independent attention maps.
* ``fixed_seq_qk`` (FixedSeqQK): the same with the stream ``Emb(t_s)`` of a fixed token sequence.
* ``static_emb_qk`` (StaticEmbQK): ``Q, K = e W_{Q,K}`` with ``e`` the static input embeddings of the
  actual sequence -> input-dependent but not contextualised.

How the stream reaches the kernel: attnlab models append one extra batch row per stream
(:mod:`attnlab.attention.qk_streams`); those rows run ordinary attention on themselves, and a
``random_qk``/``fixed_seq_qk`` layer gives every real row the stream row's queries and keys. The
context carries ``extra["qk_stream_rows"] = {stream_key: row}`` and ``extra["num_main_rows"]``.
Called outside such a model (no stream in the context), the two kernels fall back to their own fixed
random queries and keys ``(H, max_seq_len, Dh)``: still input-independent, but not passed through a stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionKernel, as_context
from .capabilities import Capabilities
from .context import AttentionContext
from .gqa_groups import sdpa
from .masks import context_mask
from .reference import expand_kv_heads, reference_attention
from .registry import register_attention


class _StreamQK(AttentionKernel):
    """Softmax attention with queries/keys from a fixed stream row (see the module docstring)."""

    capabilities = Capabilities(kv_cache=False, exact=False, complexity="O(N^2)")
    stream_kind = "?"

    def __init__(self, seed: int = 0, num_heads: int = 4, num_kv_heads: int | None = None, head_dim: int = 16,
                 max_seq_len: int = 256, scale: float | None = None):
        super().__init__(scale=scale)
        self.seed, self.max_seq_len = seed, max_seq_len
        gen = torch.Generator().manual_seed(seed)
        hkv = num_kv_heads or num_heads
        # standalone fallback only: fixed random queries and keys (non-persistent, rebuilt from the seed)
        self.register_buffer("q_fixed", torch.randn(num_heads, max_seq_len, head_dim, generator=gen), persistent=False)
        self.register_buffer("k_fixed", torch.randn(hkv, max_seq_len, head_dim, generator=gen), persistent=False)

    @property
    def qk_stream_key(self) -> tuple:
        """Identifies the stream this layer reads; layers with equal keys share one stream row."""
        raise NotImplementedError

    def stream_qk(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """Queries ``(B, H, T, Dh)`` and keys ``(B, Hkv, S, Dh)`` to use for every batch row."""
        rows = ctx.extra.get("qk_stream_rows", {})
        B, T, S = q.shape[0], q.shape[2], k.shape[2]
        if self.qk_stream_key in rows:
            n, r = ctx.extra["num_main_rows"], rows[self.qk_stream_key]
            qs = torch.cat([q[r : r + 1].expand(n, -1, -1, -1), q[n:]])  # real rows <- stream row's queries
            ks = torch.cat([k[r : r + 1].expand(n, -1, -1, -1), k[n:]])
            return qs, ks
        if S > self.max_seq_len or k.shape[1] != self.k_fixed.shape[0] or q.shape[1] != self.q_fixed.shape[0]:
            raise ValueError(
                f"{self.name}: standalone fallback holds {self.q_fixed.shape[0]} query / {self.k_fixed.shape[0]} "
                f"kv heads for {self.max_seq_len} positions; got q {tuple(q.shape)}, k {tuple(k.shape)}"
            )
        qs = self.q_fixed[None, :, S - T : S].to(q.dtype).expand(B, -1, -1, -1)  # bottom-right aligned
        ks = self.k_fixed[None, :, :S].to(k.dtype).expand(B, -1, -1, -1)
        return qs, ks

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext | None = None) -> Tensor:
        ctx = as_context(ctx)
        self.check_call(q, k, v, ctx)
        qs, ks = self.stream_qk(q, k, ctx)
        H = q.shape[1]
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)  # pad keys masked anyway [choice]
        return sdpa(qs, expand_kv_heads(ks, H), expand_kv_heads(v, H), keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]))

    def attention_weights(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        qs, ks = self.stream_qk(q, k, ctx)
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        return reference_attention(qs, ks, v, keep=keep, bias=ctx.attn_bias, scale=self.softmax_scale(q.shape[-1]))[1]


@register_attention("random_qk")
class RandomEmbeddingQK(_StreamQK):
    """RndEmbQK (Xue et al. 2025): queries/keys from a fixed random-embedding stream through the stack.

    ``eps ~ N(0, sigma^2 I)``, ``(max_seq_len, dim)``, a non-trainable buffer drawn from ``seed`` [choice:
    the paper pins neither trainability nor sigma]. Maps are identical for every input.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``; ``S <= max_seq_len``.

    Args:
        sigma: std of ``eps`` (default 1). seed: seed of ``eps`` (and of the standalone fallback).
        num_heads, num_kv_heads, head_dim, max_seq_len: structural (the shell fills them in).

    Raises: ValueError when the fallback's sizes do not fit the call.
    """

    stream_kind = "random"

    def __init__(self, sigma: float = 1.0, seed: int = 0, num_heads: int = 4, num_kv_heads: int | None = None,
                 head_dim: int = 16, max_seq_len: int = 256, scale: float | None = None):
        super().__init__(seed, num_heads, num_kv_heads, head_dim, max_seq_len, scale)
        if sigma <= 0:
            raise ValueError(f"random_qk: sigma must be > 0, got {sigma}")
        self.sigma = sigma

    @property
    def qk_stream_key(self) -> tuple:
        return ("random", self.seed, float(self.sigma))


@register_attention("fixed_seq_qk")
class FixedSequenceQK(_StreamQK):
    """FixedSeqQK (Xue et al. 2025): queries/keys from the stream ``Emb(t_s)`` of a fixed token sequence.

    The paper uses the first 2048 tokens of FineWeb-10BT; we cannot ship that, so ``t_s`` is ``tokens``
    when given, else a seeded uniform draw over the vocabulary [choice].

    Shapes: as :class:`RandomEmbeddingQK`. Args: tokens: the fixed token ids (at least the model's
    ``max_seq_len`` of them). seed: seed of the draw. Structural args as above.

    Raises: ValueError when ``tokens`` is too short or outside the vocabulary (at model build).
    """

    stream_kind = "fixed_seq"

    def __init__(self, tokens: list[int] | None = None, seed: int = 0, num_heads: int = 4,
                 num_kv_heads: int | None = None, head_dim: int = 16, max_seq_len: int = 256,
                 scale: float | None = None):
        super().__init__(seed, num_heads, num_kv_heads, head_dim, max_seq_len, scale)
        self.tokens = None if tokens is None else [int(t) for t in tokens]

    @property
    def qk_stream_key(self) -> tuple:
        return ("fixed_seq", self.seed, None if self.tokens is None else tuple(self.tokens))


@register_attention("static_emb_qk")
class StaticEmbeddingQK(AttentionKernel):
    """StaticEmbQK (Xue et al. 2025): ``Q, K = e W_{Q,K}`` with ``e`` the sequence's static input embeddings.

    The shell asks :meth:`qk_input` for the tensor to project queries and keys from; attnlab models
    put the embedding-layer output in ``ctx.extra["embeddings"]`` ``(B, T, dim)``. [choice] It is
    normalised without parameters (``layer_norm``, no affine) like the pre-norm input of other layers,
    since raw embeddings (std 0.02 at init) would give near-zero logits. Without embeddings in the
    context (a bare kernel call) it is plain softmax attention on the given q, k.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``.
    Args: normalize: apply the parameter-free norm (default True). scale: default ``1/sqrt(Dh)``.
    """

    capabilities = Capabilities(exact=False, complexity="O(N^2)")

    def __init__(self, normalize: bool = True, scale: float | None = None):
        super().__init__(scale=scale)
        self.normalize = normalize

    def qk_input(self, x: Tensor, ctx: AttentionContext | None) -> Tensor | None:
        e = None if ctx is None else ctx.extra.get("embeddings")
        if e is None:
            return None
        if e.shape != x.shape:
            raise ValueError(f"static_emb_qk: embeddings {tuple(e.shape)} do not match the layer input {tuple(x.shape)}")
        return F.layer_norm(e, e.shape[-1:]) if self.normalize else e

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext | None = None) -> Tensor:
        ctx = as_context(ctx)
        self.check_call(q, k, v, ctx)
        H = q.shape[1]
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        return sdpa(q, expand_kv_heads(k, H), expand_kv_heads(v, H), keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]))
