"""Tensor-level entry to the native per-document fp32 attention kernel (``csrc/attention_fp32.c``):
exact softmax attention inside each document, forward and backward, on AVX-512 FMA.

PyTorch's CPU flash kernel is built for long sequences; this kernel does each (document, head) whole in
cache and is 1.1-2.1x faster forward, 1.1-1.9x forward + backward from 64 to 1,024 tokens at GPT sizes
(``benchmarks/native_attention_fp32.py``). Same semantics as
:func:`attnlab.attention.engines.documents.per_document_attention`, fp32 throughout (results agree with the
float64 formula to fp32 rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import load
from .marshal import (Spans, check_status, doc_table, fake_gradients, grad_wanted, gradient_buffers,
                      gradient_results, score_scale, shapes_fit, split_results, strides, threads, token_major_like)

FAMILY = "attention_fp32"

# Longest document the fp32 kernel takes: it keeps a document's probabilities whole (len^2 fp32 per
# thread, twice in the backward: 8 MB at 1,024 tokens, where it is still 1.3x SDPA forward + backward);
# longer ones go to PyTorch's flash kernel, which tiles the keys.
MAX_DOC_LEN_FP32 = 1024


def usable_fp32(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """The inputs fit the kernel: CPU float32 ``(B, H, T, Dh)`` with ``Dh % 16 == 0`` and ``Dh <= 256``,
    ``H`` a multiple of ``Hkv``, equal batch sizes and lengths, unit stride along ``Dh``."""
    if q.device.type != "cpu" or not all(t.dtype == torch.float32 for t in (q, k, v)):
        return False
    return shapes_fit(q, k, v) and all(t.stride(3) == 1 for t in (q, k, v))


def documents_attention_fp32(q: Tensor, k: Tensor, v: Tensor, spans: Spans, *,
                             causal: bool, scale: float | None) -> Tensor | None:
    """Softmax attention inside each ``[start, end)`` run of ``spans`` (per batch row; the runs tile the
    row, as :func:`attnlab.attention.engines.documents.document_spans` makes them) on the native fp32 kernel,
    differentiable (FlashAttention-2's backward from the saved log-sum-exp; a backward with ``create_graph=True``
    recomputes through :func:`documents_reference`, so gradient penalties work).

    q ``(B, H, T, Dh)``, k, v ``(B, Hkv, T, Dh)`` (GQA heads grouped, not expanded) -> ``(B, H, T, Dh)`` (a
    transposed view of ``(B, T, H, Dh)`` memory). ``None`` when the kernel cannot run these inputs
    (:func:`usable_fp32`), a document is longer than :data:`MAX_DOC_LEN_FP32`, or the native library is not
    available; the caller then uses PyTorch. ``scale`` may have any sign (default ``Dh ** -0.5``).

    Raises:
        ValueError: ``spans`` does not tile each row (one list per batch row of consecutive runs over
            ``[0, T)``).
    """
    if not usable_fp32(q, k, v) or not any(spans) or load(FAMILY) is None:
        return None
    table = doc_table(spans, q.shape[0], q.shape[2])
    if int(table[:, 2].max()) > MAX_DOC_LEN_FP32:
        return None
    return attend_documents_fp32_op(q, k, v, table, bool(causal), score_scale(q, scale), grad_wanted(q, k, v))[0]


def _contiguous_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(t if t.stride(3) == 1 else t.contiguous() for t in tensors)


# torch.library operators, so torch.compile treats the kernels as opaque calls (see documents.py).
@torch.library.custom_op("attnlab::attend_documents_fp32", mutates_args=())
def attend_documents_fp32_op(q: Tensor, k: Tensor, v: Tensor, table: Tensor, causal: bool, scale: float,
                             with_lse: bool) -> tuple[Tensor, Tensor]:
    """``(out (B, H, T, Dh) view of (B, T, H, Dh) memory, lse (B, H, T) base-2 log-sum-exp or (0,))``."""
    B, H, T, Dh = q.shape
    q, k, v = _contiguous_rows(q, k, v)
    out = token_major_like(q)
    lse = torch.empty((B, H, T) if with_lse else (0,), dtype=torch.float32, device=q.device)
    held = strides(q, k, v, out, lse) if with_lse else strides(q, k, v, out)  # alive during the call
    lse_args = (lse.data_ptr(), held[4].data_ptr()) if with_lse else (None, None)
    ptrs = [t.data_ptr() for t in (q, k, v, out, *held[:4], table)]
    check_status(load(FAMILY).attnlab_attend_docs_f32(*ptrs, table.shape[0], H, k.shape[1], Dh, scale, int(causal),
                                                      *lse_args, threads(table.shape[0] * H)))
    return out, lse


@attend_documents_fp32_op.register_fake
def _(q, k, v, table, causal, scale, with_lse):
    B, H, T, _ = q.shape
    return token_major_like(q), q.new_empty((B, H, T) if with_lse else (0,))


@torch.library.custom_op("attnlab::attend_documents_fp32_backward", mutates_args=())
def attend_documents_fp32_backward_op(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, lse: Tensor, table: Tensor,
                                      causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of q, k and v as :func:`~attnlab.native.marshal.gradient_results` packs them, from the
    forward's log-sum-exp (the output itself is not needed: the kernel forms FlashAttention's ``dO . O`` as
    ``sum_j P dP``)."""
    H, Dh, Hkv = q.shape[1], q.shape[3], k.shape[1]
    q, k, v, dout = _contiguous_rows(q, k, v, dout)
    dq, dk, dv, joined = gradient_buffers(q, Hkv)
    tensors = (q, k, v, dout, lse, dq, dk, dv)
    held = strides(*tensors)  # kept alive during the call
    ptrs = [t.data_ptr() for t in (*tensors, *held, table)]
    check_status(load(FAMILY).attnlab_attend_docs_f32_backward(*ptrs, table.shape[0], H, Hkv, Dh, scale,
                                                               int(causal), threads(table.shape[0] * H)))
    return gradient_results(dq, dk, dv, joined, Hkv)


