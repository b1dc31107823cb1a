"""Next-token language modelling (Radford et al. 2018/2019): ``(model, batch) -> (loss, metrics)``.

The loss is the mean cross-entropy in nats per token; ``bits_per_token = loss / ln 2`` is bits per
character for character-level data and bits per byte for byte-level data.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

LN2 = math.log(2.0)


def lm_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token language modelling: cross-entropy of logits against the following token, in nats/token.

    Args:
        model: maps ``idx (B, T)`` to logits ``(B, T, V)`` (a causal model such as :class:`~attnlab.models.GPT`).
        batch: ``{"idx": (B, T) int64, "targets": (B, T) int64}``; ``targets[:, t]`` is the token after ``idx[:, t]``.

    Returns:
        ``loss`` (scalar, nats/token, differentiable) and detached metrics ``{"loss", "bits_per_token", "tokens"}``.

    Raises:
        ValueError: ``idx`` and ``targets`` differ in shape, or the logits are not ``(B, T, V)``.
    """
    idx, targets = batch["idx"], batch["targets"]
    if idx.shape != targets.shape or idx.dim() != 2:
        raise ValueError(f"idx {tuple(idx.shape)} and targets {tuple(targets.shape)} must both be (batch, tokens)")
    logits = model(idx)
    if logits.dim() != 3 or logits.shape[:2] != idx.shape:
        raise ValueError(f"lm objective needs logits of shape (B, T, V) = {(*idx.shape, 'V')}, "
                         f"got {tuple(logits.shape)}")
    # cross-entropy in fp32 even under bf16 autocast: (B*T, V) logits, (B*T,) targets
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    d = loss.detach()
    return loss, {"loss": d, "bits_per_token": d / LN2, "tokens": targets.new_tensor(targets.numel())}
