"""Objectives by name: training step functions ``(model, batch) -> (loss, metrics)``.

Add one with ``@register_objective("name")`` on a function of that signature; the trainer looks it up
from ``objective.name`` in the run config (`attnlab list objectives`). Unknown or duplicate names are errors.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from torch import Tensor, nn

from ..core.registry import Registry
from .classify import classify_outputs, classify_step
from .forecast import forecast_of, forecast_step, irregular_step, patch_mask_step
from .lm import lm_step
from .mlm import mlm_step
from .regression import regression_outputs, regression_step
from .seq2seq import seq2seq_step
from .spectrogram import ssast_step

StepFn = Callable[..., tuple]

_OBJECTIVES: Registry[StepFn] = Registry("objective")


def register_objective(name: str):
    """Decorator: make ``fn(model, batch) -> (loss, metrics)`` selectable as ``objective.name``.

    Raises:
        ValueError: ``name`` is registered to another function.
    """

    def deco(fn: StepFn) -> StepFn:
        return _OBJECTIVES.register(name, fn)

    return deco


def get_objective(name: str) -> StepFn:
    """The step function of objective ``name``.

    Raises:
        ValueError: unknown name (suggests the closest and lists the valid ones).
    """
    return _OBJECTIVES.get(name)


def objective_step(name: str, **options) -> StepFn:
    """The step function of ``name`` with ``options`` bound (``label_smoothing=0.1``); options left at their
    default need not be accepted by the step.

    Raises:
        ValueError: unknown name, or an option the step does not take (names the objectives that take it).
    """
    fn = get_objective(name)
    params = inspect.signature(fn).parameters
    for key in options:
        if key not in params:
            takers = [n for n in list_objectives() if key in inspect.signature(get_objective(n)).parameters]
            raise ValueError(f"objective.{key} does not apply to objective {name!r} (it applies to {takers or 'none'}); "
                             f"remove it or choose one of those objectives")
    return functools.partial(fn, **options) if options else fn


def list_objectives() -> list[str]:
    """Sorted names of every objective."""
    return _OBJECTIVES.names()


register_objective("lm")(lm_step)
register_objective("classify")(classify_step)
register_objective("regression")(regression_step)
register_objective("mlm")(mlm_step)
register_objective("seq2seq")(seq2seq_step)
register_objective("forecast")(forecast_step)
register_objective("patch_mask")(patch_mask_step)
register_objective("irregular")(irregular_step)
register_objective("ssast")(ssast_step)

# what a model returns for a batch of each dataset kind of the suite (attnlab.data.base.DatasetKind)
OUTPUTS: dict[str, Callable[[nn.Module, dict[str, Tensor]], Tensor]] = {
    "lm": lambda model, batch: model(batch["idx"]),  # (B, T, V) logits
    "classify": classify_outputs,  # (B, C) logits
    "regression": regression_outputs,  # (B, T) predictions
    "forecast": forecast_of,  # (B, T, C_t) forecast
    "irregular": lambda model, batch: model(batch["times"], batch["values"], batch["observed"], batch["padding"]),
}


def model_outputs(kind: str, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The outputs :func:`attnlab.objectives.metrics.score` takes, for a batch of a dataset of ``kind``.

    Raises:
        ValueError: unknown ``kind`` (names the valid ones).
    """
    if kind not in OUTPUTS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid: {sorted(OUTPUTS)}")
    return OUTPUTS[kind](model, batch)


__all__ = ["OUTPUTS", "classify_step", "get_objective", "list_objectives", "lm_step", "mlm_step", "model_outputs",
           "forecast_step", "objective_step", "seq2seq_step", "ssast_step",
           "register_objective", "regression_step"]
