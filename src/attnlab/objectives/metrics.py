"""Metrics of the suite's datasets: accuracy on scored positions, squared error (overall and per number of
in-context examples), bits per character. All take model outputs and the split's targets/mask.

Shapes: ``lm`` datasets give logits ``(B, T, V)`` with targets ``(B, T)`` and ``loss_mask (B, T)``;
``classify`` datasets give logits ``(B, C)`` with labels ``(B,)``; ``regression`` datasets give predictions
``(B, T)`` or ``(B, T, 1)`` with targets ``(B, T)`` and ``loss_mask``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.base import IGNORE_INDEX, SuiteDataset, SuiteSplit


def _scored(targets: Tensor, mask: Tensor | None) -> Tensor:
    """Bool tensor of scored positions: ``mask`` if given, else targets != IGNORE_INDEX."""
    if mask is None:
        if targets.is_floating_point():
            return torch.ones_like(targets, dtype=torch.bool)
        return targets != IGNORE_INDEX
    if mask.shape != targets.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from targets shape {tuple(targets.shape)}")
    return mask.bool()


def accuracy(outputs: Tensor, targets: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of scored positions where ``argmax(outputs)`` equals the target.

    ``outputs`` are logits with one more (class) dimension than ``targets``, or predicted ids of the
    same shape. Raises ``ValueError`` on mismatched shapes or when nothing is scored.
    """
    preds = outputs.argmax(-1) if outputs.dim() == targets.dim() + 1 else outputs
    if preds.shape != targets.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} do not match targets {tuple(targets.shape)}")
    m = _scored(targets, mask)
    if not m.any():
        raise ValueError("no scored positions (mask is all False)")
    return (preds[m] == targets[m]).float().mean().item()


def _squeeze_pred(pred: Tensor, targets: Tensor) -> Tensor:
    if pred.dim() == targets.dim() + 1 and pred.shape[-1] == 1:
        pred = pred.squeeze(-1)  # (B, T, 1) -> (B, T)
    if pred.shape != targets.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} do not match targets {tuple(targets.shape)}")
    return pred


def mse(pred: Tensor, targets: Tensor, mask: Tensor | None = None) -> float:
    """Mean squared error over scored positions."""
    pred = _squeeze_pred(pred, targets)
    m = _scored(targets, mask)
    return (pred[m].double() - targets[m].double()).pow(2).mean().item()


def squared_error_by_position(pred: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """``(K,)`` mean over rows of the squared error at the ``k``-th scored position of each row.

    For in-context regression (interleaved format) entry ``k`` is the error after ``k`` in-context
    examples — the curve of Garg et al. 2022 / Akyürek et al. 2022. Raises ``ValueError`` if rows
    have different numbers of scored positions.
    """
    pred = _squeeze_pred(pred, targets)
    counts = mask.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("rows have different numbers of scored positions; cannot align them by position")
    b, k = pred.shape[0], int(counts[0])
    err = (pred[mask].double() - targets[mask].double()).pow(2).view(b, k)  # (B, K), row-major order kept
    return err.mean(0)


def bits_per_token(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> float:
    """Cross-entropy in bits per scored token (bits/char for a character LM)."""
    m = _scored(targets, mask)
    nats = F.cross_entropy(logits[m].float(), targets[m], reduction="mean")
    return nats.item() / math.log(2)


def nats_to_bits(loss: float) -> float:
    """A mean cross-entropy in nats per token -> bits per token (divide by ln 2)."""
    return loss / math.log(2)


METRICS: dict[str, Callable[[Tensor, Tensor, Tensor | None], float]] = {
    "accuracy": accuracy,
    "mse": mse,
    "bits_per_char": bits_per_token,
}
HIGHER_IS_BETTER = {"accuracy": True, "mse": False, "bits_per_char": False}


def score(dataset: SuiteDataset, outputs: Tensor, split: str | SuiteSplit = "test") -> float:
    """``dataset.metric`` of ``outputs`` (model outputs for every row of ``split``, same order).

    Raises:
        ValueError: unknown metric or split, or shapes that do not match the split.
    """
    if dataset.metric not in METRICS:
        raise ValueError(f"unknown metric {dataset.metric!r}; valid: {sorted(METRICS)}")
    if isinstance(split, str):
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid: ['train', 'test']")
        split = getattr(dataset, split)
    targets = split.targets.to(outputs.device)
    mask = None if split.loss_mask is None else split.loss_mask.to(outputs.device)
    return METRICS[dataset.metric](outputs, targets, mask)
