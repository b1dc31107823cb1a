"""Base class of every attention kernel (the "kernel" half of the attention contract).

A kernel receives ``q (B, H, T, Dh)``, ``k, v (B, Hkv, S, Dh)`` and an :class:`AttentionContext`
and returns ``(B, H, T, Dh)``. The shell (:class:`~attnlab.attention.shell.MultiHeadAttention`)
owns the projections, heads, RoPE and the KV cache, so every kernel shares the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .cache import DenseKVCache
from .capabilities import Capabilities
from .context import AttentionContext
from .masks import check_context_shapes, context_mask
from .reference import expand_kv_heads, reference_attention


class AttentionKernel(nn.Module):
    """Subclass, set ``capabilities``, implement :meth:`forward`; register with ``@register_attention``.

    Exact kernels that restrict which keys a query sees override :meth:`pattern_mask` so that
    :meth:`attention_weights` and the tests can compare them against the dense reference.
    """

    name: str = "?"
    capabilities: Capabilities = Capabilities()

    def __init__(self, scale: float | None = None):
        super().__init__()
        self.scale = scale

    def softmax_scale(self, head_dim: int) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(head_dim)

    # -- the contract -------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext | None = None) -> Tensor:
        """Check the call once (shapes, context masks, declared capabilities), then :meth:`attend`.

        Raises:
            ValueError: mismatched q/k/v shapes or context tensors (the message names the expected shape).
            CapabilityError: the context asks for something the kernel does not declare.
        """
        ctx = as_context(ctx)
        self.check_call(q, k, v, ctx)
        return self.attend(q, k, v, ctx)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The mechanism: ``q (B, H, T, Dh)``, ``k, v (B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``.

        Subclasses implement this; :meth:`forward` has already checked the call.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement attend(q, k, v, ctx)")

    def qk_input(self, x: Tensor, ctx: AttentionContext | None) -> Tensor | None:
        """The tensor the shell projects queries and keys from; ``None`` = the layer input ``x``.

        Kernels whose Q/K do not come from the current hidden state (e.g. ``static_emb_qk``) override it.
        """
        return None

    def pattern_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        """The kernel's own sparsity pattern as a keep mask ``(1|B, 1, T, S)``; ``None`` = dense."""
        return None

    def pattern_bias(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        """The kernel's own additive score bias ``(1|B, 1|H, T, S)`` (a learned relative position bias, as in Swin's
        window attention), dense; ``None`` = none. Exact kernels equal the reference under ``full_mask`` plus it."""
        return None

    def full_bias(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        """``ctx.attn_bias`` plus :meth:`pattern_bias` (``None`` when neither)."""
        own = self.pattern_bias(T, S, ctx, device)
        if own is None or ctx.attn_bias is None:
            return ctx.attn_bias if own is None else own
        return ctx.attn_bias + own

    def full_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor | None:
        """Context masks (causal, padding, documents) AND the kernel's pattern."""
        base = context_mask(ctx, T, S, device)
        pat = self.pattern_mask(T, S, ctx, device)
        if pat is None:
            return base
        return pat if base is None else base & pat

    def attention_weights(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext | None = None) -> Tensor:
        """The ``(B, H, T, S)`` attention map of this call, checked like :meth:`forward`, from :meth:`attention_map`."""
        ctx = as_context(ctx)
        self.check_call(q, k, v, ctx)
        return self.attention_map(q, k, v, ctx)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """``(B, H, T, S)`` map recomputed through the dense reference path under :meth:`full_mask`.

        Kernels whose map is not softmax under a keep mask (linear, routing, ...) override this.
        """
        keep = self.full_mask(q.shape[2], k.shape[2], ctx, q.device)
        bias = self.full_bias(q.shape[2], k.shape[2], ctx, q.device)
        _, w = reference_attention(q, k, v, keep=keep, bias=bias, scale=self.softmax_scale(q.shape[-1]))
        return w

    def new_cache(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                  device=None, dtype=None):
        """A fresh decoding cache for one layer. Kernels with a bounded cache override this."""
        return DenseKVCache(batch_size, num_kv_heads, head_dim, max_len, device=device, dtype=dtype)

    # -- helpers ------------------------------------------------------------------------------
    def check_call(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> None:
        """Shape and capability checks shared by all kernels; raises ``ValueError`` with the fix."""
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise ValueError(
                f"{self.name}: expected q (B, H, T, Dh) and k, v (B, Hkv, S, Dh), got "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        B, H, T, D = q.shape
        if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
            raise ValueError(f"{self.name}: k {tuple(k.shape)} and v {tuple(v.shape)} do not match q {tuple(q.shape)}")
        if H % k.shape[1]:
            raise ValueError(f"{self.name}: {H} query heads is not a multiple of {k.shape[1]} kv heads")
        self.capabilities.check_context(self.name, ctx)
        check_context_shapes(ctx, B, T, k.shape[2])

    def seeded_generator(self, ctx: AttentionContext, device) -> torch.Generator:
        """``ctx.generator`` if the caller passed one, else this kernel's own generator on ``device``, seeded
        once from ``self.seed`` (stochastic kernels: the same seed gives the same draws on a fresh model)."""
        if ctx.generator is not None:
            return ctx.generator
        gen = getattr(self, "_generator", None)
        if gen is None or gen.device != torch.device(device):
            gen = self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return gen

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class MixingMapKernel(AttentionKernel):
    """A kernel whose output is an explicit ``(B, H, T, S)`` mixing map applied to the values.

    Subclasses implement :meth:`mixing_weights`; :meth:`attend` is ``map @ v`` (grouped K/V heads expanded)
    and :meth:`attention_map` is the map itself, so the two can never disagree.
    """

    def mixing_weights(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> Tensor:
        """The ``(B, H, T, S)`` map for queries ``q (B, H, T, Dh)`` and keys ``k (B, Hkv, S, Dh)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement mixing_weights(q, k, ctx)")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        w = self.mixing_weights(q, k, ctx).to(v.dtype)
        return torch.einsum("bhts,bhsd->bhtd", w, expand_kv_heads(v, q.shape[1]))  # (B, H, T, Dh)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        return self.mixing_weights(q, k, ctx).to(q.dtype)


def as_context(ctx: AttentionContext | None) -> AttentionContext:
    return AttentionContext() if ctx is None else ctx


def fully_masked_rows(keep: Tensor | None) -> Tensor | None:
    """``(.., T, 1)`` bool, True where a query has no key at all (its output must be 0)."""
    return None if keep is None else ~keep.any(dim=-1, keepdim=True)


def zero_if_empty(out: Tensor, empty: Tensor | None) -> Tensor:
    return out if empty is None else out.masked_fill(empty, 0.0)




def pop_aux_loss(model: nn.Module) -> Tensor | None:
    """Sum and clear the auxiliary losses kernels left on ``model`` during a training forward.

    A kernel with a training-only objective of its own (the Routing Transformer's k-means commitment
    loss, Roy et al. 2021) stores it as a 0-dim tensor attached to the graph in ``self.aux_loss``; the
    trainer adds the sum to the objective's loss before ``backward`` and this call resets each to ``None`` (so
    a stale graph is never kept alive or counted twice). Returns ``None`` when no module holds one.
    """
    total = None
    for module in model.modules():
        aux = getattr(module, "aux_loss", None)
        if isinstance(aux, Tensor):
            total = aux if total is None else total + aux
            module.aux_loss = None
    return total
