"""Run-directory bookkeeping: what a run returns (:class:`TrainResult`), ``metrics.jsonl`` (one JSON row per optimizer
step), ``summary.json``, and the lines a run prints about its losses."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..core.io import write_text
from ..viz.curves import read_metrics


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a call to :func:`attnlab.train.train` did. ``stopped`` is ``completed``, ``interrupted`` or ``early_stopping``."""

    run_dir: Path
    step: int
    stopped: str
    losses: list[float] = field(default_factory=list)
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    num_parameters: int = 0


RUN_FILES = ("config.yaml", "tokenizer.json", "metrics.jsonl", "summary.json", "loss_curve.png", "eval.json")


class MetricsLog:
    """Append-only JSON-lines log; each row is flushed as soon as it is written."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._f = self.path.open("a", encoding="utf-8") if enabled else None

    def write(self, row: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only rows with ``step <= last_step`` (rows logged after the checkpoint a run resumes from)."""
    p = Path(path)
    if not p.exists():
        return
    rows = [r for r in read_metrics(p) if r.get("step", 0) <= last_step]
    write_text(p, "".join(json.dumps(r) + "\n" for r in rows))


def format_seconds(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{s:.1f}s"


def write_summary(trainer, result, checkpoint: Path | None) -> None:
    """Rank 0 at the end of a run: ``summary.json`` (how it stopped, speed, losses, what it trained) and
    ``loss_curve.png``."""
    from ..core.io import write_json
    from ..viz.curves import plot_loss_curve

    summary = {"step": trainer.step, "stopped": result.stopped, "final_val_loss": result.final_val_loss,
               "best_val_loss": result.best_val_loss, "train_seconds": round(trainer.elapsed, 2),
               "wall_seconds_this_invocation": round(result.wall_seconds, 2),
               "tokens": trainer.tokens, "num_parameters": result.num_parameters, "precision": trainer.precision,
               "world_size": trainer.info.world_size, "unit": trainer.data.tokenizer.unit,
               "checkpoint": str(checkpoint)}
    write_json(trainer.run_dir / "summary.json", summary)
    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    if rows:
        plot_loss_curve(rows, trainer.run_dir / "loss_curve.png", title=str(trainer.run_dir),
                        unit=trainer.data.tokenizer.unit)


def rate_unit(data) -> str:
    """What a run's throughput counts: ``examples`` for a dataset whose examples are one position each (images,
    clips, files: ``whole_examples``), else ``tokens`` (the trainer's ``tokens`` are ``batch_size x seq_len`` per
    step either way, so a text classifier's count is of tokens)."""
    return "examples" if getattr(getattr(data, "dataset", None), "whole_examples", False) else "tokens"


def print_summary(result, trainer) -> None:
    """The closing lines of a run (rank 0): how it stopped, speed, final loss, how to resume an interrupted run."""
    rate = trainer.tokens / max(trainer.elapsed, 1e-9)
    msg = (f"{result.stopped} at step {result.step}: {format_seconds(result.train_seconds)} in training steps "
           f"({rate:,.0f} {rate_unit(trainer.data)}/s); this invocation took {format_seconds(result.wall_seconds)} "
           "with evaluation")
    if result.final_val_loss is not None:
        msg += f"; final val loss {loss_text(result.final_val_loss, trainer.data)}"
    tqdm.write(msg + f"; run directory {trainer.run_dir}")
    if result.stopped == "interrupted":
        tqdm.write(f"resume with: attnlab train {trainer.run_dir} --resume")


def is_regression(data) -> bool:
    return getattr(data, "kind", None) in ("regression", "forecast")


def loss_text(val: float, data) -> str:
    """Cross-entropy in nats and bits per unit, or the squared error of a regression dataset."""
    if is_regression(data):
        return f"{val:.4f} (mean squared error)"
    unit = data.tokenizer.unit
    return f"{val:.4f} nats/{unit} ({val / math.log(2):.3f} bits/{unit})"


def _data_summary(cfg, trainer) -> str:
    """What the run trains on, in a few words: windows of a series, images, spectrograms, files or token ids."""
    dataset = getattr(trainer.data, "dataset", None)  # a suite dataset: its own ids, or whole examples
    if getattr(trainer.data, "kind", None) == "forecast":
        series = trainer.data.data
        return f"{len(series.train)} training windows, lookback {series.lookback}, horizon {series.horizon}"
    if getattr(dataset, "image_shape", None) is not None:
        return "x".join(map(str, dataset.image_shape)) + " images"
    if getattr(dataset, "audio_shape", None) is not None:
        return "{} frames x {} mel bins spectrograms".format(*dataset.audio_shape)
    if getattr(dataset, "byte_length", None) is not None:
        return f"files of up to {dataset.byte_length} bytes"
    if dataset is not None:
        return f"its own token ids, vocab {trainer.data.vocab_size}"
    return f"{cfg.data.tokenizer}, vocab {trainer.data.vocab_size}"


def opening_line(cfg, trainer, num_parameters: int, resume: bool) -> str:
    """What ``attnlab train`` prints before the first step: model, data, precision, processes, run folder."""
    what = _data_summary(cfg, trainer)
    from ..attention.base import AttentionKernel

    kernels = any(isinstance(m, AttentionKernel) for m in trainer.raw_model.modules())
    mixing = f"attention {cfg.model.attention}" if kernels else f"grid attention {cfg.model.grid_attention}"  # VAN
    return (f"training {cfg.model.name} ({num_parameters / 1e6:.2f}M parameters, {mixing}) on "
            f"{cfg.data.dataset} ({what}), {trainer.precision}, "
            f"{trainer.info.world_size} process(es), device {trainer.info.device} -> {trainer.run_dir}"
            + (f", resuming at step {trainer.step}" if resume else ""))
