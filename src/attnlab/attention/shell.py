"""The attention shell: projections, heads, GQA grouping, RoPE and the KV cache around any kernel, for
self-attention and for cross-attention to a memory.

Every mechanism shares these parameter names (``q_proj, k_proj, v_proj, out_proj``), so pretrained
softmax weights load into any variant and a softmax teacher can seed a sparse student.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..layers.positional import RotaryEmbedding
from ..native.linear import Linear, linear
from .base import AttentionKernel
from .cache import CrossKVCache
from .context import AttentionContext
from .registry import build_attention
from .split import split_last


class MultiHeadAttention(nn.Module):
    """Multi-head / grouped-query / multi-query self-attention (Vaswani et al. 2017; Ainslie et al. 2023).

    Shapes: ``x (B, T, dim) -> (B, T, dim)``. Query heads are grouped contiguously onto
    ``num_kv_heads`` K/V heads (head ``h`` uses K/V head ``h // (num_heads // num_kv_heads)``).

    Args:
        dim: model width.
        num_heads: query heads.
        num_kv_heads: K/V heads (default ``num_heads``; 1 = MQA).
        kernel: a registry name or an :class:`AttentionKernel` instance.
        kernel_options: options for a kernel given by name.
        head_dim: per-head width (default ``dim // num_heads``).
        rope: a :class:`RotaryEmbedding` applied to q and k, or ``None``.
        bias: bias on the projections.
        dropout: dropout on the output projection (residual dropout).
        max_seq_len: passed to kernels that need it.

    Raises:
        ValueError: ``dim % num_heads != 0`` (without explicit head_dim), ``num_heads % num_kv_heads != 0``,
            unknown kernel name or option.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        kernel: str | AttentionKernel = "softmax",
        kernel_options: dict | None = None,
        head_dim: int | None = None,
        rope: RotaryEmbedding | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        max_seq_len: int | None = None,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"dim={dim} is not divisible by num_heads={num_heads}; choose num_heads dividing dim "
                    f"(e.g. {[h for h in range(1, min(dim, 64) + 1) if dim % h == 0][-4:]}) or set head_dim"
                )
            head_dim = dim // num_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}; "
                f"num_kv_heads must divide num_heads (valid: {[g for g in range(1, num_heads + 1) if num_heads % g == 0]})"
            )
        self.dim, self.num_heads, self.num_kv_heads, self.head_dim = dim, num_heads, num_kv_heads, head_dim
        self.q_proj = Linear(dim, num_heads * head_dim, bias=bias)
        self.k_proj = Linear(dim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = Linear(dim, num_kv_heads * head_dim, bias=bias)
        self.out_proj = Linear(num_heads * head_dim, dim, bias=bias)
        if isinstance(kernel, str):
            structural = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, max_seq_len=max_seq_len)
            kernel = build_attention(kernel, structural=structural, **(kernel_options or {}))
        elif kernel_options:
            raise ValueError("kernel_options only apply when kernel is given by name")
        self.kernel = kernel
        self.rope = rope
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x: Tensor, heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, Dh)

    def project(self, x: Tensor, positions: Tensor | None, ctx: AttentionContext | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, T, dim)`` -> q ``(B, H, T, Dh)``, k, v ``(B, Hkv, T, Dh)``, RoPE applied.

        q and k come from ``kernel.qk_input(x, ctx)`` instead of ``x`` when the kernel provides one.
        """
        qk_x = self.kernel.qk_input(x, ctx)
        if qk_x is not None:  # Q/K from another tensor (static_emb_qk): no fused GEMM
            q, k = self.q_proj(qk_x), self.k_proj(qk_x)
            return self._heads_and_rope(q, k, self.v_proj(x), positions)
        # one fused GEMM for q, k and v (a third of the launches; autocast casts the weights once)
        qkv = linear(x, *self.fused_weights("qkv", x))  # (B, T, (H + 2 Hkv) Dh)
        # split_last: the native attention backwards write dq, dk, dv into one buffer that becomes qkv's gradient
        q, k, v = split_last(qkv, [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2)
        return self._heads_and_rope(q, k, v, positions)

    def fused_weights(self, which: str, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The weights (and biases) of the ``which`` projections (``"qkv"`` or ``"kv"``) stacked for one GEMM.

        With gradients the stack is made on every call (autograd sees the parameters). Without (inference, or
        frozen weights) it is kept in the dtype autocast would cast it to for ``x``'s device, and rebuilt when a
        weight changes (in-place version counters, storage pointers): decoding one token at a time would otherwise
        copy (and under autocast re-cast) the attention weights at every step. The kept copy costs the memory of
        those weights once; a call with gradients drops it.
        """
        mods = [self.q_proj, self.k_proj, self.v_proj] if which == "qkv" else [self.k_proj, self.v_proj]
        params = [p for m in mods for p in (m.weight, m.bias) if p is not None]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self.__dict__.pop("_fused_cache", None)  # training: hold no copy that the next step makes stale
            return _stacked(mods)
        dtype, device = params[0].dtype, x.device.type
        if dtype == torch.float32 and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        key = (which, dtype, tuple((id(p), p._version, p.data_ptr()) for p in params))
        cached = self.__dict__.setdefault("_fused_cache", {}).get(which)
        if cached is None or cached[0] != key:
            weight, bias = _stacked(mods)
            cached = (key, weight.to(dtype), None if bias is None else bias.to(dtype))
            self._fused_cache[which] = cached
        return cached[1], cached[2]

    def _heads_and_rope(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q = self.split_heads(q, self.num_heads)
        k = self.split_heads(k, self.num_kv_heads)
        v = self.split_heads(v, self.num_kv_heads)
        if self.rope is not None:
            if positions is None:
                raise ValueError("RoPE needs positions; the model passes them")
            q, k = self.rope(q, positions), self.rope(k, positions)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        ctx: AttentionContext | None = None,
        positions: Tensor | None = None,
        cache=None,
        return_weights: bool = False,
        memory: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Args:
            x: ``(B, T, dim)``.
            ctx: masks and the rest of the attention context (see :class:`AttentionContext`).
            positions: ``(T,)`` or ``(B, T)`` absolute positions for RoPE.
            cache: this layer's KV cache (from ``kernel.new_cache``); new k/v are appended to it. For
                cross-attention a :class:`CrossKVCache` (from :meth:`new_cross_cache`) keeps the memory's k/v.
            return_weights: also return the ``(B, H, T, S)`` attention map, recomputed by the reference path.
            memory: ``(B, S, dim)``: cross-attention: queries from ``x``, keys and values from ``memory``
                (Vaswani et al. 2017's encoder-decoder attention). The context is made a cross context
                (``ctx.cross``; its ``key_padding_mask``/``document_ids`` describe the memory); no RoPE across
                the two sequences. With a filled cross cache, ``memory`` may be omitted.

        Raises:
            ValueError: ``x`` or ``memory`` of the wrong shape, a causal cross-attention context, or a cross
                cache that is empty and no memory.
            CapabilityError: the kernel does not declare what the context asks for (e.g. cross-attention).
        """
        ctx = AttentionContext() if ctx is None else ctx
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (batch, tokens, {self.dim}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        if memory is not None or isinstance(cache, CrossKVCache):
            ctx = dataclasses.replace(ctx, cross=True)  # raises for a causal context
            q, k, v = self._cross_qkv(x, memory, cache)
        else:
            q, k, v = self.project(x, positions, ctx)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, Hkv, S, Dh), the new tokens last
        if cache is not None:
            ctx.cache = cache
        out = self.kernel(q, k, v, ctx)  # (B, H, T, Dh)
        y = self.dropout(self.out_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)))
        if return_weights:
            return y, self.kernel.attention_weights(q, k, v, ctx)
        return y

    def _cross_qkv(self, x: Tensor, memory: Tensor | None, cache: CrossKVCache | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from ``x``; keys and values from ``memory`` or from a filled cross cache."""
        q = self.split_heads(self.q_proj(x), self.num_heads)
        if cache is not None and cache.filled:
            if memory is not None and memory.shape[1] != cache.k.shape[2]:
                raise ValueError(f"memory of {memory.shape[1]} tokens, but the cross cache holds {cache.k.shape[2]}; "
                                 "use a new cache for a new memory")
            cache.seen += x.shape[1]
            return q, cache.k.to(q.dtype), cache.v.to(q.dtype)
        if memory is None:
            raise ValueError("cross-attention needs memory=(batch, memory tokens, dim) on its first call")
        if memory.dim() != 3 or memory.shape[0] != x.shape[0] or memory.shape[-1] != self.dim:
            raise ValueError(f"expected memory of shape ({x.shape[0]}, memory tokens, {self.dim}), "
                             f"got {tuple(memory.shape)}")
        k, v = linear(memory, *self.fused_weights("kv", memory)).split(self.num_kv_heads * self.head_dim, dim=-1)
        k, v = self.split_heads(k, self.num_kv_heads), self.split_heads(v, self.num_kv_heads)
        if cache is not None:
            cache.store(k, v)
            cache.seen += x.shape[1]
        return q, k, v

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None):
        """A decoding cache for this layer, shaped by the kernel (dense, rolling, recurrent ...)."""
        return self.kernel.new_cache(batch_size, self.num_kv_heads, self.head_dim, max_len,
                                     device=device if device is not None else self.q_proj.weight.device,
                                     dtype=dtype if dtype is not None else self.q_proj.weight.dtype)

    def new_cross_cache(self) -> CrossKVCache:
        """A cache for this layer used as cross-attention: the memory's k/v, projected once per generation."""
        return CrossKVCache()


def _stacked(projections: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """``(sum of out_features, in_features)`` weight and the biases (or ``None``) of ``projections``, stacked."""
    weight = torch.cat([m.weight for m in projections])
    return weight, None if projections[0].bias is None else torch.cat([m.bias for m in projections])
