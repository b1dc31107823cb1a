"""Tensor-level entry to the native per-document bf16 attention kernels (``csrc/``): inference
(:func:`documents_attention_bf16`) and a differentiable version for training on AMX
(:func:`trainable_documents_attention_bf16`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import load

# Longest document each path takes; longer ones go to PyTorch's flash kernel, which tiles the keys and
# wins there (benchmarks/native_attention.py: AMX still 1.3-1.5x SDPA at 512 tokens; AVX-512 1.1-2.5x
# up to 80 tokens, 0.8-1.1x at 128, behind from 256, also with PyTorch held to AVX-512 by
# ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16).
MAX_DOC_LEN = {"amx": 1024, "avx512": 96}


def usable(q: Tensor, k: Tensor, v: Tensor, *, grad: bool = False) -> bool:
    """The inputs fit the kernel: CPU bfloat16, ``(B, H, T, Dh)`` with ``Dh % 16 == 0`` and ``Dh <= 256``,
    ``H`` a multiple of ``Hkv``, unit stride along ``Dh``, even token strides, 4-byte aligned data, and
    (``grad=False``) no gradient wanted."""
    if q.device.type != "cpu" or not all(t.dtype == torch.bfloat16 and t.dim() == 4 for t in (q, k, v)):
        return False
    if not grad and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    dh = q.shape[3]
    shapes_ok = dh % 16 == 0 and dh <= 256 and k.shape[3] == v.shape[3] == dh and k.shape[1] == v.shape[1] \
        and q.shape[1] % k.shape[1] == 0 and q.shape[2] == k.shape[2] == v.shape[2]
    return shapes_ok and all(_layout_ok(t) for t in (q, k, v))


def _layout_ok(t: Tensor) -> bool:
    return t.stride(3) == 1 and t.stride(2) % 2 == 0 and t.data_ptr() % 4 == 0


def _doc_table(spans: list[list[tuple[int, int]]]) -> Tensor:
    """``(docs, 3)`` int64: batch row, first token, length."""
    return torch.tensor([(b, s, e - s) for b, row in enumerate(spans) for s, e in row], dtype=torch.int64)


def _strides(*tensors: Tensor) -> list[Tensor]:
    """The (batch, head, token) strides of each tensor as int64 tensors (keep them alive while in use)."""
    return [torch.tensor(t.stride()[:3], dtype=torch.int64) for t in tensors]


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
    plan = _plan(q, k, v, spans, grad=False, amx=amx)
    if plan is None:
        return None
    lib, table, amx = plan
    return _forward(lib, q, k, v, table, causal, q.shape[3] ** -0.5 if scale is None else float(scale), amx)


def _plan(q: Tensor, k: Tensor, v: Tensor, spans: list[list[tuple[int, int]]], *, grad: bool,
          amx: bool | None) -> tuple | None:
    """``(lib, doc table, use AMX)`` when the kernel can run these inputs (the backward needs AMX), else None."""
    if not usable(q, k, v, grad=grad) or not any(spans):
        return None
    lib = load()
    if lib is None:
        return None
    amx = lib.amx and q.shape[3] % 32 == 0 and amx is not False
    table = _doc_table(spans)
    if (grad and not amx) or int(table[:, 2].max()) > MAX_DOC_LEN["amx" if amx else "avx512"]:
        return None
    return lib, table, amx


def _forward(lib, q: Tensor, k: Tensor, v: Tensor, table: Tensor, causal: bool, scale: float, amx: bool,
             lse: Tensor | None = None) -> Tensor:
    """Run the forward kernel; ``lse`` ``(B, H, T)`` float32 (AMX only) receives the base-2 log-sum-exp."""
    B, H, T, Dh = q.shape
    out = q.new_empty(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh) view of (B, T, H, Dh) memory
    strides = _strides(q, k, v, out) + ([] if lse is None else _strides(lse))  # kept alive during the call
    lse_args = (None, None) if lse is None else (lse.data_ptr(), strides[4].data_ptr())
    ptrs = [t.data_ptr() for t in (q, k, v, out, *strides[:4], table)]
    _check(lib.attnlab_attend_docs_bf16(*ptrs, table.shape[0], H, k.shape[1], Dh, scale, int(causal), int(amx),
                                        *lse_args, _threads(table, H)))
    return out


def trainable_documents_attention_bf16(q: Tensor, k: Tensor, v: Tensor, spans: list[list[tuple[int, int]]], *,
                                       causal: bool, scale: float | None) -> Tensor | None:
    """:func:`documents_attention_bf16` with a backward pass (AMX only, ``Dh % 32 == 0``): the forward
    keeps each row's log-sum-exp and the backward recomputes the probabilities from it (FlashAttention-2's
    equations) one (document, head) at a time. ``None`` when it cannot run; the caller uses PyTorch."""
    plan = _plan(q, k, v, spans, grad=True, amx=True)
    if plan is None:
        return None
    table = plan[1]
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    return _NativeAttention.apply(q, k, v, table, bool(causal), scale)


class _NativeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, table: Tensor, causal: bool, scale: float) -> Tensor:
        B, H, T, _ = q.shape
        lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)  # base-2 log-sum-exp per row
        out = _forward(load(), q, k, v, table, causal, scale, True, lse)
        ctx.save_for_backward(q, k, v, out, lse, table)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse, table = ctx.saved_tensors
        lib = load()
        B, H, T, Dh = q.shape
        Hkv = k.shape[1]
        if not _layout_ok(dout):
            dout = dout.contiguous()
        dq = q.new_empty(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh) views of (B, T, H, Dh) memory
        dk = q.new_empty(B, T, H, Dh).transpose(1, 2)  # per query head; summed over each KV group below
        dv = q.new_empty(B, T, H, Dh).transpose(1, 2)
        tensors = (q, k, v, out, dout, lse, dq, dk, dv)
        strides = _strides(*tensors)  # kept alive during the call
        ptrs = [t.data_ptr() for t in (*tensors, *strides, table)]
        _check(lib.attnlab_attend_docs_bf16_backward(*ptrs, table.shape[0], H, Hkv, Dh, ctx.scale, int(ctx.causal),
                                                     _threads(table, H)))
        if Hkv != H:  # (B, Hkv, group, T, Dh) summed over the group (repeat_interleave semantics)
            dk = dk.unflatten(1, (Hkv, H // Hkv)).sum(2)
            dv = dv.unflatten(1, (Hkv, H // Hkv)).sum(2)
        return dq, dk, dv, None, None, None


def _threads(table: Tensor, heads: int) -> int:
    """OpenMP threads for one call (PyTorch's intra-op count, at most one per (document, head) item). ctypes
    releases the GIL meanwhile, so concurrent callers (embed's workers, one thread each) run in parallel."""
    return max(1, min(torch.get_num_threads(), table.shape[0] * heads))


def _check(status: int) -> None:
    """The kernels return -1 when a thread's buffers could not be allocated."""
    if status != 0:
        raise MemoryError("the native attention kernel could not allocate its buffers")
