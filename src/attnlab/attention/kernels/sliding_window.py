"""Sliding-window attention (Child et al. 2019 local pattern; Beltagy et al. 2020, Longformer), on the
blocked span engine (:mod:`attnlab.attention.engines.blocked`)."""

from __future__ import annotations

from torch import Tensor

from ..base import AttentionKernel
from ..cache import RollingKVCache
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.blocked import band_layout, blocked_attention, cached_plan, context_drop, default_block
from ..masks import query_key_positions
from ..registry import register_attention


@register_attention("sliding_window")
class SlidingWindowAttention(AttentionKernel):
    """Sliding-window attention (Child et al. 2019 local pattern; Beltagy et al. 2020 Longformer).

    Causal: query ``i`` sees keys ``i - window < j <= i`` (itself and ``window - 1`` before it).
    Bidirectional: ``|i - j| <= window // 2``. Exact softmax under that band; ``window >= N`` equals
    full attention. Time ``O(N * window * Dh)``, memory ``O(N * window)`` (``O(N * Dh)`` plus mask bits
    with ``recompute=True``); never an ``N x N`` matrix.
    Decoding uses a :class:`RollingKVCache` holding ``window`` keys, so memory does not grow.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)`` (bottom-right aligned).

    Args:
        window: band width (see above), >= 1.
        block_size: queries per block (default: derived from ``window``); affects speed only.
        recompute: recompute attention probabilities in backward (memory ``O(N * Dh)`` instead of
            ``O(N * span)``, ~20% slower); default keeps them.
        scale: score scale, default ``1/sqrt(Dh)``.

    Raises:
        ValueError: ``window < 1`` or bad ``block_size``; mismatched shapes or masks.
    """

    capabilities = Capabilities(attn_bias=False, complexity="O(N*w)")

    def __init__(self, window: int = 256, block_size: int | None = None, recompute: bool = False,
                 scale: float | None = None):
        super().__init__(scale=scale)
        self.recompute = recompute
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (keys per query), got {window!r}")
        self.window = window
        self.block_size = default_block(window, block_size)

    def _reach(self, causal: bool) -> tuple[int, int]:
        return (self.window - 1, 0) if causal else (self.window // 2, self.window // 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        left, right = self._reach(ctx.causal)
        plan = cached_plan(band_layout, T, S, ctx.causal, S - T, S, left, right, self.block_size, q.device)
        scale = self.softmax_scale(q.shape[-1])
        return blocked_attention(q, k, v, plan, context_drop(plan, ctx), scale, self.recompute)

    def pattern_mask(self, T: int, S: int, ctx: AttentionContext, device=None) -> Tensor:
        q_pos, k_pos = query_key_positions(T, S, device)
        left, right = self._reach(ctx.causal)
        diff = q_pos[:, None] - k_pos[None, :]  # (T, S)
        return ((diff <= left) & (diff >= -right))[None, None]  # (1, 1, T, S)

    def new_cache(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                  device=None, dtype=None):
        """A rolling cache of ``window`` keys: decoding memory is independent of generated length."""
        return RollingKVCache(batch_size, num_kv_heads, head_dim, window=self.window, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"window={self.window}, block_size={self.block_size}"
