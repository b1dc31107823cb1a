"""Task step functions by name: ``(model, batch) -> (loss, metrics)``.

Add a task with ``@register_task("name")`` on a function of that signature; the trainer looks it up
from ``task.name`` in the run config. Unknown or duplicate names are errors.
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import Tensor, nn

from .classify import classify_outputs, classify_step
from .lm import lm_step
from .regression import regression_outputs, regression_step

StepFn = Callable[..., tuple]

_TASKS: dict[str, StepFn] = {}


def register_task(name: str):
    """Decorator: make ``fn(model, batch) -> (loss, metrics)`` selectable as ``task.name``."""

    def deco(fn: StepFn) -> StepFn:
        if name in _TASKS and _TASKS[name] is not fn:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__qualname__}")
        _TASKS[name] = fn
        return fn

    return deco


def get_task(name: str) -> StepFn:
    """The step function of task ``name``; raises ``ValueError`` naming the valid tasks."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=3)
        raise ValueError(f"unknown task {name!r}" + (f"; did you mean {close}?" if close else "")
                         + f" Valid tasks: {list_tasks()}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    return sorted(_TASKS)


register_task("lm")(lm_step)
register_task("classify")(classify_step)
register_task("regression")(regression_step)

# what a model returns for a batch of each task kind of the suite (attnlab.data.base)
OUTPUTS: dict[str, Callable[[nn.Module, dict[str, Tensor]], Tensor]] = {
    "lm": lambda model, batch: model(batch["idx"]),  # (B, T, V) logits
    "classify": classify_outputs,  # (B, C) logits
    "regression": regression_outputs,  # (B, T) predictions
}


def model_outputs(kind: str, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The outputs :func:`attnlab.objectives.metrics.score` takes, for a batch of a task of ``kind``.

    Raises:
        ValueError: unknown ``kind`` (names the valid ones).
    """
    if kind not in OUTPUTS:
        raise ValueError(f"unknown task kind {kind!r}; valid: {sorted(OUTPUTS)}")
    return OUTPUTS[kind](model, batch)


__all__ = ["OUTPUTS", "classify_step", "get_task", "list_tasks", "lm_step", "model_outputs", "register_task",
           "regression_step"]
