"""Forecasting: the training step and the one evaluation every forecaster (model or baseline) is scored by.

The step trains on the mean squared error over every horizon step and target variate, on the z-scored scale.

:func:`evaluate_forecast` walks every window of a split exactly once, in order, in batches of any size, and divides
summed errors by the number of values: MSE and MAE on the normalised scale (the convention of the literature) and MAE
in the original units; no batch is dropped and no batch mean is averaged, so the numbers do not depend on the batch
size (the ``drop_last`` evaluation bug of several reference implementations cannot happen here).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def uses_future_exog(model: nn.Module) -> bool:
    """Whether ``model`` (or the module a DDP wrapper holds) reads exogenous values over the horizon."""
    return bool(getattr(getattr(model, "module", model), "uses_future_exog", False))


def forecast_of(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``model(inputs)``, or ``model(inputs, future_exog=...)`` for a model that reads the horizon's exogenous
    values (only such a model is given them: for any other they would be a leak).

    Raises:
        ValueError: such a model and a batch without ``future_exog``.
    """
    if not uses_future_exog(model):
        return model(batch["inputs"])
    if "future_exog" not in batch:
        raise ValueError("the model reads exogenous values over the horizon (model.future_exog) but the batch has "
                         "none; build its batches with future_exog=True")
    return model(batch["inputs"], future_exog=batch["future_exog"])


def forecast_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean squared error of ``model(inputs)`` against ``targets``.

    Args:
        model: maps ``inputs (B, L, C)`` to a forecast ``(B, T, C_t)`` (and ``future_exog (B, T, C_x)`` when it
            declares ``uses_future_exog``: :func:`forecast_of`).
        batch: ``{"inputs": (B, L, C), "targets": (B, T, C_t), ["future_exog"], ...}``.

    Returns:
        ``loss`` (scalar, differentiable) and detached metrics ``{"loss", "mse", "mae"}``.

    Raises:
        ValueError: forecast and targets differ in shape.
    """
    pred = forecast_of(model, batch)
    targets = batch["targets"]
    if pred.shape != targets.shape:
        raise ValueError(f"forecast of shape {tuple(pred.shape)} but targets {tuple(targets.shape)}; the model's "
                         "horizon or variates do not match the data")
    err = pred.float() - targets.float()
    loss = err.pow(2).mean()
    return loss, {"loss": loss.detach(), "mse": loss.detach(), "mae": err.abs().mean().detach()}


def patch_mask_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked-patch reconstruction (PatchTST's self-supervised pretraining, Nie et al. 2023): the mean over masked
    patches of the per-patch mean squared error, ``Σ m mean_P (ŷ - x)² / Σ m``.

    Args:
        model: ``inputs (B, L, C)`` -> ``(reconstruction, patches, mask)`` (``(B, C, N, P)``, ``(B, C, N, P)``,
            ``(B, C, N)`` bool, True = masked), e.g. :class:`~attnlab.models.series.pretrain.PatchTSTPretrain`;
            masks come from the global torch RNG (seeded, and restored on resume, by the trainer).
        batch: ``{"inputs": (B, L, C), ...}``.

    Raises:
        ValueError: no masked patch.
    """
    pred, target, mask = model(batch["inputs"])
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)  # (B, C, N)
    m = mask.to(per_patch.dtype)
    if m.sum() == 0:
        raise ValueError("no patch is masked; raise model.mask_ratio")
    loss = (per_patch * m).sum() / m.sum()
    return loss, {"loss": loss.detach(), "masked_mse": loss.detach()}


def irregular_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Classification of irregularly sampled series: cross-entropy of ``model(times, values, observed, padding)``
    logits ``(B, K)`` against ``targets (B,)``.

    Raises:
        ValueError: logits that are not ``(B, K)`` for ``B`` targets.
    """
    logits = model(batch["times"], batch["values"], batch["observed"], batch["padding"])
    y = batch["targets"]
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"expected logits (batch, classes) for {y.shape[0]} targets, got {tuple(logits.shape)}")
    loss = nn.functional.cross_entropy(logits.float(), y)
    acc = (logits.argmax(-1) == y).float().mean()
    return loss, {"loss": loss.detach(), "accuracy": acc.detach(), "examples": torch.tensor(float(len(y)))}


@torch.no_grad()
def evaluate_forecast(predict: Callable[[dict[str, Tensor]], Tensor], split, batch_size: int = 256,
                      target_std=None, device: torch.device | str | None = None,
                      future_exog: bool = False) -> dict[str, float]:
    """Exact metrics of ``predict`` over every window of ``split`` (a :class:`~attnlab.data.series.WindowSplit`).

    Args:
        predict: batch dict -> forecast ``(B, T, C_t)`` on the normalised scale.
        split: the windows; each is predicted once, in order.
        batch_size: windows per call (any value gives the same metrics up to float rounding).
        target_std: ``(C_t,)`` training std of the targets, for ``mae_original`` (omitted when ``None``).
        device: where batches are moved (default: where they are).
        future_exog: give ``predict`` the exogenous values over the horizon (forecasters that declare it).

    Returns:
        ``{"mse", "mae", ["mae_original"], "windows", "values"}``.

    Raises:
        ValueError: ``batch_size < 1``, an empty split, or a forecast of the wrong shape.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    if n < 1:
        raise ValueError("the split holds no window")
    std = None if target_std is None else torch.as_tensor(target_std, dtype=torch.float64)
    sse = sae = sae_orig = 0.0
    count = 0
    for start in range(0, n, batch_size):
        batch = split.batch(torch.arange(start, min(start + batch_size, n)), future_exog=future_exog)
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        pred = predict(batch)
        y = batch["targets"]
        if pred.shape != y.shape:
            raise ValueError(f"forecast of shape {tuple(pred.shape)} but targets {tuple(y.shape)}")
        err = (pred.double() - y.double()).cpu()
        sse += float(err.pow(2).sum())
        sae += float(err.abs().sum())
        if std is not None:
            sae_orig += float((err.abs() * std).sum())
        count += err.numel()
    out = {"mse": sse / count, "mae": sae / count}
    if std is not None:
        out["mae_original"] = sae_orig / count
    return {**out, "windows": n, "values": count}


def model_predictor(model: nn.Module) -> Callable[[dict[str, Tensor]], Tensor]:
    """``batch -> model(batch["inputs"])`` (:func:`forecast_of`) in eval mode (dropout off, batch-independent)."""
    model.eval()
    return lambda batch: forecast_of(model, batch).float()
