"""Run a comparison grid: attention variants x tasks x seeds, one fair budget per task.

Every cell is built by the model registry and trained by the same :class:`~attnlab.train.trainer.Trainer`
with its task's budget (``train.steps``, ``data.batch_size``, ``data.seq_len`` of the base recipe plus
the task's overrides); only the attention kernel and the seed change within a task. After training the
cell is scored (the dataset's metric on its whole test split; bits/char for ``char_lm``), its inference speed is
timed, and one JSON line is appended to ``out_dir/results.jsonl``.

Resuming: cells whose key is already in ``results.jsonl`` are skipped, so an interrupted grid loses at
most the cell in progress (it restarts from scratch). Appends are one ``write`` of a complete line
followed by ``flush`` + ``os.fsync``; a torn last line (no trailing newline, e.g. power loss mid-write)
is cut off before the next append and ignored when reading.

Dataset kinds: on an ``lm`` dataset the base model itself trains; on a ``classify`` or ``regression`` dataset
it trains under the dataset's head (:func:`attnlab.models.heads.wrap_for_dataset`) with the ``classify`` /
``regression`` objective, and the model's ``max_seq_len``/``vocab_size`` are the dataset's. Extra curves in
the record: ``train_accuracy_curve`` / ``val_accuracy_curve`` (``[step, accuracy]`` at every evaluation) for
the grokking dataset (``modular_addition``), and ``icl_curve`` (squared error after ``k`` in-context examples,
with the least-squares / ridge / zero baselines) for regression datasets.

Skipped cells: a kernel that cannot run a task (a ``CapabilityError`` or ``ValueError`` while building the
model, or in a probe forward of one evaluation batch before training; e.g. ``gpsa`` in a causal model, or
``axial`` on a dataset without a 2-D grid), or a task whose data is not installed, is not an error: the cell
is listed in ``out_dir/skipped.json`` with the reason (and in the report), nothing is trained, and the next
invocation tries it again (so installing the data, or changing the recipe, needs no cleanup).
Measurements (memory, speed, curves) are described in :mod:`attnlab.compare.measure`.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from ..attention.base import AttentionKernel
from ..attention.capabilities import CapabilityError
from ..core.io import write_json, write_text
from ..data.registry import get_dataset
from ..data.text import build_lm_data
from ..objectives import model_outputs
from ..objectives.metrics import HIGHER_IS_BETTER, score
from ..train import distributed as D
from ..train.checkpoint import checkpoint_root
from ..train.feeds import CorpusFeed
from ..train.logs import rate_unit
from ..train.task_feeds import feed_for_dataset
from ..train.trainer import Trainer
from .config import CHAR_LM, Cell, CompareConfig
from .measure import (GROKKING_DATASETS, AccuracyCurves, PeakMemory, dataset_quality,  # noqa: F401
                      icl_curve, inference_tokens_per_s, predict)

RESULTS = "results.jsonl"
SKIPPED = "skipped.json"  # cells that cannot run (kernel x task, or data missing), with the reason


# ---------------------------------------------------------------- results.jsonl

def read_results(path: str | Path) -> list[dict]:
    """Records of ``results.jsonl`` in file order; a torn (unterminated or unparsable) last line is ignored.

    Raises:
        ValueError: a line other than the last is not valid JSON (the file was edited or corrupted).
    """
    p = Path(path)
    if not p.is_file():
        return []
    text = p.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail is "" when the file ends with a newline
    out = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} line {i + 1} is not valid JSON ({e}); remove that line to rerun its cell") from None
    del tail  # an unterminated last line is an interrupted append
    return out


def read_skipped(run_dir: str | Path) -> list[dict]:
    """Entries of ``skipped.json`` (``key``, ``task``, ``variant``, ``attention``, ``seed``, ``reason``); [] if none."""
    p = Path(run_dir) / SKIPPED
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else []


def append_result(path: str | Path, record: dict) -> None:
    """Append ``record`` as one complete JSON line, durably (``flush`` + ``os.fsync``), after cutting off a
    torn last line left by an earlier crash."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_file():
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(p, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(p, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- one cell

class CellSkipped(Exception):
    """A cell that cannot run: its kernel cannot run the task (``CapabilityError`` / ``ValueError`` while
    building the model or in a probe forward), or the task's data is not installed. ``reason`` says why."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@functools.lru_cache(maxsize=2)
def _corpus(dataset: str, tokenizer: str, seq_len: int, val_fraction: float, split: str, vocab_size: int):
    return build_lm_data(dataset, tokenizer, seq_len, val_fraction, split, vocab_size)


@functools.lru_cache(maxsize=2)
def _dataset(name: str, options_json: str):
    """A suite dataset, built once per grid (every variant and seed of a task trains on the same data)."""
    return get_dataset(name, **json.loads(options_json))


def _build_trainer(cell: Cell, cfg, info, feed, on_step) -> Trainer:
    """The cell's Trainer, after a probe forward (eval mode, on a copy) of one evaluation batch: a kernel that
    cannot run the task fails here, before training, and the cell is skipped instead of crashing the grid."""
    try:
        trainer = Trainer(cfg, info, progress=False, on_step=on_step, feed=feed)
        probe = copy.deepcopy(trainer.raw_model)  # stateful kernels (DGQA) must not see the probe
        grid = getattr(probe, "grid", None) or getattr(getattr(probe, "body", None), "grid", None)  # images: the body's
        for m in probe.modules():
            if isinstance(m, AttentionKernel) and m.capabilities.requires_grid and grid is None:
                raise CapabilityError(f"attention {m.name!r} needs a 2-D token grid and dataset "
                                      f"{cell.task.name!r} has none")
        if cell.variant is not cell.cfg.compare.variants[0] and not any(
                isinstance(m, AttentionKernel) for m in trainer.raw_model.modules()):
            raise CellSkipped(cell.key, f"{cell.task.label}: the model has no attention (trained once, under the "
                                        f"first variant {cell.cfg.compare.variants[0].label!r})")
        batch = {k: v[:2].to(info.device) for k, v in trainer.val[0].items()}
        with torch.no_grad(), torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda" else []):
            probe.eval()
            model_outputs(getattr(feed, "kind", "lm"), probe, batch)
    except (CapabilityError, ValueError) as e:
        raise CellSkipped(cell.key, str(e).splitlines()[0]) from None
    return trainer


def _dataset_records(dataset, trainer: Trainer, info, batch_size: int) -> dict:
    """Quality on the dataset's whole test split and, for regression, the error-vs-examples curve."""
    model = trainer.raw_model
    pred = predict(model, dataset.test, dataset.kind, info.device, batch_size)
    out = {"metric": dataset.metric, "quality": score(dataset, pred)}
    if dataset.kind == "regression" and dataset.test.loss_mask is not None:
        out["icl_curve"] = icl_curve(dataset, pred)
    return out


def _forecast_records(feed, trainer: Trainer, info, batch_size: int) -> dict:
    """Test MSE of the trained forecaster (every window once) with its MAEs and the closed-form baselines."""
    from ..train.forecast_feed import forecast_report

    r = forecast_report(trainer.raw_model, feed.data, batch_size, info.device)
    return {"metric": "mse", "quality": r["model"]["mse"], "mae": r["model"]["mae"],
            "mae_original": r["model"].get("mae_original"), "forecast_baselines": r["baselines"],
            "test_windows": r["windows"]}


def _cell_data(cell: Cell):
    """``(dataset, feed, run config)`` of a cell; ``dataset`` is ``None`` for ``char_lm``.

    Raises:
        CellSkipped: the task's dataset is not installed.
    """
    from ..data.series import is_series

    if is_series(cell.task.name):  # a forecasting task: the series under the protocol, options = data keys
        from ..train.forecast_feed import forecast_feed

        cfg = cell.run_config(extra={"data": {"dataset": cell.task.name, **cell.task.options},
                                     "objective": {"name": "forecast"}})
        try:
            feed = forecast_feed(cfg)
        except FileNotFoundError as e:
            raise CellSkipped(cell.key, f"data missing: {e}") from None
        return feed, feed, cfg
    if cell.task.name == CHAR_LM:  # the text corpus, tokenized once per grid (identical batches to `attnlab train`)
        cfg = cell.run_config()
        d = cfg.data
        return None, CorpusFeed(_corpus(d.dataset, d.tokenizer, d.seq_len, d.val_fraction, d.split, d.vocab_size)), cfg
    try:
        dataset = _dataset(cell.task.name, json.dumps(cell.task.options, sort_keys=True))
    except FileNotFoundError as e:
        raise CellSkipped(cell.key, f"data missing: {e}") from None
    feed = feed_for_dataset(dataset)
    # classify/regression models are sized to the dataset; lm datasets keep the base model's max_seq_len, and models
    # of whole examples (images, spectrograms, files) their own (their token count follows from the input and patches)
    own = dataset.kind == "lm" or getattr(dataset, "whole_examples", False)
    cfg = cell.run_config(dataset.seq_len, dataset.vocab_size, None if own else dataset.seq_len)
    return dataset, feed, cfg


def run_cell(cell: Cell, device: str | None = None) -> dict:
    """Train and measure one cell; returns its record (see module docstring and docs/results.md).

    Raises:
        CellSkipped: the kernel cannot run this task, or the task's data is not installed (nothing trained).
        KeyboardInterrupt: training was interrupted (nothing is recorded for this cell).
        ValueError: an invalid recipe (message names it).
    """
    dataset, feed, cfg = _cell_data(cell)
    if device is not None:
        cfg.train.device = device
    info = D.init_distributed(cfg.train.device)
    kind = "lm" if dataset is None else dataset.kind
    val_curve: list[list[float]] = []
    curves = AccuracyCurves(dataset, info.device, cfg.data.batch_size) if cell.task.name in GROKKING_DATASETS else None

    def on_step(step: int, row: dict) -> None:
        if "val_loss" in row:
            val_curve.append([step, row["val_loss"]])
        if curves is not None:
            curves(step, row)

    mem = PeakMemory(info.device)
    mem.reset()
    try:
        trainer = _build_trainer(cell, cfg, info, feed, on_step)
        if curves is not None:
            curves.model = trainer.raw_model
        trainer.prepare(resume=False, overwrite=True)
        result = trainer.fit()
        if result.stopped == "interrupted":
            raise KeyboardInterrupt(f"cell {cell.key} was interrupted; rerun the grid to redo it")
        if dataset is None:
            quality = {"metric": "bits_per_char", "quality": result.final_val_loss / math.log(2)}
        elif kind == "forecast":
            quality = _forecast_records(dataset, trainer, info, cfg.data.batch_size)
        else:
            quality = _dataset_records(dataset, trainer, info, cfg.data.batch_size)
        infer = inference_tokens_per_s(trainer.raw_model, trainer.val, info.device, trainer.precision,
                                       cell.cfg.compare.inference_batches, kind)
        memory = mem.peak()
    finally:
        D.cleanup(info)
    if not cell.cfg.compare.keep_checkpoints:
        shutil.rmtree(checkpoint_root(trainer.run_dir), ignore_errors=True)
    return {
        "key": cell.key, "fingerprint": cell.fingerprint(), "task": cell.task.label, "task_name": cell.task.name,
        "task_kind": kind, "variant": cell.variant.label, "attention": cell.variant.name,
        "attention_options": cell.variant.options, "seed": cell.seed, **quality,
        "higher_is_better": HIGHER_IS_BETTER[quality["metric"]],
        "final_val_loss": result.final_val_loss, "best_val_loss": result.best_val_loss,
        "final_train_loss": result.losses[-1] if result.losses else None, "steps": result.step,
        "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len, "train_tokens": trainer.tokens,
        "train_seconds": trainer.elapsed, "train_tokens_per_s": trainer.tokens / max(trainer.elapsed, 1e-9),
        "infer_tokens_per_s": infer, "unit": rate_unit(trainer.data), "parameters": result.num_parameters,
        "precision": trainer.precision,
        "device": str(info.device), "threads": torch.get_num_threads(), **memory,
        "losses": [round(x, 5) for x in result.losses], "val_curve": val_curve,
        **(curves.record() if curves is not None else {}),
    }


# ---------------------------------------------------------------- the grid

def _cell_outcome(cell: Cell, device: str | None) -> tuple[dict | None, str | None]:
    """``(record, None)`` for a trained cell, ``(None, reason)`` for one that cannot run."""
    try:
        return run_cell(cell, device), None
    except CellSkipped as e:
        return None, e.reason


def _init_worker(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def _outcomes(cells: list[Cell], device: str | None, workers: int, threads: int | None):
    """Yield ``(cell, record, skip_reason)`` as cells finish: in order in this process (``workers == 1``), or
    in completion order from ``workers`` spawned processes, each running one cell at a time."""
    if workers <= 1 or len(cells) <= 1:
        for cell in cells:
            yield (cell, *_cell_outcome(cell, device))
        return
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    pool = ProcessPoolExecutor(max_workers=min(workers, len(cells)), mp_context=ctx, initializer=_init_worker,
                               initargs=(threads,))
    try:
        futures = {pool.submit(_cell_outcome, cell, device): cell for cell in cells}
        for fut in as_completed(futures):
            try:
                record, reason = fut.result()
            except BrokenProcessPool:
                raise KeyboardInterrupt("a compare worker died (interrupted?); rerun the grid to continue") from None
            yield (futures[fut], record, reason)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_grid(cfg: CompareConfig, progress: bool = True, max_cells: int | None = None, device: str | None = None,
             report: bool = True, on_cell: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every unfinished cell of ``cfg`` (in order), appending each record to ``out_dir/results.jsonl``
    (cells that cannot run go to ``out_dir/skipped.json``), then write the report. ``max_cells`` trains at
    most that many new cells (then returns).

    Returns the records of the grid's cells that are finished, in grid order.

    Raises:
        ValueError: a finished cell in ``results.jsonl`` was run with different settings (its fingerprint
            differs); use a new ``compare.out_dir`` or delete that line.
        KeyboardInterrupt: Ctrl-C; finished cells are kept.
    """
    out = Path(cfg.compare.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    results = out / RESULTS
    done = {r["key"]: r for r in read_results(results)}
    cells = cfg.cells()
    for cell in cells:
        if cell.key in done and done[cell.key].get("fingerprint") != cell.fingerprint():
            raise ValueError(f"cell {cell.key} in {results} was run with different settings; set a new "
                             f"compare.out_dir=... or delete its line from {results} to rerun it")
    todo = [c for c in cells if c.key not in done]
    pending = {c.key for c in todo}
    skipped = {r["key"]: r for r in read_skipped(out) if r["key"] in pending}
    write_json(out / SKIPPED, list(skipped.values()), indent=1)
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), disable=not progress, desc="compare", unit="cell",
               dynamic_ncols=True)
    budget = todo if max_cells is None else todo[:max_cells]
    threads = torch.get_num_threads()
    if cfg.compare.threads is not None:
        torch.set_num_threads(cfg.compare.threads)
    try:
        for cell, record, reason in _outcomes(budget, device, cfg.compare.workers, cfg.compare.threads):
            bar.update(1)
            if reason is not None:
                skipped[cell.key] = {"key": cell.key, "task": cell.task.label, "variant": cell.variant.label,
                                     "attention": cell.variant.name, "seed": cell.seed, "reason": reason}
                write_json(out / SKIPPED, list(skipped.values()), indent=1)
                if progress:
                    bar.write(f"skipped {cell.key}: {reason}")
                continue
            append_result(results, record)
            done[cell.key] = record
            if skipped.pop(cell.key, None) is not None:
                write_json(out / SKIPPED, list(skipped.values()), indent=1)
            if progress:
                bar.write(f"{cell.key}: {record['metric']} {record['quality']:.4f}, "
                          f"{record['train_tokens_per_s']:,.0f} train {record['unit']}/s")
            if on_cell is not None:
                on_cell(record)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    if report:
        from .report import write_report

        write_report(out)
    return [done[c.key] for c in cells if c.key in done]
