"""Per-position regression: ``(model, batch) -> (loss, metrics)``, mean squared error over scored positions.

In-context linear regression (Garg et al. 2022, "What can Transformers learn in-context? A case study of
simple function classes") trains through this step with an
:class:`~attnlab.models.heads.InContextRegressor`: only the ``x`` positions of the interleaved
``x_1, y_1, x_2, ...`` sequence are scored (``loss_mask``).
"""

from __future__ import annotations

from torch import Tensor, nn


def regression_outputs(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Predictions ``(B, T)`` of ``model(inputs)``; a trailing size-1 dimension is dropped."""
    pred = model(batch["inputs"])
    return pred.squeeze(-1) if pred.dim() == 3 and pred.shape[-1] == 1 else pred


def regression_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean squared error of per-position predictions over the positions where ``loss_mask`` is True.

    Args:
        model: maps ``inputs (B, T, D)`` float to predictions ``(B, T)`` (or ``(B, T, 1)``).
        batch: ``{"inputs": (B, T, D), "targets": (B, T) float, ["loss_mask": (B, T) bool]}``; without
            ``loss_mask`` every position is scored.

    Returns:
        ``loss`` = ``sum(mask * (pred - target)^2) / sum(mask)`` (scalar, differentiable) and detached
        metrics ``{"loss", "mse", "positions"}``.

    Raises:
        ValueError: predictions and targets differ in shape, or no position is scored.
    """
    targets = batch["targets"]
    pred = regression_outputs(model, batch)
    if pred.shape != targets.shape:
        raise ValueError(f"regression needs predictions of the targets' shape {tuple(targets.shape)}, got "
                         f"{tuple(pred.shape)}; wrap the body in attnlab.models.heads.InContextRegressor")
    mask = batch.get("loss_mask")
    mask = targets.new_ones(targets.shape) if mask is None else mask.to(targets.dtype)  # (B, T) 1 = scored
    count = mask.sum()
    if count == 0:
        raise ValueError("regression batch has no scored position (loss_mask is all False)")
    loss = ((pred.float() - targets.float()).pow(2) * mask).sum() / count  # fp32 under bf16 autocast
    d = loss.detach()
    return loss, {"loss": d, "mse": d, "positions": count.detach()}
