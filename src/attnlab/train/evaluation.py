"""The periodic evaluation of a training run: the objective's loss and accuracy metrics over fixed batches."""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..objectives import model_outputs
from . import distributed as D
from .precision import autocast

# accuracy-like metrics of a step that evaluation averages and logs as val_<name>
EVAL_METRICS = ("accuracy", "top5_accuracy", "token_accuracy", "exact_match", "masked_accuracy")


@torch.no_grad()
def evaluate_batches(step_fn, model: nn.Module, batches: list[dict], precision: str,
                     info: D.DistInfo) -> tuple[float, dict[str, float]]:
    """``(mean loss, {metric: mean})`` of ``step_fn`` over ``batches`` in eval mode, averaged over ranks.

    The loss is the step's ``loss`` metric when it reports one (the plain cross-entropy, also under label smoothing),
    else the loss it trains with; the metrics are those of :data:`EVAL_METRICS` the step reports.
    """
    model.eval()
    total = torch.zeros(1 + len(EVAL_METRICS), device=info.device)
    seen: set[str] = set()
    try:
        for batch in batches:
            batch = {k: v.to(info.device) for k, v in batch.items()}
            with autocast(precision, info.device):
                loss, metrics = step_fn(model, batch)
            seen.update(k for k in EVAL_METRICS if k in metrics)
            values = [metrics.get("loss", loss)] + [metrics.get(k, torch.zeros(())) for k in EVAL_METRICS]
            total += torch.stack([torch.as_tensor(v, device=info.device).float() for v in values])
    finally:
        model.train()
    mean = D.all_reduce_mean(total / len(batches), info).tolist()
    return float(mean[0]), {k: v for k, v in zip(EVAL_METRICS, mean[1:]) if k in seen}


@torch.no_grad()
def confusion_counts(model: nn.Module, batches: list[dict], precision: str, info: D.DistInfo,
                     classes: int) -> torch.Tensor:
    """``(classes, classes)`` int64 counts of a classifier's predictions over ``batches`` (row: true class, column:
    predicted), summed over ranks (every rank must call it, with or without batches of its own), in eval mode."""
    from ..viz.confusion import confusion_matrix

    model.eval()
    targets, predictions = [], []
    try:
        for batch in batches:
            batch = {k: v.to(info.device) for k, v in batch.items()}
            with autocast(precision, info.device):
                predictions.append(model_outputs("classify", model, batch).argmax(-1).cpu())
            targets.append(batch["targets"].cpu())
    finally:
        model.train()
    y = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)  # a rank may have no batches
    p = torch.cat(predictions) if predictions else y
    counts = torch.as_tensor(confusion_matrix(y.numpy(), p.numpy(), classes), dtype=torch.float32,
                             device=info.device)  # this rank's share
    return (D.all_reduce_mean(counts, info) * info.world_size).round().long()


def plot_final_confusion(counts: torch.Tensor, dataset, step: int, path) -> None:
    """Draw the confusion matrix of the validation batches when training ends (``attnlab eval`` redraws it over
    the whole test split); a folder that cannot take it gets a line on stderr, not an error."""
    from ..viz.confusion import plot_confusion_matrix

    counts = counts.cpu().numpy()
    accuracy = counts.trace() / max(counts.sum(), 1)
    labels = getattr(dataset, "label_names", ())
    name = getattr(dataset, "name", "classifier")
    try:
        plot_confusion_matrix(counts, labels, path, title=f"{name}, step {step} ({counts.sum()} validation examples): "
                                                          f"accuracy {accuracy:.3f}")
    except OSError as e:
        print(f"attnlab: cannot write {path} ({e}); the confusion matrix is not saved", file=sys.stderr)
