"""What a comparison cell measures besides training: peak memory, inference speed, quality on a whole
split of its dataset, the grokking accuracy curves and the in-context-regression error curve.

Peak memory (``peak_rss_mb``): on Linux the process's peak resident set size is reset at the start of
each cell (``/proc/self/clear_refs`` = 5 resets ``VmHWM``) and read at its end, so it is the peak of this
cell alone; it includes the interpreter, torch and the data set (the baseline RSS at the cell start is
``rss_start_mb``; ``peak_rss_delta_mb`` is the difference). On CUDA it is ``torch.cuda.max_memory_allocated``
after a reset. Where neither is available it is ``None``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.base import SuiteDataset, SuiteSplit
from ..objectives import model_outputs
from ..objectives.classify import EXAMPLE_INPUTS
from ..objectives.baselines import regression_baselines
from ..objectives.metrics import score, squared_error_by_position
from ..train.precision import autocast

GROKKING_DATASETS = ("modular_addition",)  # datasets whose cells record train/val accuracy at every evaluation
CURVE_TRAIN_ROWS = 2048  # the fixed training subset (first rows) of the train-accuracy curve


class PeakMemory:
    """Peak memory of one cell (see module docstring for what is measured)."""

    def __init__(self, device: torch.device):
        self.device, self.source, self.start_mb = device, None, None

    @staticmethod
    def _status_mb(field: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
        except OSError:
            return None
        return None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "cuda_max_memory_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.source, self.start_mb = "linux_vmhwm", self._status_mb("VmRSS")
        except OSError:
            self.source = None

    def peak(self) -> dict:
        if self.source == "cuda_max_memory_allocated":
            return {"peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                    "peak_memory_source": self.source}
        if self.source == "linux_vmhwm":
            peak = self._status_mb("VmHWM")
            return {"peak_memory_mb": peak, "rss_start_mb": self.start_mb, "peak_memory_source": self.source,
                    "peak_rss_delta_mb": None if peak is None or self.start_mb is None else peak - self.start_mb}
        return {"peak_memory_mb": None, "peak_memory_source": None}


def _tokens(batch: dict[str, Tensor]) -> int:
    for key in EXAMPLE_INPUTS:  # one per image, spectrogram or file: such a dataset's speed reads in examples/s
        if key in batch:
            return batch[key].shape[0]
    x = batch["idx"] if "idx" in batch else batch["inputs"]
    return x.shape[0] * x.shape[1]  # sequence positions: (B, T) ids or (B, T, D) vectors


@torch.no_grad()
def inference_tokens_per_s(model: nn.Module, batches: list[dict], device: torch.device, precision: str,
                           num_batches: int, kind: str = "lm") -> float:
    """Sequence positions per second of a timed forward pass over ``num_batches`` eval batches (cycled),
    after one warm-up; ``kind`` (the dataset's kind) says how the model is called
    (:func:`attnlab.objectives.model_outputs`)."""
    was_training = model.training
    model.eval()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    with autocast(precision, device):
        model_outputs(kind, model, batches[0])
        tokens, t0 = 0, time.perf_counter()
        for i in range(num_batches):
            batch = batches[i % len(batches)]
            model_outputs(kind, model, batch)
            tokens += _tokens(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    model.train(was_training)
    return tokens / max(time.perf_counter() - t0, 1e-9)


@torch.no_grad()
def predict(model: nn.Module, split: SuiteSplit, kind: str, device: torch.device, batch_size: int) -> Tensor:
    """The model's outputs for every row of ``split`` in order, on the CPU in fp32 (computed in batches,
    eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(split), batch_size):
        batch = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        outs.append(model_outputs(kind, model, {k: v.to(device) for k, v in batch.items()}).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def dataset_quality(model: nn.Module, dataset: SuiteDataset, device: torch.device, batch_size: int,
                    split: str | SuiteSplit = "test") -> float:
    """``dataset.metric`` of the model on the whole ``split`` (default: the test split)."""
    rows = getattr(dataset, split) if isinstance(split, str) else split
    return score(dataset, predict(model, rows, dataset.kind, device, batch_size), rows)


class AccuracyCurves:
    """``on_step`` hook recording train and validation accuracy at every evaluation (the grokking plot of
    Power et al. 2022): accuracy on the first :data:`CURVE_TRAIN_ROWS` training rows and on the whole test
    split. Set ``model`` before training. The evaluation runs under :func:`torch.random.fork_rng`, so the
    training stream of random numbers is the same with or without it."""

    def __init__(self, dataset: SuiteDataset, device: torch.device, batch_size: int):
        self.dataset, self.device, self.batch_size = dataset, device, batch_size
        self.train_rows = dataset.train.subset(slice(0, CURVE_TRAIN_ROWS))
        self.model: nn.Module | None = None
        self.train_curve: list[list[float]] = []  # [step, accuracy]
        self.val_curve: list[list[float]] = []

    def __call__(self, step: int, row: dict) -> None:
        if "val_loss" not in row or self.model is None:
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.train_curve.append([step, dataset_quality(self.model, self.dataset, self.device, self.batch_size,
                                                           self.train_rows)])
            self.val_curve.append([step, dataset_quality(self.model, self.dataset, self.device, self.batch_size)])

    def record(self) -> dict:
        return {"train_accuracy_curve": self.train_curve, "val_accuracy_curve": self.val_curve}


def icl_curve(dataset: SuiteDataset, pred: Tensor) -> dict[str, list[float]]:
    """Squared error after ``k`` in-context examples on the test split: the model's (``pred (N, T)``) next
    to the least-squares, ridge and zero predictors of :func:`attnlab.objectives.baselines.regression_baselines`
    (Garg et al. 2022, Fig. 2; Akyürek et al. 2022)."""
    test = dataset.test
    model = squared_error_by_position(pred, test.targets, test.loss_mask)  # (K,)
    base = regression_baselines(dataset)
    return {"num_examples": [int(k) for k in base["num_examples"]], "model": [float(x) for x in model],
            **{name: [float(x) for x in base[name]] for name in ("least_squares", "ridge", "zero")}}
