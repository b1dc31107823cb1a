"""Padding-free variable-length batches (ByteTransformer, Zhai et al. 2023).

A batch of sequences of lengths ``len_b`` is packed into ONE row of ``N = sum_b len_b`` tokens. Every
token-wise layer (projections, MLP, norms) then runs on ``N`` rows instead of ``B * max_len``; the
attention kernel receives ``document_ids`` and keeps each token inside its own sequence (the softmax
kernel runs one attention per document, so no compute goes to pads or to cross-document scores).
Positions restart at 0 in every sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedBatch:
    """``ids``, ``document_ids``, ``positions``: ``(1, N)`` long; ``lengths (B,)``; ``cu_seqlens (B + 1,)``
    (exclusive prefix sum: sequence ``b`` is tokens ``cu_seqlens[b] : cu_seqlens[b + 1]``)."""

    ids: Tensor
    document_ids: Tensor
    positions: Tensor
    lengths: Tensor
    cu_seqlens: Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[1])


def _from_lengths(flat_ids: Tensor, lengths: Tensor) -> PackedBatch:
    B = lengths.numel()
    cu = torch.zeros(B + 1, dtype=torch.long, device=lengths.device)
    cu[1:] = lengths.cumsum(0)
    doc = torch.repeat_interleave(torch.arange(B, device=lengths.device), lengths)  # (N,)
    pos = torch.arange(flat_ids.numel(), device=lengths.device) - cu[doc]  # (N,) restarts per document
    return PackedBatch(flat_ids[None], doc[None], pos[None], lengths, cu)


def pack(seqs: list[list[int]], device=None) -> PackedBatch:
    """Pack token-id lists (empty lists allowed: they occupy no tokens) into one ``(1, N)`` row."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
    return _from_lengths(flat, lengths)


def pack_padded(ids: Tensor, key_padding_mask: Tensor) -> tuple[PackedBatch, Tensor]:
    """Pack a padded ``(B, S)`` batch; returns the batch and ``word_idx (N,)``, the flat index
    ``b * S + i`` of each packed token. Any boolean mask works (not only right padding): tokens are
    taken in row-major order, and positions count the kept tokens of each row from 0."""
    if ids.shape != key_padding_mask.shape or key_padding_mask.dtype != torch.bool:
        raise ValueError(f"need ids and a bool key_padding_mask of one shape, got {tuple(ids.shape)}, "
                         f"{tuple(key_padding_mask.shape)} {key_padding_mask.dtype}")
    word_idx = key_padding_mask.reshape(-1).nonzero().squeeze(1)  # (N,) row-major
    packed = _from_lengths(ids.reshape(-1)[word_idx], key_padding_mask.sum(1))
    return packed, word_idx


def unpack(hidden: Tensor, word_idx: Tensor, batch: int, seq_len: int) -> Tensor:
    """Packed ``(1, N, D)`` or ``(N, D)`` -> padded ``(B, S, D)`` with exact zeros at pad positions."""
    flat = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    out = flat.new_zeros(batch * seq_len, flat.shape[-1])
    out[word_idx] = flat
    return out.view(batch, seq_len, -1)  # (B, S, D)


def segment_mean(hidden: Tensor, packed: PackedBatch) -> Tensor:
    """Mean over each sequence's tokens: ``(1, N, D)`` -> ``(B, D)``; an empty sequence gives zeros."""
    flat = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    sums = flat.new_zeros(packed.lengths.numel(), flat.shape[-1]).index_add_(0, packed.document_ids[0], flat)
    return sums / packed.lengths.clamp(min=1).to(sums.dtype)[:, None]
