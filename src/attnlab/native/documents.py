"""Tensor-level entry to the native per-document bf16 attention kernels (``csrc/``): inference
(:func:`documents_attention_bf16`) and a differentiable version for training on AMX
(:func:`trainable_documents_attention_bf16`)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import load
from .marshal import (Spans, check_status, doc_table, fake_gradients, grad_wanted, gradient_buffers,
                      gradient_results, score_scale, shapes_fit, split_results, strides, threads, token_major_like)

FAMILY = "attention_bf16"

# Longest document each path takes; longer ones go to PyTorch's flash kernel, which tiles the keys
# (benchmarks/native_attention.py, 1 thread: AMX 1.3-1.5x SDPA at 512 tokens; AVX-512 BF16 without AMX
# 2.3-2.6x SDPA from 128 to 1,024 tokens, head sizes 32 and 64, 2.6-3.6x at 2 threads; an earlier,
# slower build of the AVX-512 path lost to SDPA from 128 tokens, which had kept it at 96).
MAX_DOC_LEN = {"amx": 1024, "avx512": 1024}


def usable(q: Tensor, k: Tensor, v: Tensor, *, grad: bool = False) -> bool:
    """The inputs fit the kernel: CPU bfloat16, ``(B, H, T, Dh)`` with ``Dh % 16 == 0`` and ``Dh <= 256``,
    ``H`` a multiple of ``Hkv``, equal batch sizes and lengths, unit stride along ``Dh``, even token
    strides, 4-byte aligned data, and (``grad=False``) no gradient wanted."""
    if q.device.type != "cpu" or not all(t.dtype == torch.bfloat16 for t in (q, k, v)):
        return False
    if not grad and grad_wanted(q, k, v):
        return False
    return shapes_fit(q, k, v) and all(_layout_ok(t) for t in (q, k, v))


def _layout_ok(t: Tensor) -> bool:
    return t.stride(3) == 1 and t.stride(2) % 2 == 0 and t.data_ptr() % 4 == 0


def _kernel_layout(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(t if _layout_ok(t) else t.contiguous() for t in tensors)


def documents_attention_bf16(q: Tensor, k: Tensor, v: Tensor, spans: Spans, *,
                             causal: bool, scale: float | None, amx: bool | None = None) -> Tensor | None:
    """Softmax attention inside each ``[start, end)`` run of ``spans`` (per batch row), like
    :func:`attnlab.attention.engines.documents.per_document_attention`, on the native kernel.

    q ``(B, H, T, Dh)``, k, v ``(B, Hkv, T, Dh)`` (GQA heads are grouped, not expanded) -> ``(B, H, T, Dh)``
    (a transposed view of ``(B, T, H, Dh)`` memory). Returns ``None`` when the kernel cannot run these
    inputs (see :func:`usable`), a document is longer than :data:`MAX_DOC_LEN` for the path, or the kernel
    is not available; the caller then uses PyTorch. ``amx``: use AMX tiles when the CPU has them and
    ``Dh % 32 == 0`` (default); ``False`` forces the AVX-512 path. ``scale`` may have any sign.

    Raises:
        ValueError: ``spans`` does not tile each row (one list per batch row of consecutive runs over
            ``[0, T)``).
    """
    plan = _plan(q, k, v, spans, grad=False, amx=amx)
    if plan is None:
        return None
    table, amx = plan
    return attend_documents_op(q, k, v, table, bool(causal), score_scale(q, scale), bool(amx), False)[0]


def trainable_documents_attention_bf16(q: Tensor, k: Tensor, v: Tensor, spans: Spans, *,
                                       causal: bool, scale: float | None) -> Tensor | None:
    """:func:`documents_attention_bf16` with a backward pass (AMX only, ``Dh % 32 == 0``): the forward
    keeps each row's log-sum-exp and the backward recomputes the probabilities from it (FlashAttention-2's
    equations) one (document, head) at a time. ``None`` when it cannot run; the caller uses PyTorch.
    Double backward is not supported (the backward kernel has no derivative)."""
    plan = _plan(q, k, v, spans, grad=True, amx=True)
    if plan is None:
        return None
    return attend_documents_op(q, k, v, plan[0], bool(causal), score_scale(q, scale), True, True)[0]


def _plan(q: Tensor, k: Tensor, v: Tensor, spans: Spans, *, grad: bool,
          amx: bool | None) -> tuple | None:
    """``(doc table, use AMX)`` when the kernel can run these inputs (the backward needs AMX), else None."""
    if not usable(q, k, v, grad=grad) or not any(spans):
        return None
    lib = load(FAMILY)
    if lib is None:
        return None
    amx = lib.amx and q.shape[3] % 32 == 0 and amx is not False
    table = doc_table(spans, q.shape[0], q.shape[2])
    if (grad and not amx) or int(table[:, 2].max()) > MAX_DOC_LEN["amx" if amx else "avx512"]:
        return None
    return table, amx


def _attend_into(lib, q: Tensor, k: Tensor, v: Tensor, table: Tensor, causal: bool, scale: float, amx: bool,
                 lse: Tensor | None) -> Tensor:
    """Run the forward kernel; ``lse`` ``(B, H, T)`` float32 (AMX only) receives the base-2 log-sum-exp."""
    H, Dh = q.shape[1], q.shape[3]
    out = token_major_like(q)
    held = strides(q, k, v, out) + ([] if lse is None else strides(lse))  # kept alive during the call
    lse_args = (None, None) if lse is None else (lse.data_ptr(), held[4].data_ptr())
    ptrs = [t.data_ptr() for t in (q, k, v, out, *held[:4], table)]
    check_status(lib.attnlab_attend_docs_bf16(*ptrs, table.shape[0], H, k.shape[1], Dh, scale, int(causal), int(amx),
                                        *lse_args, threads(table.shape[0] * H)))
    return out


# The kernels are registered as PyTorch operators (torch.library) so that torch.compile treats them as
# opaque calls with a known output layout instead of tracing into the ctypes call (it would run the
# kernel on tensors whose layout the compiled graph chose, and crash).
@torch.library.custom_op("attnlab::attend_documents_bf16", mutates_args=())
def attend_documents_op(q: Tensor, k: Tensor, v: Tensor, table: Tensor, causal: bool, scale: float, amx: bool,
                        with_lse: bool) -> tuple[Tensor, Tensor]:
    """``(out (B, H, T, Dh) view of (B, T, H, Dh) memory, lse (B, H, T) float32 or (0,) without with_lse)``."""
    B, H, T, _ = q.shape
    q, k, v = _kernel_layout(q, k, v)  # a compiled graph may hand over other strides than eager did
    lse = torch.empty((B, H, T) if with_lse else (0,), dtype=torch.float32, device=q.device)
    out = _attend_into(load(FAMILY), q, k, v, table, causal, scale, amx, lse if with_lse else None)
    return out, lse


@attend_documents_op.register_fake
def _(q, k, v, table, causal, scale, amx, with_lse):
    B, H, T, _ = q.shape
    return token_major_like(q), q.new_empty((B, H, T) if with_lse else (0,), dtype=torch.float32)


@torch.library.custom_op("attnlab::attend_documents_bf16_backward", mutates_args=())
def attend_documents_backward_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor,
                                 table: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """FlashAttention-2's backward from the saved log-sum-exp -> the gradients of q, k and v as
    :func:`~attnlab.native.marshal.gradient_results` packs them."""
    H, Dh, Hkv = q.shape[1], q.shape[3], k.shape[1]
    q, k, v, out, dout = _kernel_layout(q, k, v, out, dout)
    dq, dk, dv, joined = gradient_buffers(q, Hkv)
    tensors = (q, k, v, out, dout, lse, dq, dk, dv)
    held = strides(*tensors)  # kept alive during the call
    ptrs = [t.data_ptr() for t in (*tensors, *held, table)]
    check_status(load(FAMILY).attnlab_attend_docs_bf16_backward(*ptrs, table.shape[0], H, Hkv, Dh, scale, int(causal),
                                                          threads(table.shape[0] * H)))
    return gradient_results(dq, dk, dv, joined, Hkv)


@attend_documents_backward_op.register_fake
def _(q, k, v, out, dout, lse, table, causal, scale):
    return fake_gradients(q, k, v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, table, causal, scale, amx, with_lse = inputs
    if not (amx and with_lse):
        raise RuntimeError("the native attention backward needs the AMX forward with its log-sum-exp")
    ctx.save_for_backward(q, k, v, output[0], output[1], table)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, dout: Tensor, _dlse: Tensor):
    q, k, v, out, lse, table = ctx.saved_tensors
    dq, dk, dv = split_results(*attend_documents_backward_op(q, k, v, out, dout, lse, table, ctx.causal,
                                                                ctx.scale))
    return dq, dk, dv, None, None, None, None, None


attend_documents_op.register_autograd(_backward, setup_context=_setup_context)
