"""Sequence to sequence with teacher forcing (Sutskever et al. 2014; Vaswani et al. 2017).

The decoder reads the target shifted right (``tgt_in``: start token, then the target) and is trained to
predict ``tgt_out`` (the target, then the end token); unscored positions hold ``IGNORE_INDEX`` (-100).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


def seq2seq_step(model: nn.Module, batch: dict[str, Tensor],
                 label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the decoder's next-token logits, in nats per scored target token.

    With ``label_smoothing`` ``eps`` the target distribution is ``(1 - eps)`` on the right token plus ``eps / V``
    on every token (Szegedy et al. 2016; the Transformer used 0.1); the ``loss`` metric stays the plain
    cross-entropy, so runs with and without smoothing compare.

    Args:
        model: an encoder-decoder mapping ``(src (B, S), tgt_in (B, T), src_key_padding_mask)`` to logits
            ``(B, T, V)`` (:class:`~attnlab.models.EncoderDecoder`).
        batch: ``{"src": (B, S) int64, "tgt_in": (B, T) int64, "tgt_out": (B, T) int64,
            ["src_key_padding_mask": (B, S) bool, True = real token]}``.

    Returns:
        ``loss`` (scalar, differentiable) and detached metrics ``{"loss", "bits_per_token", "token_accuracy",
        "exact_match", "tokens"}`` (exact match: every scored token of a sequence right under teacher forcing).

    Raises:
        ValueError: ``tgt_in`` and ``tgt_out`` differ in shape, or the logits are not ``(B, T, V)``.
    """
    src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
    if tgt_in.shape != tgt_out.shape or tgt_in.dim() != 2 or src.dim() != 2:
        raise ValueError(f"seq2seq needs src (B, S) and tgt_in, tgt_out of one shape (B, T), got {tuple(src.shape)}, "
                         f"{tuple(tgt_in.shape)} and {tuple(tgt_out.shape)}")
    logits = model(src, tgt_in, src_key_padding_mask=batch.get("src_key_padding_mask"))
    if logits.shape[:2] != tgt_out.shape or logits.dim() != 3:
        raise ValueError(f"seq2seq needs logits (B, T, V) with (B, T) = {tuple(tgt_out.shape)}, got {tuple(logits.shape)}")
    loss, d = smoothed_cross_entropy(logits, tgt_out, label_smoothing)
    scored = tgt_out != IGNORE_INDEX
    right = (logits.detach().argmax(-1) == tgt_out) | ~scored
    return loss, {"loss": d, "bits_per_token": d / math.log(2), "token_accuracy": right[scored].float().mean(),
                  "exact_match": right.all(dim=1).float().mean(), "tokens": scored.sum()}


def smoothed_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float) -> tuple[Tensor, Tensor]:
    """``logits (..., V)``, ``targets (...)`` (``IGNORE_INDEX`` unscored) -> (the loss to train, smoothed when
    ``label_smoothing > 0``; the detached plain cross-entropy to report).

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    flat, target = logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    loss = F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    if label_smoothing == 0.0:
        return loss, loss.detach()
    with torch.no_grad():
        return loss, F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def character_error_rate(predicted: list[list[int]], reference: list[list[int]]) -> float:
    """Levenshtein distance between each predicted and reference sequence, summed, over the summed reference
    lengths (the character error rate when tokens are characters or bytes; the token error rate otherwise).

    Raises:
        ValueError: the lists differ in length.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} references")
    edits = sum(_levenshtein(p, r) for p, r in zip(predicted, reference))
    return edits / max(sum(len(r) for r in reference), 1)


def _levenshtein(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@torch.no_grad()
def exact_match(predicted: Tensor, target: Tensor, eos_id: int | None = None) -> float:
    """Share of rows of ``predicted (B, L)`` equal to ``target (B, L')`` up to and including ``eos_id``
    (everything after a sequence's first ``eos_id`` is ignored; without ``eos_id`` the whole rows compare)."""
    def cut(row: list[int]) -> list[int]:
        return row[: row.index(eos_id) + 1] if eos_id is not None and eos_id in row else row
    rows = [cut(p) == cut(t) for p, t in zip(predicted.tolist(), target.tolist())]
    return sum(rows) / max(len(rows), 1)
