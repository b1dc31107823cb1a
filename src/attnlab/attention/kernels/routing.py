"""Routing attention: content-based sparse attention via online k-means.

Roy, Saffar, Vaswani, Grangier, "Efficient Content-Based Sparse Attention with Routing Transformers"
(TACL 2021, arXiv:2003.05997).

Routing heads compare parameter-free layer-normed queries and keys with ``k`` centroids per head (one
shared routing space for queries and keys); attention then runs only among tokens routed to the same
centroid. Centroids are buffers updated by an EMA (mini-batch k-means) in training mode only.
Optional local heads (``local_heads``) use sliding-window attention, as the paper mixes local and
routing heads.

* Bidirectional (``causal=False``): the paper's balanced windows. Every centroid takes its ``window``
  most similar queries and ``window`` most similar keys (top-w; per document when sequences are
  packed, and never padding); attention runs inside each window and a token's output is the mean over
  the windows that selected it. A token no window selected outputs exactly 0. Use
  ``num_clusters * window ~ N`` (the paper's setting) so that most tokens are selected.
* Causal: top-w selection over a whole sequence lets *future* tokens decide whether a past token
  is routed (a value leak an LM can exploit; the official decoder switches to another rule at decode
  time). attnlab's causal rule [choice] keeps the balanced cost and depends only on the past: each
  token joins one cluster, the centroid that best matches its query and key together
  (``argmax mu . (LN(q) + LN(k))``), and a query attends to the ``window`` newest tokens of its cluster
  up to itself (itself included). Tokens are sorted by (document, cluster, position) and attended in
  Reformer-style blocks, ``O(N * window)``. Decoding with :class:`RoutingCache` (it remembers each
  token's cluster) equals the full forward in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import AttentionKernel
from ..cache import DenseKVCache
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.gathered import gather_rows, gathered_attention, gathered_weights, sorted_window_attention
from ..reference import expand_kv_heads, masked_softmax
from ..registry import register_attention

_EPS = 1e-5  # Laplace smoothing of the EMA counts (official code)


def _unit_ln(x: Tensor) -> Tensor:
    """Parameter-free LayerNorm over the head dim (the official routing normalisation), in fp32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=1e-6)


def _doc_ranks(ctx: AttentionContext, B: int, S: int, device) -> Tensor:
    """``(B, S)`` dense ranks of the document ids (zeros without packing)."""
    if ctx.document_ids is None:
        return torch.zeros(B, S, dtype=torch.long, device=device)
    return torch.unique(ctx.document_ids, return_inverse=True)[1]


