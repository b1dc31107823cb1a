"""Tensor-level entry to the native per-document bf16 attention kernel (``attention_bf16.c``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from . import load

# Longest document each path takes; longer ones go to PyTorch's flash kernel, which tiles the keys and
# wins there (benchmarks/native_attention.py: AMX 1.1-1.5x SDPA at 512 tokens, AVX-512 behind SDPA
# from ~128-256 tokens, also with PyTorch held to AVX-512 via ONEDNN_MAX_CPU_ISA).
MAX_DOC_LEN = {"amx": 1024, "avx512": 128}
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def usable(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """The inputs fit the kernel: CPU bfloat16, ``(B, H, T, Dh)`` with ``Dh % 16 == 0`` and ``Dh <= 256``,
    ``H`` a multiple of ``Hkv``, unit stride along ``Dh``, even token strides, 4-byte aligned data, and no
    gradient wanted (the kernel is forward only)."""
    if q.device.type != "cpu" or not all(t.dtype == torch.bfloat16 and t.dim() == 4 for t in (q, k, v)):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    dh = q.shape[3]
    shapes_ok = dh % 16 == 0 and dh <= 256 and k.shape[3] == v.shape[3] == dh and k.shape[1] == v.shape[1] \
        and q.shape[1] % k.shape[1] == 0
    return shapes_ok and all(t.stride(3) == 1 and t.stride(2) % 2 == 0 and t.data_ptr() % 4 == 0 for t in (q, k, v))


def documents_attention_bf16(q: Tensor, k: Tensor, v: Tensor, spans: list[list[tuple[int, int]]], *,
                             causal: bool, scale: float | None, amx: bool | None = None) -> Tensor | None:
    """Softmax attention inside each ``[start, end)`` run of ``spans`` (per batch row), like
    :func:`attnlab.attention.documents.per_document_attention`, on the native kernel.

    q ``(B, H, T, Dh)``, k, v ``(B, Hkv, T, Dh)`` (GQA heads are grouped, not expanded) -> ``(B, H, T, Dh)``
    (a transposed view of ``(B, T, H, Dh)`` memory). Returns ``None`` when the kernel cannot run these
    inputs (see :func:`usable`), a document is longer than :data:`MAX_DOC_LEN` for the path, or the kernel
    is not available; the caller then uses PyTorch. ``amx``: use AMX tiles when the CPU has them and
    ``Dh % 32 == 0`` (default); ``False`` forces the AVX-512 path.
    """
    if not usable(q, k, v):
        return None
    docs = [(b, s, e - s) for b, row in enumerate(spans) for s, e in row]
    lib = load()
    if lib is None or not docs:
        return None
    B, H, T, Dh = q.shape
    amx = lib.amx and Dh % 32 == 0 and amx is not False
    if max(d[2] for d in docs) > MAX_DOC_LEN["amx" if amx else "avx512"]:
        return None
    out = q.new_empty(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh) view of (B, T, H, Dh) memory
    table = torch.tensor(docs, dtype=torch.int64)  # (docs, 3): batch row, first token, length
    strides = [torch.tensor(t.stride()[:3], dtype=torch.int64) for t in (q, k, v, out)]
    scale = Dh ** -0.5 if scale is None else float(scale)
    ptrs = [t.data_ptr() for t in (q, k, v, out, *strides, table)]

    def run(begin: int, end: int) -> None:
        if lib.attnlab_attend_docs_bf16(*ptrs, begin, end, H, k.shape[1], Dh, scale, int(causal),
                                         int(amx)) != 0:
            raise MemoryError("the native attention kernel could not allocate its buffers")

    items = len(docs) * H
    threads = min(torch.get_num_threads(), items // 8)
    if threads <= 1:
        run(0, items)  # ctypes releases the GIL: concurrent callers (embed's workers) run in parallel
    else:  # contiguous item ranges of about equal work (~ len^2 per item)
        work = (table[:, 2].double() ** 2 + 64 * table[:, 2]).repeat_interleave(H).cumsum(0)  # (items,)
        cuts = torch.searchsorted(work, work[-1] * torch.arange(1, threads, dtype=torch.float64) / threads)
        bounds = [0, *cuts.tolist(), items]
        futures = [_executor().submit(run, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        run(bounds[0], bounds[1])
        for f in futures:
            f.result()
    return out


def _executor() -> ThreadPoolExecutor:
    """A process-wide pool for the extra threads (created once, sized by the thread count then)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads() - 1),
                                       thread_name_prefix="attnlab-native")
        return _pool
