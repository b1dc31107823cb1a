"""Per-document attention for packed sequences (ByteTransformer's grouped path).

With ``document_ids`` a dense kernel would score every token against every other token of the packed
row and mask most scores away (``N^2`` work for ``sum_b len_b^2`` useful). When each document occupies
one contiguous run of the row, attention is computed run by run instead: one fused SDPA call per
document on ``q[:, :, start:end]`` (one per group of adjacent equal-length documents), exactly the
block-diagonal result without the masked blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def document_spans(document_ids: Tensor) -> list[list[tuple[int, int]]] | None:
    """``(B, S)`` ids -> per row the ``[start, end)`` runs of equal ids, or ``None`` when some id occurs
    in two separate runs of a row (then the runs are not the documents and the dense mask is needed)."""
    spans = []
    for row in document_ids:
        ids, counts = torch.unique_consecutive(row, return_counts=True)
        if torch.unique(ids).numel() != ids.numel():
            return None
        ends = counts.cumsum(0).tolist()
        spans.append(list(zip([0] + ends[:-1], ends)))
    return spans


def per_document_attention(q: Tensor, k: Tensor, v: Tensor, spans: list[list[tuple[int, int]]], *,
                           causal: bool, scale: float | None, dropout_p: float = 0.0) -> Tensor:
    """Softmax attention inside each run: q, k, v ``(B, H, T, Dh)`` (``T == S``, heads already expanded)
    -> ``(B, H, T, Dh)``. ``causal`` applies within each document.

    Adjacent documents of equal length are one batched SDPA call (``(n, H, L, Dh)`` views of the packed
    row, no copy), so a row packed in length order costs one call per distinct length. The result is
    written in ``(B, T, H, Dh)`` memory and returned as a transposed view, which makes the shell's head
    merge (``transpose(1, 2).reshape``) free.
    """
    B, H, T, Dh = q.shape
    out = q.new_empty(B, T, H, Dh)
    for b, row in enumerate(spans):
        for start, n, length in _equal_length_runs(row):
            end = start + n * length

            def docs(x: Tensor) -> Tensor:
                return x[b, :, start:end].unflatten(1, (n, length)).transpose(0, 1)  # (n, H, L, Dh)

            o = F.scaled_dot_product_attention(docs(q), docs(k), docs(v), dropout_p=dropout_p, is_causal=causal,
                                               scale=scale)  # (n, H, L, Dh)
            out[b, start:end] = o.transpose(1, 2).reshape(n * length, H, Dh)  # (n*L, H, Dh)
    return out.transpose(1, 2)  # (B, H, T, Dh) view


def _equal_length_runs(row: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``[(start, end), ...]`` -> ``[(start, count, length), ...]`` merging adjacent equal lengths."""
    runs: list[list[int]] = []
    for s, e in row:
        if runs and runs[-1][2] == e - s and runs[-1][0] + runs[-1][1] * runs[-1][2] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1, e - s])
    return [tuple(r) for r in runs]


def per_document_pays(spans: list[list[tuple[int, int]]], T: int, width: int) -> bool:
    """True when the per-document calls beat one dense masked call: ``sum len^2 * width`` useful
    multiply-adds plus ~0.25M per call (launch overhead) against ``T^2 * width`` for the dense mask."""
    calls = sum(len(_equal_length_runs(row)) for row in spans)
    per_doc = (sum((e - s) ** 2 * width for row in spans for s, e in row) + 250_000 * calls) / len(spans)
    return per_doc < T * T * width
