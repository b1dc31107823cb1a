"""Causal linear attention in chunks, with a hand-written backward pass (the training path of ``linear``).

Katharopoulos et al., "Transformers are RNNs" (ICML 2020), causal form; chunked ("quadratic inside a
chunk, a running state between chunks") as in Hua et al., "Transformer Quality in Linear Time"
(ICML 2022).

Per head, with non-negative features ``q_i, k_j`` and ``v1_j = [v_j, 1]`` (the ones column carries the
normaliser through the same products)::

    y_i = state q_i + sum_{j <= i} (q_i . k_j) v1_j        out_i = y_i[:Dh] / (y_i[Dh] + eps)

For chunk ``c`` of ``C`` tokens: ``y_c = tril(q_c k_c^T) v1_c + q_c S_c`` with the state before it
``S_c = state + sum_{c' < c} k_c'^T v1_c'`` ``(Dh, Dh+1)``. Every chunk of every head is done at
once with batched matmuls (``(C, Dh) x (Dh, C)`` etc.); nothing ``N x N`` is built.

Why a custom backward: through autograd the same form (einsums, ``cumsum`` of the states) measured
~0.6 s forward + backward for the whole ``linear`` kernel at N=16k, H=4, Dh=64 on one CPU thread;
this one ~0.27 s (no saved copies of permuted operands, ``cumsum`` over the chunk axis replaced by
triangular matmuls, ~4x faster here). Why few, large ops rather than a loop over cache-sized blocks:
on a CPU shared with other work each multi-threaded op can wait a scheduler slice for its second
thread, so the op count matters as much as the FLOPs (a loop over 2k-token blocks measured 10x
slower than this one-pass form under such load, and no faster without it).
Memory: ``O(N * (C + Dh))`` per head (in-chunk scores and per-chunk states, kept for backward).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

TRI_MAX = 32  # prefix sums over at most this many chunks: one triangular matmul
RUN = 8  # longer: runs of at most this many chunks (the triangle costs n * RUN * Dh^2 multiply-adds)


def _b(x: Tensor) -> Tensor:
    """``(P, n, r, c) -> (P * n, r, c)`` (a view: every operand here is contiguous per chunk)."""
    return x.view(-1, x.shape[-2], x.shape[-1])


@functools.lru_cache(maxsize=64)
def _strict_tril(n: int, device: torch.device, dtype: torch.dtype, upper: bool) -> Tensor:
    """Cached ``(n, n)`` strict lower (or upper) triangle of ones: every small op counts under load."""
    tri = torch.ones(n, n, device=device, dtype=dtype).tril(-1)
    return tri.t().contiguous() if upper else tri


def _prefix(x: Tensor, out: Tensor, carry: Tensor | None, reverse: bool) -> None:
    """``out[:, i] = carry + sum_{j < i} x[:, j]`` (``j > i`` if ``reverse``) over ``x (P, n, ...)``.

    Few, large ops: up to ``TRI_MAX`` chunks in one strict-triangle matmul; longer sequences split into
    ``R`` equal runs of ``T <= RUN`` chunks (one batched matmul), then the runs' totals are
    prefix-summed the same way and added back. One ``n x n`` triangle would cost more than the chunk
    products themselves.
    """
    P, n = x.shape[:2]
    x, out = x.reshape(P, n, -1), out.view(P, n, -1)  # (P, n, F)
    carry = None if carry is None else carry.reshape(P, 1, -1)
    T = n if n <= TRI_MAX else max(d for d in range(1, RUN + 1) if n % d == 0)  # run length
    if T == 1 and n > 1:  # no divisor <= RUN (n prime, say): a running sum
        order = list(range(n - 1, -1, -1) if reverse else range(n))
        out[:, order[0]] = 0 if carry is None else carry[:, 0]
        for prev, i in zip(order, order[1:]):
            torch.add(out[:, prev], x[:, prev], out=out[:, i])
        return
    R = n // T
    tri = _strict_tril(T, x.device, x.dtype, reverse).expand(P * R, T, T)
    if R == 1 and carry is not None:
        torch.baddbmm(carry, tri, x, out=out)
        return
    torch.bmm(tri, x.view(P * R, T, -1), out=out.view(P * R, T, -1))  # within each run
    if R == 1:
        return
    edge = 0 if reverse else T - 1  # each run's last chunk in scan order
    xr, outr = x.view(P, R, T, -1), out.view(P, R, T, -1)
    totals = outr[:, :, edge] + xr[:, :, edge]  # (P, R, F)
    offsets = torch.empty_like(totals)
    _prefix(totals, offsets, carry, reverse)  # what comes before each run
    outr += offsets[:, :, None]


def _tril_(a: Tensor) -> Tensor:
    """Causal mask inside each chunk, in place: ``a (P, n, G*C, C)`` as ``(P*n*G, C, C)`` blocks."""
    a.view(-1, a.shape[-1], a.shape[-1]).tril_()
    return a


class CausalLinearScan(torch.autograd.Function):
    """``(q (P, n, G*C, Dh), k (P, n, C, Dh), v (P, n, C, Dh), state (P, Dh, Dh+1) | None, eps)``
    -> ``out (P, n, G*C, Dh)`` and the final state ``(P, Dh, Dh+1)`` (not differentiable).

    ``P`` = batch x KV heads, ``n`` chunks of ``C`` tokens; query rows of a chunk are ordered
    ``(group, token)``. The incoming ``state`` (a decoding cache) is treated as a constant.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, state: Tensor | None, eps: float):
        P, n, C, D = k.shape
        v1 = torch.cat([v, v.new_ones(P, n, C, 1)], -1)  # (P, n, C, Dh+1): the ones column sums phi_k
        kv = torch.bmm(_b(k).transpose(1, 2), _b(v1)).view(P, n, D, D + 1)  # each chunk's summary
        prev = torch.empty_like(kv)  # (P, n, Dh, Dh+1) state before each chunk
        _prefix(kv, prev, state, reverse=False)
        final = prev[:, -1] + kv[:, -1]
        del kv  # free before the next large buffer (reused memory: fewer page faults on CPU)
        a = _tril_(torch.bmm(_b(q), _b(k).transpose(1, 2)))  # (P*n, G*C, C) causal in-chunk scores
        y = torch.bmm(_b(q), _b(prev)).baddbmm_(a, _b(v1)).view(P, n, -1, D + 1)  # earlier chunks + this one
        den = y[..., D:] + eps  # (P, n, G*C, 1)
        out = y[..., :D] / den
        ctx.save_for_backward(q, k, v1, a, prev, out, den)
        ctx.mark_non_differentiable(final)
        return out, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout: Tensor, _gfinal):
        with torch.autocast(gout.device.type, enabled=False):  # fp32 like the forward, wherever backward runs
            return CausalLinearScan._backward(ctx, gout)

    @staticmethod
    def _backward(ctx, gout: Tensor):
        q, k, v1, a, prev, out, den = ctx.saved_tensors
        P, n, C, D = k.shape
        # out = y[:Dh] / den  ->  dy = [g / den, -(g / den) . out]      (P, n, G*C, Dh+1)
        dy = q.new_empty(*q.shape[:-1], D + 1)
        torch.div(gout, den, out=dy[..., :D])
        rows = q.numel() // D  # the dot products as one batch of (1 x Dh) @ (Dh x 1), written in place
        torch.baddbmm(dy[..., D:].view(rows, 1, 1), dy[..., :D].view(rows, 1, D), out.reshape(rows, D, 1),
                      beta=0, alpha=-1, out=dy[..., D:].view(rows, 1, 1))
        da = _tril_(torch.bmm(_b(dy), _b(v1).transpose(1, 2)))  # (P*n, G*C, C)
        dq = torch.bmm(da, _b(k)).baddbmm_(_b(dy), _b(prev).transpose(1, 2))
        dprev = torch.bmm(_b(q).transpose(1, 2), _b(dy)).view(P, n, D, D + 1)  # d loss / d (state before chunk)
        dsuf = torch.empty_like(dprev)  # a chunk's summary feeds the state of every later chunk
        _prefix(dprev, dsuf, None, reverse=True)
        del dprev
        dk = torch.bmm(da.transpose(1, 2), _b(q)).baddbmm_(_b(v1), _b(dsuf).transpose(1, 2))
        del da
        dv = torch.bmm(a.transpose(1, 2), _b(dy)[..., :D]).baddbmm_(_b(k), _b(dsuf)[..., :D])
        return dq.view_as(q), dk.view_as(k), dv.view_as(k), None, None
