"""One entry to the native per-document attention kernels: picks the kernel for the dtype and for whether a
gradient is wanted, or says (``None``) that PyTorch should run the attention."""

from __future__ import annotations

import torch
from torch import Tensor

from .documents import documents_attention_bf16, trainable_documents_attention_bf16
from .documents_fp32 import documents_attention_fp32
from .marshal import Spans, grad_wanted, score_scale, whole_rows
from .window_fp32 import windows_attention_fp32


def documents_attention(q: Tensor, k: Tensor, v: Tensor, spans: Spans | None, *, causal: bool,
                        scale: float | None) -> Tensor | None:
    """Exact softmax attention inside each document on the native kernels, or ``None``: use PyTorch.

    q ``(B, H, T, Dh)``, k, v ``(B, Hkv, T, Dh)`` (GQA heads grouped, not expanded) -> ``(B, H, T, Dh)`` (a
    transposed view of ``(B, T, H, Dh)`` memory). ``spans``: per batch row, the ``[start, end)`` runs of its
    documents, tiling ``[0, T)`` (:func:`attnlab.attention.engines.documents.document_spans`); ``None``: each
    row is one document. ``causal`` masks later tokens within each document; ``scale`` defaults to
    ``Dh ** -0.5`` and may have any sign.

    float32 runs the fp32 kernel (differentiable); bfloat16 runs the trainable bf16 kernel (AMX) when a
    gradient is wanted and the inference kernel otherwise. Where the trainable bf16 kernel cannot run (no AMX,
    say), bidirectional bf16 training over whole rows runs on the window kernel (fp32 arithmetic, one window of
    all ``T`` tokens; ``T <= 1,024``). ``None`` for other dtypes and whenever the chosen kernel cannot run these
    inputs (shapes, layout, document length, CPU, switched off), and for no tokens.

    Raises:
        ValueError: ``spans`` does not tile each row.
    """
    if q.dim() != 4 or q.shape[2] == 0:  # nothing for a kernel to do: PyTorch returns the (empty) result
        return None
    spans = whole_rows(q.shape[0], q.shape[2]) if spans is None else spans
    if q.dtype == torch.float32:
        return documents_attention_fp32(q, k, v, spans, causal=causal, scale=scale)
    if q.dtype != torch.bfloat16:
        return None
    if grad_wanted(q, k, v):
        out = trainable_documents_attention_bf16(q, k, v, spans, causal=causal, scale=scale)
        if out is None and not causal and all(row == [(0, q.shape[2])] for row in spans):
            # e.g. no AMX: bidirectional attention over whole rows (a ViT's) trains on the window kernel's fp32
            # arithmetic, one window of every token (1.7x PyTorch's bf16 flash kernel forward + backward at
            # ViT-B/16's 197 tokens; benchmarks/window_attention.py)
            out = windows_attention_fp32(q, k, v, torch.arange(q.shape[2], device=q.device), q.shape[2], None,
                                         score_scale(q, scale))
        return out
    return documents_attention_bf16(q, k, v, spans, causal=causal, scale=scale)
