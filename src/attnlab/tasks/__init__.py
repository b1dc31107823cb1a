"""Task step functions by name: ``(model, batch) -> (loss, metrics)``.

Add a task with ``@register_task("name")`` on a function of that signature; the trainer looks it up
from ``task.name`` in the run config. Unknown or duplicate names are errors.
"""

from __future__ import annotations

import difflib
from typing import Callable

from .lm import lm_step

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

__all__ = ["get_task", "list_tasks", "lm_step", "register_task"]
