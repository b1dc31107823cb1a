"""The periodic evaluation of a training run: the objective's loss and accuracy metrics over fixed batches."""

from __future__ import annotations

import torch
from torch import nn

from . import distributed as D
from .precision import autocast

# accuracy-like metrics of a step that evaluation averages and logs as val_<name>
EVAL_METRICS = ("accuracy", "token_accuracy", "exact_match", "masked_accuracy")


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
