"""Dynamic Key-Distributed GQA (DGQA): allocation driven by how key norms evolve.

Khan et al. 2024, "Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention"
(arXiv 2408.08454; official code ``zohaib-khan5040/key-driven-gqa``, ``modules/attention/dgqa.py``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.gqa_groups import grouped_attention, grouped_weights, heads_to_groups, key_norms, proportional_allocation
from ..masks import context_mask, padding_mask
from ..registry import register_attention

KINDS = ("diff", "ema")
UPDATES = ("auto", "faithful", "lagged")
EMA_BETA = 0.9  # hard-coded in the reference; the *current* norms carry this weight


@register_attention("dgqa")
class DGQAttention(AttentionKernel):
    """Dynamic Key-Distributed Grouped-Query Attention (Khan et al. 2024), ``diff`` and ``ema`` kinds.

    State (buffers, saved with the model): ``norm_cache`` ``c (G,)`` (starts at 0), ``allocation``
    ``a (G,)`` (starts uniform, ``H/G`` heads per K/V head) and ``step`` (training forwards seen).
    With current batch-summed key norms ``n``: ``diff``: ``s = |c - n|``; ``ema``: ``s = 0.9 n + 0.1 c``;
    ``a = round(H s / sum s)``, repaired by random decrements/increments drawn from the generator.

    * Training: on every ``window_size``-th training forward the allocation is recomputed and
      ``c <- (c + n) / window_size`` (the reference's division, kept as written); otherwise the previous
      allocation is reused. [choice] our ``step`` counts training forwards from 1, so the first update
      happens at forward ``window_size`` (the reference uses the 0-based batch index of the epoch and
      therefore also updates on the first batch of every epoch).
    * Eval: recomputed on every call, and ``c <- n``.

    Causal use [choice]: ``update="lagged"`` uses the stored allocation for the call and updates it
    afterwards (training only; eval keeps the trained allocation frozen), so no output ever depends on
    future keys or on other batch rows. ``update="faithful"`` is the reference order (allocation from
    the current call's keys). ``"auto"`` (default) = faithful when bidirectional, lagged when causal.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, G, S, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        kind: ``"diff"`` or ``"ema"``.
        window_size: update period ``W`` in training forwards (class default 1; README example 300).
        update: ``"auto"``, ``"faithful"`` or ``"lagged"`` (see above).
        seed: seed of the module's own generator for the random repair (``ctx.generator`` wins if given).
        dropout: attention dropout (training only).
        scale: score scale, default ``1/sqrt(Dh)``.
        num_heads, num_kv_heads: structural, filled in by the shell.

    Raises:
        ValueError: bad option values, or a call whose head counts differ from the construction.
    """

    capabilities = Capabilities(exact=False, batch_independent=False, complexity="O(N^2)")

    def __init__(self, kind: str = "diff", window_size: int = 1, update: str = "auto", seed: int = 0,
                 dropout: float = 0.0, scale: float | None = None, num_heads: int = 4,
                 num_kv_heads: int | None = None):
        super().__init__(scale=scale)
        if kind not in KINDS:
            raise ValueError(f"dgqa: kind={kind!r} is not one of {KINDS}")
        if update not in UPDATES:
            raise ValueError(f"dgqa: update={update!r} is not one of {UPDATES}")
        if window_size < 1:
            raise ValueError(f"dgqa: window_size must be >= 1, got {window_size}")
        num_kv_heads = num_kv_heads or max(1, num_heads // 2)  # the reference's default G = H/2
        if num_heads % num_kv_heads:
            raise ValueError(f"dgqa: num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.kind, self.window_size, self.update, self.seed, self.dropout = kind, window_size, update, seed, dropout
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        if update == "faithful":  # the allocation reads the current call's (future) keys
            self.capabilities = dataclasses.replace(type(self).capabilities, causal=False)
        self.register_buffer("norm_cache", torch.zeros(num_kv_heads))
        self.register_buffer("allocation", torch.full((num_kv_heads,), num_heads // num_kv_heads, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._generator: torch.Generator | None = None

    def scores(self, n: Tensor) -> Tensor:
        """``s (G,)`` from current norms ``n (G,)`` and the cache."""
        c = self.norm_cache.float()
        return (c - n).abs() if self.kind == "diff" else EMA_BETA * n + (1.0 - EMA_BETA) * c

    @torch.no_grad()
    def _update(self, k: Tensor, ctx: AttentionContext) -> None:
        keep = padding_mask(ctx.key_padding_mask, 1) if ctx.key_padding_mask is not None else None
        n = key_norms(k, keep).sum(dim=(0, 2))  # (G,) summed over batch
        gen = self.seeded_generator(ctx, k.device)
        self.allocation.copy_(proportional_allocation(self.scores(n), self.num_heads, gen))
        if self.training:
            self.norm_cache.copy_((self.norm_cache + n) / self.window_size)
        else:
            self.norm_cache.copy_(n)

    def _check_heads(self, q: Tensor, k: Tensor) -> None:
        if (q.shape[1], k.shape[1]) != (self.num_heads, self.num_kv_heads):
            raise ValueError(
                f"dgqa was built for num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads} but got "
                f"q with {q.shape[1]} and k with {k.shape[1]} heads; build it with the matching structural args"
            )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        self._check_heads(q, k)
        lagged = self.update == "lagged" or (self.update == "auto" and ctx.causal)
        due = True
        if self.training:
            self.step += 1
            due = int(self.step) % self.window_size == 0
        if due and not lagged:
            self._update(k, ctx)
        groups = heads_to_groups(self.allocation, self.num_heads)[None, :, None]  # (1, H, 1)
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        p = self.dropout if self.training else 0.0
        out = grouped_attention(q, k, v, groups, keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]), p)
        if due and lagged and self.training:
            self._update(k, ctx)
        return out

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The map under the current stored allocation (does not advance the state)."""
        groups = heads_to_groups(self.allocation, self.num_heads)[None, :, None]  # (1, H, 1)
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        return grouped_weights(q, k, groups, keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, window_size={self.window_size}, update={self.update!r}"

