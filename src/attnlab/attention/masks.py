"""Boolean "keep" masks (True = the query may attend to the key), shaped ``(B|1, 1, T, S)``.

All masks follow the bottom-right alignment of :mod:`attnlab.attention.context`: query ``t`` sits at
key position ``t + S - T``. Masks broadcast over heads; combine them with :func:`combine_masks`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers.positional import query_key_positions  # noqa: F401  (re-exported: the alignment rule)
from .context import AttentionContext


def causal_mask(T: int, S: int, device=None) -> Tensor:
    """``(1, 1, T, S)``: key ``j`` visible to query ``t`` iff ``j <= t + S - T``."""
    q_pos, k_pos = query_key_positions(T, S, device)
    return (k_pos[None, :] <= q_pos[:, None])[None, None]


def padding_mask(key_padding_mask: Tensor, T: int) -> Tensor:
    """``(B, S)`` bool (True = real key) -> ``(B, 1, T, S)``."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = keep), got {key_padding_mask.dtype}")
    B, S = key_padding_mask.shape
    return key_padding_mask[:, None, None, :].expand(B, 1, T, S)


def document_mask(document_ids: Tensor, T: int, query_ids: Tensor | None = None) -> Tensor:
    """``(B, S)`` document ids over keys -> block-diagonal ``(B, 1, T, S)``.

    In self-attention the queries are the last ``T`` key positions, so their ids are ``document_ids[:, S-T:]``;
    in cross-attention the queries' own ids ``query_ids (B, T)`` are given.
    """
    S = document_ids.shape[-1]
    q_ids = document_ids[:, S - T :] if query_ids is None else query_ids  # (B, T)
    return (q_ids[:, :, None] == document_ids[:, None, :])[:, None]  # (B, 1, T, S)


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of the given masks (``None`` entries are ignored); ``None`` if all are ``None``."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else out & m
    return out


def context_mask(ctx: AttentionContext, T: int, S: int, device=None) -> Tensor | None:
    """The keep mask a dense kernel applies for ``ctx``: causal & padding & documents.

    Cross-attention (``ctx.cross``) is never causal; its document mask compares ``ctx.query_document_ids``
    with the memory's ``ctx.document_ids`` (without query ids, each query sees every memory document).
    """
    docs = None
    if ctx.document_ids is not None and (not ctx.cross or ctx.query_document_ids is not None):
        docs = document_mask(ctx.document_ids, T, ctx.query_document_ids if ctx.cross else None)
    return combine_masks(
        causal_mask(T, S, device) if ctx.causal else None,
        padding_mask(ctx.key_padding_mask, T) if ctx.key_padding_mask is not None else None,
        docs,
    )


def check_context_shapes(ctx: AttentionContext, B: int, T: int, S: int) -> None:
    """Clear errors for masks whose shapes do not match ``q (B, H, T, Dh)`` / ``k (B, Hkv, S, Dh)``."""
    for name in ("key_padding_mask", "document_ids"):
        m = getattr(ctx, name)
        if m is not None and (m.dim() != 2 or m.shape[0] != B or m.shape[1] != S):
            raise ValueError(
                f"{name} must have shape (batch, keys) = ({B}, {S}), got {tuple(m.shape)}"
            )
    q_ids = ctx.query_document_ids
    if q_ids is not None and (q_ids.dim() != 2 or q_ids.shape[0] != B or q_ids.shape[1] != T):
        raise ValueError(f"query_document_ids must have shape (batch, queries) = ({B}, {T}), got {tuple(q_ids.shape)}")
