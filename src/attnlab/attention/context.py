"""The context every attention kernel receives next to ``q, k, v``.

Alignment convention (used by every kernel, the masks and the KV cache): queries and keys are
**bottom-right aligned**. With ``T`` queries and ``S >= T`` keys, query ``t`` sits at key position
``t + (S - T)``; in a full forward ``S == T`` and the two coincide. During cached decoding the keys
are everything cached so far plus the new tokens, so the same rule places the new queries at the end.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class AttentionContext:
    """Everything about a call that is not ``q, k, v``.

    Attributes:
        causal: query ``i`` may only see keys ``j <= i`` (bottom-right aligned).
        key_padding_mask: ``(B, S)`` bool, True = a real key, False = padding.
        document_ids: ``(B, S)`` integer ids of packed sequences over key positions; a query sees only
            keys of its own document (its id is the key id at its own position, see module doc).
        attn_bias: additive float bias broadcastable to ``(B, H, T, S)`` (ALiBi, relative bias).
        grid: ``(rows, cols)`` when the ``T`` tokens are a row-major 2-D grid (images, axial models).
        positions: ``(B, T)`` or ``(T,)`` absolute positions of the queries (kernels that need them).
        generator: explicit ``torch.Generator`` for stochastic kernels (deterministic when given).
        cache: the per-layer decoding cache in use, if any (kernels with their own cache read it).
        cross: cross-attention: the keys and values come from another sequence (the *memory*, ``S`` tokens),
            not from the queries' own sequence, so query and key positions are not aligned and ``causal``
            must be False. ``key_padding_mask (B, S)`` and ``document_ids (B, S)`` then describe the memory.
        query_document_ids: ``(B, T)`` document ids of the queries in packed cross-attention (a query sees
            only the memory keys whose ``document_ids`` equal its own); needs ``document_ids`` too.
        embeddings: ``(B, T, dim)`` output of the model's embedding layer (kernels whose queries and keys
            come from the static embeddings read it; the model body fills it in).
        qk_stream_rows: stream key -> batch row of that fixed query/key stream (filled in by a stack hook
            that appends stream rows; see :mod:`attnlab.attention.stack`).
        num_main_rows: how many leading batch rows are the real input when a stack hook appended rows;
            ``None`` = all of them.
    """

    causal: bool = False
    key_padding_mask: Tensor | None = None
    document_ids: Tensor | None = None
    attn_bias: Tensor | None = None
    grid: tuple[int, int] | None = None
    positions: Tensor | None = None
    generator: torch.Generator | None = None
    cache: object | None = None
    cross: bool = False
    query_document_ids: Tensor | None = None
    embeddings: Tensor | None = None
    qk_stream_rows: dict[Hashable, int] = field(default_factory=dict)
    num_main_rows: int | None = None

    @property
    def has_masks(self) -> bool:
        """True when anything besides plain causality restricts which keys a query sees."""
        return self.key_padding_mask is not None or self.document_ids is not None

    def __post_init__(self) -> None:
        if self.cross and self.causal:
            raise ValueError("cross-attention (cross=True) cannot be causal: the memory's positions are not the "
                             "queries'; build the cross-attention context with causal=False")
        if self.query_document_ids is not None and (not self.cross or self.document_ids is None):
            raise ValueError("query_document_ids is for packed cross-attention: pass cross=True and the memory's "
                             "document_ids as well")
