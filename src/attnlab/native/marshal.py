"""Marshalling shared by the native kernels' tensor-level entries: checks of what the kernels accept,
the tables and stride arrays they read, output and gradient buffers in the layout they write, thread
counts and status codes.

The C kernels trust what they are given (a wrong table or stride is memory corruption, not an error), so
everything they read is built and checked here, in one place.
"""

from __future__ import annotations

import torch
from torch import Tensor

Spans = list[list[tuple[int, int]]]  # per batch row, the [start, end) runs of its documents


def pointer(t: Tensor | None) -> int | None:
    """The address of ``t``'s data, or None (a C NULL) for no tensor."""
    return None if t is None else t.data_ptr()


def threads(items: int) -> int:
    """OpenMP threads for one call over ``items`` independent work items: PyTorch's intra-op count, at most
    one per item. (ctypes releases the GIL meanwhile, so concurrent callers run in parallel.)"""
    return max(1, min(torch.get_num_threads(), items))


def check_status(status: int, kernel: str = "the native attention kernel", buffers: str = "its buffers") -> None:
    """The kernels return -1 when a thread's buffers could not be allocated.

    Raises:
        MemoryError: "<kernel> could not allocate <buffers>", for a nonzero ``status``.
    """
    if status != 0:
        raise MemoryError(f"{kernel} could not allocate {buffers}")


def grad_wanted(*tensors: Tensor | None) -> bool:
    """Autograd is on and one of ``tensors`` requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def score_scale(q: Tensor, scale: float | None) -> float:
    """The attention score scale: ``scale``, or ``Dh ** -0.5`` for q ``(B, H, T, Dh)``."""
    return q.shape[3] ** -0.5 if scale is None else float(scale)


def shapes_fit(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """The shapes both native attention kernels (bf16 and fp32) take: 4-D ``(B, H, T, Dh)`` q and
    ``(B, Hkv, T, Dh)`` k, v with equal batch sizes and lengths, ``H`` a multiple of ``Hkv``, ``Dh % 16 == 0``,
    ``Dh <= 256``."""
    if not all(t.dim() == 4 for t in (q, k, v)):
        return False
    dh = q.shape[3]
    return dh % 16 == 0 and dh <= 256 and k.shape[3] == v.shape[3] == dh and k.shape[1] == v.shape[1] \
        and q.shape[1] % k.shape[1] == 0 and q.shape[2] == k.shape[2] == v.shape[2] \
        and q.shape[0] == k.shape[0] == v.shape[0]


def whole_rows(batch: int, length: int) -> Spans:
    """Spans that make each of ``batch`` rows of ``length`` tokens one document."""
    return [[(0, length)]] * batch


def doc_table(spans: Spans, batch: int, length: int) -> Tensor:
    """``(docs, 3)`` int64: batch row, first token, length, the table the attention kernels walk.

    Raises:
        ValueError: unless ``spans`` has one list per batch row whose ``[start, end)`` runs tile
            ``[0, length)`` in order (what :func:`attnlab.attention.engines.documents.document_spans` gives;
            the kernels trust the table, and tokens outside every run would get no output).
    """
    if len(spans) != batch:
        raise ValueError(f"spans has {len(spans)} rows for a batch of {batch}: give one list of (start, end) "
                         "runs per batch row")
    table = []
    for b, row in enumerate(spans):
        end = 0
        for s, e in row:
            if s != end or e <= s:
                raise ValueError(f"spans[{b}] must be non-empty [start, end) runs, each starting where the last "
                                 f"ended, covering 0..{length}; got {list(row)[:6]}")
            table.append((b, s, e - s))
            end = e
        if end != length:
            raise ValueError(f"spans[{b}] covers 0..{end}, not the {length} tokens of the row")
    return torch.tensor(table, dtype=torch.int64)


def strides(*tensors: Tensor) -> list[Tensor]:
    """The (batch, head, token) strides of each tensor as int64 tensors (keep them alive while in use)."""
    return [torch.tensor(t.stride()[:3], dtype=torch.int64) for t in tensors]


def token_major_like(q: Tensor) -> Tensor:
    """An empty ``(B, H, T, Dh)`` like q ``(B, H, T, Dh)``: a transposed view of ``(B, T, H, Dh)`` memory, the
    layout the attention kernels write (the next projection reads it without a copy)."""
    B, H, T, Dh = q.shape
    return q.new_empty(B, T, H, Dh).transpose(1, 2)


def gradient_buffers(q: Tensor, kv_heads: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(dq, dk, dv, joined)`` for the backward kernels to write: each gradient :func:`token_major_like` q, dk
    and dv per query head (:func:`gradient_results` folds them onto the KV heads).

    Without GQA (``kv_heads == H``) the three are slices of one ``(B, T, 3, H, Dh)`` buffer, ``joined``: the layout
    of the attention shell's fused q/k/v projection output, so that the backward of its split takes ``joined`` as
    the projection's gradient instead of concatenating three tensors (:func:`attnlab.attention.split.split_last`;
    that concatenation was ~2% of a Swin-T fp32 training step). With GQA ``joined`` is None.
    """
    B, H, T, Dh = q.shape
    if kv_heads != H:
        return token_major_like(q), token_major_like(q), token_major_like(q), None
    joined = q.new_empty(B, T, 3, H, Dh)
    return (*_joined_views(joined), joined)


def _joined_views(joined: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv ``(B, H, T, Dh)``: the three slices of a ``(B, T, 3, H, Dh)`` buffer."""
    return tuple(joined[:, :, i].transpose(1, 2) for i in range(3))


def gradient_results(dq: Tensor, dk: Tensor, dv: Tensor, joined: Tensor | None,
                     kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """What a backward operator returns for the buffers of :func:`gradient_buffers`: ``(joined, empty, empty)``
    when they share one (a torch.library operator's outputs may not alias each other; :func:`split_results` makes
    the views again), else ``dq`` and dk, dv summed over each group of query heads sharing a KV head
    (repeat_interleave order) -> ``(B, kv_heads, T, Dh)``."""
    if joined is not None:
        return joined, dq.new_empty(0), dq.new_empty(0)
    H = dq.shape[1]
    if kv_heads == H:
        return dq, dk, dv
    return dq, dk.unflatten(1, (kv_heads, H // kv_heads)).sum(2), dv.unflatten(1, (kv_heads, H // kv_heads)).sum(2)


def split_results(first: Tensor, dk: Tensor, dv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dq ``(B, H, T, Dh)``, dk, dv ``(B, Hkv, T, Dh)`` from a backward operator's :func:`gradient_results`."""
    if first.dim() == 5:  # the joined (B, T, 3, H, Dh) buffer
        return _joined_views(first)
    return first, dk, dv


def fake_gradients(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Outputs of the attention backward operators for torch.compile's tracing (shapes and layouts only), as
    :func:`gradient_results` makes them."""
    if k.shape[1] != q.shape[1]:
        return token_major_like(q), k.new_empty(k.shape), v.new_empty(v.shape)
    B, H, T, Dh = q.shape
    return q.new_empty(B, T, 3, H, Dh), q.new_empty(0), q.new_empty(0)
