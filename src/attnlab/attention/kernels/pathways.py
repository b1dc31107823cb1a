"""Stochastically subsampled self-attention (SSA), a training-time wrapper around any kernel.

Hussain, Zaki, Subramanian, "The Information Pathways Hypothesis: Transformers are Dynamic
Self-Ensembles" (KDD 2023). The official repo has no
code; the structured sampler below is attnlab's design [choice] matching the paper's stated properties.

In training mode every call draws a random partition of the ``N`` tokens into ``g = 1/keep`` groups of
(almost) equal size and runs the wrapped kernel on each group as its own shorter sequence (tokens keep
their original order inside a group, so causal masking stays correct). Each query therefore sees
itself and about ``keep * N`` keys, and attention costs ``keep`` times the dense cost in time and
memory. ``sampler="uniform"`` draws a uniform random partition; ``sampler="local"`` sorts positions
jittered by ``N(0, local_sigma^2)`` before cutting contiguous groups, so nearby tokens tend to share a
group. In eval mode the wrapper *is* the inner kernel (same output, same cache), unless
``eval_sampling=True`` (for sub-network ensembles: average the model's output distributions over
several sampled forward passes).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..masks import context_mask
from ..reference import expand_kv_heads, reference_attention
from ..registry import build_attention, register_attention

SAMPLERS = ("uniform", "local")


@register_attention("pathways")
class PathwaysAttention(AttentionKernel):
    """Random-subset self-attention for training around an inner kernel; the inner kernel at eval.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``. Subsampling applies to
    full self-attention calls (``T == S``); other calls (cached decoding) go straight to the inner kernel.

    Args:
        inner: registry name of the wrapped kernel (exact kernels give the SSA of the paper).
        inner_options: options of the inner kernel.
        keep: fraction of keys each query sees, ``1/g`` for an integer ``g`` (1 = the inner kernel).
        sampler: ``"uniform"`` or ``"local"``.
        local_sigma: position jitter (in tokens) of the local sampler; 0 = contiguous blocks.
        per_head: independent partitions per head (heads are folded into the batch, so the inner
            kernel must be parameter-free); ``False`` = one partition per sequence shared by all heads.
        eval_sampling: keep sampling in eval mode (for ensembles of sub-networks).

    Randomness comes from ``ctx.generator`` when given, else the global torch RNG.

    Raises:
        ValueError: bad options, ``per_head`` with an inner kernel that has parameters, a length that
            needs padding dummies with an inner kernel that cannot mask keys.
    """

    capabilities = Capabilities(exact=False, complexity="O(keep*N^2) training; the inner kernel's at eval")

    def __init__(self, inner: str = "softmax", inner_options: dict | None = None, keep: float = 0.25,
                 sampler: str = "uniform", local_sigma: float = 8.0, per_head: bool = True,
                 eval_sampling: bool = False, num_heads: int | None = None, num_kv_heads: int | None = None,
                 head_dim: int | None = None, max_seq_len: int | None = None):
        super().__init__()
        if inner == "pathways":
            raise ValueError("pathways cannot wrap itself; choose an inner kernel such as 'softmax'")
        if not 0.0 < keep <= 1.0 or abs(1.0 / keep - round(1.0 / keep)) > 1e-6:
            raise ValueError(f"keep must be 1/g for an integer g >= 1 (e.g. 0.5, 0.25, 0.125), got {keep}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
        if local_sigma < 0:
            raise ValueError(f"local_sigma must be >= 0, got {local_sigma}")
        structural = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, max_seq_len=max_seq_len)
        self.inner = build_attention(inner, structural=structural, **(inner_options or {}))
        if per_head and (any(True for _ in self.inner.parameters()) or any(True for _ in self.inner.buffers())):
            raise ValueError(
                f"pathways: per_head=True folds heads into the batch, which needs a parameter-free inner kernel; "
                f"{inner!r} has parameters or buffers, so use per_head=False"
            )
        self.capabilities = dataclasses.replace(
            self.inner.capabilities, grid_2d=False, requires_grid=False, exact=False,
            complexity=f"O(keep*N^2) training; {self.inner.capabilities.complexity} at eval")
        self.keep, self.n_groups = keep, round(1.0 / keep)
        self.sampler, self.local_sigma = sampler, local_sigma
        self.per_head, self.eval_sampling = per_head, eval_sampling

    def sampling(self) -> bool:
        return self.n_groups > 1 and (self.training or self.eval_sampling)

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)

    # -- the sampler ----------------------------------------------------------------------------
    def sample_groups(self, batch: int, length: int, valid: Tensor | None = None,
                      generator: torch.Generator | None = None, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw a partition of ``length`` tokens into ``g`` groups of ``n = ceil(length / g)`` slots.

        Valid tokens are split into groups whose sizes differ by at most one; padded tokens fill the
        remaining slots and the rest are dummies. Inside a group, tokens are in ascending position order.

        Returns:
            slot_token ``(B, g*n)`` token index of each slot (0 for dummies), slot_real ``(B, g*n)`` bool
            (the slot holds a token), token_slot ``(B, length)`` slot of each token.
        """
        g, N = self.n_groups, length
        n = math.ceil(N / g)
        gdev = generator.device if generator is not None else device
        if self.sampler == "uniform":
            u = torch.rand(batch, N, generator=generator, device=gdev).to(device)
        else:
            noise = torch.randn(batch, N, generator=generator, device=gdev).to(device)
            u = torch.arange(N, device=device, dtype=torch.float) + self.local_sigma * noise
        if valid is not None:
            u = u.masked_fill(~valid, float("inf"))  # padded tokens rank last
        order = u.argsort(dim=-1)  # (B, N): rank -> token
        nv = valid.sum(-1, keepdim=True) if valid is not None else torch.full((batch, 1), N, device=device)
        nv = nv.clamp(min=1)  # (B, 1) valid tokens per row
        rank = torch.arange(N, device=device).expand(batch, N)
        grp = rank * g // nv  # contiguous, balanced chunks of the valid ranks
        start = (grp * nv + g - 1) // g
        slot = grp * n + rank - start  # (B, N) slot of each valid rank
        is_valid = rank < nv
        occupied = torch.zeros(batch, g * n + 1, dtype=torch.long, device=device)
        occupied.scatter_(1, torch.where(is_valid, slot, g * n), 1)
        free = occupied[:, :-1].argsort(dim=-1, stable=True)  # free slots first, ascending
        slot = torch.where(is_valid, slot, free.gather(1, (rank - nv).clamp(min=0)))
        slot_token = torch.zeros(batch, g * n, dtype=torch.long, device=device).scatter_(1, slot, order)
        slot_real = torch.zeros(batch, g * n, dtype=torch.bool, device=device).scatter_(1, slot, True)
        # ascending positions inside each group (dummies last), so causal order is kept
        key = torch.arange(g * n, device=device) // n * (N + 1) + torch.where(slot_real, slot_token, N)
        perm = key.argsort(dim=-1)
        slot_token, slot_real = slot_token.gather(1, perm), slot_real.gather(1, perm)
        token_slot = torch.zeros(batch, N + 1, dtype=torch.long, device=device)
        slots = torch.arange(g * n, device=device).expand(batch, -1)
        token_slot.scatter_(1, torch.where(slot_real, slot_token, N), slots)  # dummies write to column N
        return slot_token, slot_real, token_slot[:, :N]

    def keep_mask(self, token_slot: Tensor, length: int) -> Tensor:
        """``(B, N, N)`` bool: tokens ``i`` and ``j`` share a group."""
        grp = token_slot // math.ceil(length / self.n_groups)
        return grp[:, :, None] == grp[:, None, :]

    # -- forward --------------------------------------------------------------------------------
    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        if not self.sampling() or q.shape[2] != k.shape[2]:
            return self.inner(q, k, v, ctx)
        B, H, N, D = q.shape
        if not self.per_head:
            return self._grouped(q, k, v, ctx)
        k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)
        fold = lambda x: x.reshape(B * H, 1, N, D)  # noqa: E731  (B*H, 1, N, Dh): one head per row
        rep = lambda m: None if m is None else m.repeat_interleave(H, dim=0)  # noqa: E731
        bias = ctx.attn_bias
        if bias is not None:
            bias = bias.expand(B, H, N, N).reshape(B * H, 1, N, N)
        pos = ctx.positions if ctx.positions is None or ctx.positions.dim() == 1 else rep(ctx.positions)
        fctx = dataclasses.replace(ctx, key_padding_mask=rep(ctx.key_padding_mask), document_ids=rep(ctx.document_ids),
                                   attn_bias=bias, positions=pos)
        return self._grouped(fold(q), fold(k), fold(v), fctx).view(B, H, N, D)

    def _grouped(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """One partition per batch row; the inner kernel runs on ``(B*g, H, n, Dh)`` groups."""
        B, H, N, D = q.shape
        g, n = self.n_groups, math.ceil(N / self.n_groups)
        kpm = ctx.key_padding_mask
        slot_token, slot_real, token_slot = self.sample_groups(B, N, kpm, ctx.generator, q.device)
        slot_valid = slot_real if kpm is None else slot_real & kpm.gather(1, slot_token)
        if not bool(slot_valid.all()) and not self.inner.capabilities.key_padding_mask:
            raise ValueError(
                f"pathways: {N} tokens do not split into {g} equal groups (or there is key padding) and the inner "
                f"kernel {self.inner.name!r} cannot mask keys; use a length divisible by {g} without padding"
            )

        def split(x: Tensor) -> Tensor:  # (B, h, N, Dh) -> (B*g, h, n, Dh)
            h = x.shape[1]
            x = x.gather(2, slot_token[:, None, :, None].expand(B, h, g * n, D))  # (B, h, g*n, Dh)
            return x.view(B, h, g, n, D).transpose(1, 2).reshape(B * g, h, n, D)

        def rows(m: Tensor | None) -> Tensor | None:  # (B, N) -> (B*g, n)
            return None if m is None else m.gather(1, slot_token).view(B * g, n)

        bias = ctx.attn_bias
        if bias is not None:
            hb = bias.shape[1]
            bias = bias.expand(B, hb, N, N).gather(2, slot_token[:, None, :, None].expand(B, hb, g * n, N))
            cols = slot_token.view(B, 1, g, 1, n).expand(B, hb, g, n, n)
            bias = bias.view(B, hb, g, n, N).gather(4, cols).transpose(1, 2).reshape(B * g, hb, n, n)
        pos = ctx.positions
        if pos is not None:
            pos = rows(pos.expand(B, N))
        gctx = dataclasses.replace(
            ctx, key_padding_mask=None if bool(slot_valid.all()) else slot_valid.view(B * g, n),
            document_ids=rows(ctx.document_ids), attn_bias=bias, positions=pos)
        out = self.inner(split(q), split(k), split(v), gctx)  # (B*g, H, n, Dh)
        out = out.view(B, g, H, n, D).transpose(1, 2).reshape(B, H, g * n, D)
        return out.gather(2, token_slot[:, None, :, None].expand(B, H, N, D))

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The inner kernel's map when not sampling; else the reference softmax map under a freshly
        sampled group pattern (a new draw, not the one of the last forward, unless the generator is reset)."""
        if not self.sampling() or q.shape[2] != k.shape[2]:
            return self.inner.attention_weights(q, k, v, ctx)
        B, H, N, _ = q.shape
        rows = B * H if self.per_head else B
        kpm = ctx.key_padding_mask
        kpm = None if kpm is None else (kpm.repeat_interleave(H, 0) if self.per_head else kpm)
        _, _, token_slot = self.sample_groups(rows, N, kpm, ctx.generator, q.device)
        pattern = self.keep_mask(token_slot, N).view(B, H if self.per_head else 1, N, N)
        base = context_mask(ctx, N, N, q.device)
        keep = pattern if base is None else pattern & base
        _, w = reference_attention(q, k, v, keep=keep, bias=ctx.attn_bias, scale=self.inner.softmax_scale(q.shape[-1]))
        return w

    def extra_repr(self) -> str:
        return (f"keep={self.keep}, sampler={self.sampler!r}, local_sigma={self.local_sigma}, "
                f"per_head={self.per_head}, eval_sampling={self.eval_sampling}")
