"""Pooling hidden states into one vector per sequence, shared by every family's classification heads."""

from __future__ import annotations

from torch import Tensor


def pool(hidden: Tensor, key_padding_mask: Tensor | None, how: str = "mean") -> Tensor:
    """``(B, T, D)`` -> ``(B, D)``: mean over valid tokens, or the first ([CLS]) token."""
    if how == "cls":
        return hidden[:, 0]
    if how != "mean":
        raise ValueError(f"unknown pooling {how!r}; valid: ['cls', 'mean']")
    if key_padding_mask is None:
        return hidden.mean(dim=1)
    m = key_padding_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