class RoutingCache(DenseKVCache):
    """A dense KV cache that also remembers each token's cluster per routing head ``(B, h, max_len)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clusters: Tensor | None = None

    def store_clusters(self, cid: Tensor) -> Tensor:
        """Write the clusters ``(B, h, T)`` of the newest ``T`` tokens; return all ``(B, h, seen)``."""
        B, h, T = cid.shape
        if self.clusters is None:
            self.clusters = torch.zeros(B, h, self.max_len, dtype=torch.long, device=cid.device)
        self.clusters[:, :, self.seen - T:self.seen] = cid
        return self.clusters[:, :, :self.seen]

    @property
    def num_bytes(self) -> int:
        extra = 0 if self.clusters is None else self.clusters.numel() * self.clusters.element_size()
        return super().num_bytes + extra


@register_attention("routing")
class RoutingAttention(AttentionKernel):
    """Routing Transformer attention (online k-means routing, optional local heads).

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``. Heads ``[0, local_heads)``
    are local, the rest are routing heads with ``num_clusters`` centroids each.

    Args:
        num_clusters: centroids per routing head (``k``; the paper uses ``k * window = N``, ``k ~ sqrt(N)``).
        window: ``w``; bidirectional: tokens per cluster window; causal: a query sees the newest ``w``
            tokens of its cluster. Default ``ceil(max_seq_len / num_clusters)``, or 64.
        local_heads: how many heads use sliding-window attention instead of routing.
        local_window: keys a local head sees (causal: the last ``local_window``; bidirectional:
            ``local_window // 2`` on each side).
        decay: EMA decay of the centroids (official 0.999).
        commitment: weight ``beta`` of the commitment loss stored in :attr:`aux_loss` during training.
        qk_norm: attention logits on ``LN(q) . LN(k)`` without scaling (official TF code) instead of the
            standard ``q . k / sqrt(Dh)`` (default, so softmax weights transfer).
        seed: seed of the centroid initialisation (default: the global torch RNG).
        scale: score scale (default ``1/sqrt(Dh)``, or 1 with ``qk_norm``).

    After a training-mode forward, :attr:`aux_loss` holds ``beta * mean ||x - sg(mu(x))||^2`` over
    queries and keys (add it to the objective's loss); it is ``None`` in eval mode.

    Raises:
        ValueError: bad option values, ``local_heads > num_heads``, mismatched shapes or masks.
    """

    capabilities = Capabilities(attn_bias=False, exact=False, complexity="O(N*(w+k)*Dh) causal, O(N*w*Dh) bidir")

    def __init__(self, num_clusters: int = 4, window: int | None = None, local_heads: int = 0,
                 local_window: int = 32, decay: float = 0.999, commitment: float = 1e-4,
                 qk_norm: bool = False, seed: int | None = None, scale: float | None = None,
                 num_heads: int | None = None, head_dim: int | None = None, max_seq_len: int | None = None):
        super().__init__(scale=scale)
        for name, val in (("num_clusters", num_clusters), ("local_window", local_window)):
            if not (isinstance(val, int) and val >= 1):
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if window is not None and not (isinstance(window, int) and window >= 1):
            raise ValueError(f"window must be a positive int or None (auto), got {window!r}")
        if not (isinstance(local_heads, int) and local_heads >= 0):
            raise ValueError(f"local_heads must be an int >= 0, got {local_heads!r}")
        if num_heads is not None and local_heads > num_heads:
            raise ValueError(f"local_heads={local_heads} exceeds num_heads={num_heads}; use at most {num_heads}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if commitment < 0:
            raise ValueError(f"commitment must be >= 0, got {commitment}")
        self.num_clusters, self.local_heads, self.local_window = num_clusters, local_heads, local_window
        self.window = window or (math.ceil(max_seq_len / num_clusters) if max_seq_len else 64)
        self.decay, self.commitment, self.qk_norm, self.seed = decay, commitment, qk_norm, seed
        self.aux_loss: Tensor | None = None
        for buf in ("centroids", "ema_count", "ema_sum"):
            self.register_buffer(buf, None)
        if num_heads is not None and head_dim is not None and num_heads > local_heads:
            self._init_centroids(num_heads - local_heads, head_dim, None)

    # -- centroids ------------------------------------------------------------------------------
    def _init_centroids(self, heads: int, head_dim: int, device) -> None:
        """``LN(N(0, 1))`` centroids ``(heads, k, Dh)``; EMA sums start at them with count 1."""
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        mu = _unit_ln(torch.randn(heads, self.num_clusters, head_dim, generator=gen)).to(device)
        self.centroids, self.ema_sum = mu, mu.clone()
        self.ema_count = torch.ones(heads, self.num_clusters, device=device)

    def _get_centroids(self, heads: int, head_dim: int, device) -> Tensor:
        if self.centroids is None:
            self._init_centroids(heads, head_dim, device)
        if self.centroids.shape[0] != heads or self.centroids.shape[2] != head_dim:
            raise ValueError(
                f"routing: centroids are for {self.centroids.shape[0]} routing heads of dim "
                f"{self.centroids.shape[2]}, got {heads} heads of dim {head_dim}; build the kernel with "
                "the model's num_heads/head_dim (the shell does this)"
            )
        return self.centroids.float()

    # -- forward --------------------------------------------------------------------------------
    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        return self._compute(q, k, v, ctx, dense=False)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The ``(B, H, T, S)`` map ``W`` with ``forward(q, k, v) == W @ v`` (rows of unrouted tokens are 0)."""
        with torch.no_grad():
            return self._compute(q, k, v, ctx, dense=True)

    def _compute(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, dense: bool) -> Tensor:
        H, nl = q.shape[1], self.local_heads
        if nl > H:
            raise ValueError(f"routing: local_heads={nl} exceeds the {H} query heads")
        k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)  # (B, H, S, Dh)
        outs = []
        if nl:
            outs.append(self._local(q[:, :nl], k[:, :nl], v[:, :nl], ctx, dense))
        if nl < H:
            outs.append(self._routing(q[:, nl:], k[:, nl:], v[:, nl:], ctx, dense))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _routing(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, dense: bool) -> Tensor:
        B, h, T, D = q.shape
        qn, kn = _unit_ln(q), _unit_ln(k)  # (B, h, T|S, Dh) fp32 routing vectors
        mu = self._get_centroids(h, D, q.device)  # (h, k, Dh)
        sim_q = torch.einsum("bhtd,hcd->bhtc", qn, mu)  # (B, h, T, k)
        sim_k = torch.einsum("bhsd,hcd->bhsc", kn, mu)  # (B, h, S, k)
        if self.qk_norm:
            aq, ak = qn.to(q.dtype), kn.to(k.dtype)
            scale = 1.0 if self.scale is None else self.scale
        else:
            aq, ak, scale = q, k, self.softmax_scale(D)
        if ctx.causal:
            out = self._causal(aq, ak, v, sim_q, sim_k, ctx, scale, dense)
        else:
            out = self._topw(aq, ak, v, sim_q, sim_k, ctx, scale, dense)
        if self.training and not dense and ctx.cache is None:
            self._learn(qn, kn, sim_q, sim_k, ctx)
        elif not dense:
            self.aux_loss = None
        return out

    # -- causal routing: one cluster per token, the newest `window` tokens of the cluster ---------
    def new_cache(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, device=None, dtype=None):
        return RoutingCache(batch_size, num_kv_heads, head_dim, max_len, device=device, dtype=dtype)

    def _causal(self, q: Tensor, k: Tensor, v: Tensor, sim_q: Tensor, sim_k: Tensor, ctx: AttentionContext,
                scale: float, dense: bool) -> Tensor:
        B, h, T, _ = q.shape
        S, nc, kpm = k.shape[2], self.num_clusters, ctx.key_padding_mask
        cid = (sim_q + sim_k[:, :, S - T:]).argmax(-1)  # (B, h, T): one cluster for query and key
        if kpm is not None:  # padded tokens form a cluster of their own
            cid = cid.masked_fill(~kpm[:, None, S - T:], nc)
        cache = ctx.cache if isinstance(ctx.cache, RoutingCache) else None
        if cache is not None:
            cid = cache.clusters[:, :, :cache.seen] if dense else cache.store_clusters(cid)
        elif T != S:
            raise ValueError(f"routing: {T} queries but {S} keys; causal routing needs every token's cluster, "
                             "so decode through the kernel's own cache (model.new_cache / kernel.new_cache)")
        cls = _doc_ranks(ctx, B, S, q.device)[:, None, :] * (nc + 1) + cid  # (B, h, S)
        pos = torch.arange(S, device=q.device)
        if T == S:
            order = (cls * S + pos).argsort(dim=-1)
            return sorted_window_attention(q, k, v, order, cls, kpm, min(self.window, S), scale, True, dense)
        # decoding: each new query gathers the newest `window` keys of its cluster
        code = cls * S + pos
        sorted_code, order = code.sort(dim=-1)
        q_code = code[..., S - T:].contiguous()  # (B, h, T)
        end = torch.searchsorted(sorted_code, q_code, right=True)  # one past the query's own key
        slots = end[..., None] - self.window + torch.arange(self.window, device=q.device)  # (B, h, T, w)
        ok = slots >= 0
        slots = slots.clamp(min=0).flatten(2)
        ok = ok & (sorted_code.gather(-1, slots).view_as(ok) // S == (q_code // S)[..., None])
        idx = order.gather(-1, slots).view_as(ok)
        if kpm is not None:
            ok = ok & kpm[:, None, :].expand(B, h, S).gather(-1, idx.flatten(2)).view_as(ok)
        return gathered_weights(q, k, idx, ok, scale) if dense else gathered_attention(q, k, v, idx, ok, scale)

    # -- bidirectional routing: balanced top-w windows (official) -------------------------------
    def _windows(self, sim: Tensor, group: Tensor | None, valid: Tensor | None, G: int) -> tuple[Tensor, Tensor]:
        """Per centroid and document, the ``w`` most similar valid tokens.

        sim ``(B, h, N, k)``; group ``(B, N)`` document ranks in ``[0, G)`` or None; valid ``(B, N)`` or None.
        Returns idx ``(B, h, k*G, w)`` token indices and ok ``(B, h, k*G, w)`` (False = empty slot).
        """
        B, h, N, nc = sim.shape
        w = min(self.window, N)
        s = sim.permute(0, 1, 3, 2)  # (B, h, k, N)
        if valid is not None:
            s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        order = s.argsort(dim=-1, descending=True, stable=True)  # most similar first
        rank = torch.arange(N, device=sim.device).expand(B, h, nc, N)
        if group is None:
            g_sorted = torch.zeros_like(order)
        else:  # regroup by document, keeping similarity order inside a document
            g_sorted = group[:, None, None, :].expand(B, h, nc, N).gather(-1, order)
            g_sorted, perm = g_sorted.sort(dim=-1, stable=True)
            order = order.gather(-1, perm)
            sizes = torch.zeros(B, G, dtype=torch.long, device=sim.device)
            sizes.scatter_add_(1, group, torch.ones_like(group))  # (B, G) tokens per document
            starts = (sizes.cumsum(1) - sizes)[:, None, None, :].expand(B, h, nc, G)
            rank = rank - starts.gather(-1, g_sorted)
        ok = rank < w
        if valid is not None:
            ok = ok & valid[:, None, None, :].expand(B, h, nc, N).gather(-1, order)
        slot = torch.where(ok, g_sorted * w + rank, G * w)  # (B, h, k, N); G*w = discard
        idx = torch.zeros(B, h, nc, G * w + 1, dtype=torch.long, device=sim.device).scatter_(-1, slot, order)
        filled = torch.zeros(B, h, nc, G * w + 1, dtype=torch.bool, device=sim.device).scatter_(-1, slot, ok)
        return idx[..., :-1].reshape(B, h, nc * G, w), filled[..., :-1].reshape(B, h, nc * G, w)

    def _topw(self, q: Tensor, k: Tensor, v: Tensor, sim_q: Tensor, sim_k: Tensor, ctx: AttentionContext,
              scale: float, dense: bool) -> Tensor:
        """Balanced windows per (centroid, document); a token's output is the mean over its windows."""
        B, h, T, D = q.shape
        S = k.shape[2]
        kpm, group, G = ctx.key_padding_mask, None, 1
        if ctx.document_ids is not None:
            group = torch.unique(ctx.document_ids, return_inverse=True)[1]  # (B, S) ranks in [0, G)
            G = int(group.max()) + 1
        iq, okq = self._windows(sim_q, None if group is None else group[:, S - T:],
                                None if kpm is None else kpm[:, S - T:], G)  # (B, h, k*G, wq)
        ik, okk = self._windows(sim_k, group, kpm, G)  # (B, h, k*G, wk): window c*G+g pairs with iq's
        scores = torch.einsum("bhcqd,bhckd->bhcqk", gather_rows(q, iq), gather_rows(k, ik)) * scale
        p = masked_softmax(scores.float(), okk[..., None, :])  # (B, h, W, wq, wk)
        flat_q, wt_q = iq.flatten(2), okq.flatten(2).float()  # (B, h, W*wq)
        count = torch.zeros(B, h, T, device=q.device).scatter_add_(-1, flat_q, wt_q)
        inv = wt_q / count.gather(-1, flat_q).clamp(min=1.0)  # scatter-mean weights; unselected stay 0
        if dense:
            w_ = p * inv.view_as(iq)[..., None]
            pair = (iq[..., :, None] * S + ik[..., None, :]).flatten(2)  # (B, h, W*wq*wk) flat (t, s)
            out = torch.zeros(B, h, T * S, device=q.device).scatter_add_(-1, pair, w_.flatten(2))
            return out.view(B, h, T, S).to(q.dtype)
        oc = torch.einsum("bhcqk,bhckd->bhcqd", p.to(v.dtype), gather_rows(v, ik))  # (B, h, W, wq, Dh)
        oc = oc.flatten(2, 3) * inv[..., None].to(oc.dtype)
        out = torch.zeros(B, h, T, D, device=q.device, dtype=oc.dtype)
        return out.scatter_add_(2, flat_q[..., None].expand(B, h, flat_q.shape[-1], D), oc)

    # -- local heads ----------------------------------------------------------------------------
    def _local(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, dense: bool) -> Tensor:
        """Sliding-window heads (the paper's local heads): causal newest-w keys, or +-w//2 around the query."""
        B, h, T, D = q.shape
        S, dev, w, scale = k.shape[2], q.device, self.local_window, self.softmax_scale(D)
        kpm = ctx.key_padding_mask
        if T == S:  # blocked: the window runs within each document
            cls = _doc_ranks(ctx, B, S, dev)[:, None, :].expand(B, h, S)
            order = (cls * S + torch.arange(S, device=dev)).argsort(dim=-1)
            block = min(w, S) if ctx.causal else max(2 * min(w // 2, S - 1), 1)
            return sorted_window_attention(q, k, v, order, cls, kpm, block, scale, ctx.causal, dense)
        pos_q = torch.arange(S - T, S, device=dev)
        offs = torch.arange(-w + 1, 1, device=dev) if ctx.causal else torch.arange(-(w // 2), w // 2 + 1, device=dev)
        idx = pos_q[:, None] + offs  # (T, L)
        ok = ((idx >= 0) & (idx < S)).expand(B, T, -1)
        idx = idx.clamp(0, S - 1)
        if kpm is not None:
            ok = ok & kpm[:, idx]  # (B, T, L)
        if ctx.document_ids is not None:
            docs = ctx.document_ids
            ok = ok & (docs[:, idx] == docs[:, S - T:, None])
        idx = idx.expand(B, h, T, idx.shape[-1])
        ok = ok[:, None].expand(B, h, T, ok.shape[-1])
        return gathered_weights(q, k, idx, ok, scale) if dense else gathered_attention(q, k, v, idx, ok, scale)

    # -- online k-means -------------------------------------------------------------------------
    def _learn(self, qn: Tensor, kn: Tensor, sim_q: Tensor, sim_k: Tensor, ctx: AttentionContext) -> None:
        """EMA k-means step on this batch's queries and keys, and the commitment loss (training only)."""
        T, S, nc = qn.shape[2], kn.shape[2], self.num_clusters
        kpm = ctx.key_padding_mask
        valid_k = torch.ones(kn.shape[0], S, device=kn.device) if kpm is None else kpm.float()  # (B, S)
        valid_q = valid_k[:, S - T:]
        xs = ((qn, sim_q.argmax(-1), valid_q), (kn, sim_k.argmax(-1), valid_k))
        mu = self.centroids.float()
        loss = qn.new_zeros(())
        for x, assign, valid in xs:
            picked = mu[torch.arange(mu.shape[0], device=mu.device)[:, None, None], assign.transpose(0, 1)]
            dist = (x - picked.transpose(0, 1)).pow(2).sum(-1)  # (B, h, N)
            loss = loss + (dist * valid[:, None]).sum() / (valid.sum() * x.shape[1]).clamp(min=1)
        self.aux_loss = self.commitment * loss
        with torch.no_grad():
            cnt = torch.zeros_like(self.ema_count, dtype=torch.float)
            sums = torch.zeros_like(self.ema_sum, dtype=torch.float)
            for x, assign, valid in xs:
                one_hot = F.one_hot(assign, nc).float() * valid[:, None, :, None]  # (B, h, N, k)
                cnt += one_hot.sum(dim=(0, 2))
                sums += torch.einsum("bhnc,bhnd->hcd", one_hot, x.detach())
            self.ema_count.mul_(self.decay).add_(cnt.to(self.ema_count.dtype), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums.to(self.ema_sum.dtype), alpha=1 - self.decay)
            n = self.ema_count.sum(-1, keepdim=True)
            smoothed = (self.ema_count + _EPS) / (n + nc * _EPS) * n  # Laplace smoothing (official)
            self.centroids.copy_(self.ema_sum / smoothed[..., None])

    def extra_repr(self) -> str:
        return (f"num_clusters={self.num_clusters}, window={self.window}, local_heads={self.local_heads}, "
                f"local_window={self.local_window}, qk_norm={self.qk_norm}")
