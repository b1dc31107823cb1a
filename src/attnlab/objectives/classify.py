"""Sequence classification: ``(model, batch) -> (loss, metrics)`` with one label per sequence.

The classification datasets of the suite (ListOps, Nangia & Bowman 2018 and Long Range Arena, Tay et al.
2021; byte-level sentiment; Fashion-MNIST as a pixel sequence, LRA's "Image" benchmark) train through this step
with a :class:`~attnlab.models.heads.SequenceClassifier`.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .seq2seq import smoothed_cross_entropy


# batch key of whole-example inputs -> their number of dimensions (images, spectrograms, file bytes)
EXAMPLE_INPUTS = {"pixels": 4, "spectrogram": 3, "bytes": 2}


def classify_outputs(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Logits ``(B, C)`` of ``model(idx, key_padding_mask=...)`` (the mask only when the batch has one), or of
    ``model(x)`` for whole examples (``pixels``, ``spectrogram``, ``bytes``)."""
    for key in EXAMPLE_INPUTS:
        if key in batch:
            return model(batch[key])
    mask = batch.get("key_padding_mask")
    return model(batch["idx"]) if mask is None else model(batch["idx"], key_padding_mask=mask)


def classify_step(model: nn.Module, batch: dict[str, Tensor],
                  label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Sequence classification: cross-entropy of ``(B, C)`` logits against one label per sequence (``label_smoothing``
    ``eps``: the target is ``1 - eps`` on the label plus ``eps / C`` everywhere, Szegedy et al. 2016; the reported
    ``loss`` stays the plain cross-entropy).

    Args:
        model: maps ``idx (B, T)`` (and ``key_padding_mask (B, T)``, True = real token), or ``pixels``, to
            logits ``(B, C)``.
        batch: ``{"idx": (B, T) int64 | "pixels": (B, C, H, W) float | "spectrogram": (B, frames, bins) float |
            "bytes": (B, L) int64, "targets": (B,) int64,
            ["key_padding_mask": (B, T) bool]}``.

    Returns:
        ``loss`` (scalar, nats per example, differentiable) and detached metrics
        ``{"loss", "bits_per_example", "accuracy", "examples"}``, and ``"top5_accuracy"`` with more than 5 classes.

    Raises:
        ValueError: ``targets`` are not ``(B,)`` labels, the logits are not ``(B, C)``, ``label_smoothing`` outside
            [0, 1).
    """
    key = next((k for k in EXAMPLE_INPUTS if k in batch), "idx")
    idx, targets = batch[key], batch["targets"]
    if targets.dim() != 1 or idx.dim() != EXAMPLE_INPUTS.get(key, 2) or targets.shape[0] != idx.shape[0]:
        raise ValueError(f"classify needs idx (B, T), pixels (B, C, H, W), spectrogram (B, frames, bins) or bytes "
                         f"(B, L), and targets (B,), got "
                         f"{tuple(idx.shape)} and "
                         f"{tuple(targets.shape)}; per-token targets belong to the lm objective")
    logits = classify_outputs(model, batch)
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"classify needs logits of shape (B, C) = ({targets.shape[0]}, C), got {tuple(logits.shape)}; "
                         "wrap the body in attnlab.models.heads.SequenceClassifier")
    loss, d = smoothed_cross_entropy(logits.float(), targets, label_smoothing)  # fp32 even under bf16 autocast
    acc = (logits.detach().argmax(-1) == targets).float().mean()
    metrics = {"loss": d, "bits_per_example": d / math.log(2), "accuracy": acc,
               "examples": targets.new_tensor(targets.numel())}
    if logits.shape[1] > 5:  # top-5 says something only with more than five classes
        metrics["top5_accuracy"] = (logits.detach().topk(5, dim=-1).indices == targets[:, None]).any(-1).float().mean()
    return loss, metrics