@attend_documents_fp32_backward_op.register_fake
def _(q, k, v, dout, lse, table, causal, scale):
    return fake_gradients(q, k, v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, table, causal, scale, with_lse = inputs
    if not with_lse:
        raise RuntimeError("the native fp32 attention backward needs the forward's log-sum-exp (with_lse=True)")
    ctx.save_for_backward(q, k, v, output[1], table)
    ctx.causal, ctx.scale = causal, scale


def documents_reference(q: Tensor, k: Tensor, v: Tensor, table: Tensor, causal: bool, scale: float) -> Tensor:
    """The kernel's result by PyTorch operations, differentiable to any order (PyTorch's own fused attention has
    no double backward on CPU): softmax attention inside each (batch row, first token, length) of ``table``, which
    tiles every row in order. q ``(B, H, T, Dh)``, k, v ``(B, Hkv, T, Dh)`` -> ``(B, H, T, Dh)``."""
    group = q.shape[1] // k.shape[1]
    rows: list[list[Tensor]] = [[] for _ in range(q.shape[0])]
    for b, start, length in table.tolist():
        qd, kd, vd = (t[b, :, start:start + length] for t in (q, k, v))
        scores = scale * qd @ kd.repeat_interleave(group, 0).transpose(-1, -2)  # (H, L, L)
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        rows[b].append(scores.softmax(-1) @ vd.repeat_interleave(group, 0))
    return torch.stack([torch.cat(r, dim=1) for r in rows])


def _backward(ctx, dout: Tensor, _dlse: Tensor):
    q, k, v, lse, table = ctx.saved_tensors
    if torch.is_grad_enabled():  # backward(create_graph=True): a gradient that is itself differentiable
        wanted = [t for t, w in zip((q, k, v), ctx.needs_input_grad[:3]) if w]
        grads = iter(torch.autograd.grad(documents_reference(q, k, v, table, ctx.causal, ctx.scale), wanted, dout,
                                         create_graph=True))
        dq, dk, dv = (next(grads) if w else None for w in ctx.needs_input_grad[:3])
        return dq, dk, dv, None, None, None, None
    dq, dk, dv = split_results(*attend_documents_fp32_backward_op(q, k, v, dout, lse, table, ctx.causal,
                                                                     ctx.scale))
    return dq, dk, dv, None, None, None, None


attend_documents_fp32_op.register_autograd(_backward, setup_context=_setup_context)
