"""Run a comparison grid: attention variants x tasks x seeds, one fair budget per task (issue 6).

Every cell is built by the model registry and trained by the same :class:`~attnlab.train.trainer.Trainer`
with its task's budget (``train.steps``, ``data.batch_size``, ``data.seq_len`` of the base recipe plus
the task's overrides); only the attention kernel and the seed change within a task. After training the
cell is scored (task metric on the whole test split; bits/char for ``char_lm``), its inference speed is
timed, and one JSON line is appended to ``out_dir/results.jsonl``.

Resuming: cells whose key is already in ``results.jsonl`` are skipped, so an interrupted grid loses at
most the cell in progress (it restarts from scratch). Appends are one ``write`` of a complete line
followed by ``flush`` + ``os.fsync``; a torn last line (no trailing newline, e.g. power loss mid-write)
is cut off before the next append and ignored when reading.

Peak memory (``peak_rss_mb``): on Linux the process's peak resident set size is reset at the start of
each cell (``/proc/self/clear_refs`` = 5 resets ``VmHWM``) and read at its end, so it is the peak of this
cell alone; it includes the interpreter, torch and the data set (the baseline RSS at the cell start is
``rss_start_mb``; ``peak_rss_delta_mb`` is the difference). On CUDA it is ``torch.cuda.max_memory_allocated``
after a reset. Where neither is available it is ``None``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from ..config import atomic_write_text
from ..data.synthetic import get_task_dataset
from ..data.text import build_lm_data
from ..tasks.metrics import HIGHER_IS_BETTER, score
from ..train import distributed as D
from ..train.checkpoint import checkpoint_root
from ..train.precision import autocast
from ..train.task_data import CorpusData, TaskLMData
from ..train.trainer import Trainer
from .config import CHAR_LM, Cell, CompareConfig

RESULTS = "results.jsonl"


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


# ---------------------------------------------------------------- memory

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


# ---------------------------------------------------------------- one cell

@functools.lru_cache(maxsize=2)
def _corpus(dataset: str, tokenizer: str, seq_len: int, val_fraction: float, split: str):
    return build_lm_data(dataset, tokenizer, seq_len, val_fraction, split)


@torch.no_grad()
def inference_tokens_per_s(model: torch.nn.Module, batches: list[dict], device: torch.device, precision: str,
                           num_batches: int) -> float:
    """Tokens per second of a timed forward pass over ``num_batches`` eval batches (cycled), after one warm-up."""
    model.eval()
    batches = [b["idx"].to(device) for b in batches]  # (B, T) each
    with autocast(precision, device):
        model(batches[0])
        tokens, t0 = 0, time.perf_counter()
        for i in range(num_batches):
            idx = batches[i % len(batches)]
            model(idx)
            tokens += idx.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    model.train()
    return tokens / max(time.perf_counter() - t0, 1e-9)


@torch.no_grad()
def task_quality(model: torch.nn.Module, task, device: torch.device, batch_size: int) -> float:
    """``task.metric`` of the model on the task's whole test split (logits computed in batches)."""
    model.eval()
    split = task.test
    logits = []
    for start in range(0, len(split), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(split)))
        logits.append(model(split.batch(rows)["idx"].to(device)).float().cpu())  # (b, T, V)
    model.train()
    return score(task, torch.cat(logits))


def run_cell(cell: Cell, device: str | None = None) -> dict:
    """Train and measure one cell; returns its record (see module docstring and docs/results.md).

    Raises:
        KeyboardInterrupt: training was interrupted (nothing is recorded for this cell).
        ValueError: an invalid recipe or a kernel that cannot run this task (message names it).
    """
    task, task_data = None, None
    if cell.task.name != CHAR_LM:
        task = get_task_dataset(cell.task.name, **cell.task.options)
        task_data = TaskLMData(task)
    cfg = cell.run_config(*((task.seq_len, task.vocab_size) if task else (None, None)))
    if task is None:  # the text corpus, tokenized once per grid (identical batches to the plain text path)
        d = cfg.data
        task_data = CorpusData(_corpus(d.dataset, d.tokenizer, d.seq_len, d.val_fraction, d.split))
    if device is not None:
        cfg.train.device = device
    info = D.init_distributed(cfg.train.device)
    val_curve: list[list[float]] = []
    on_step = lambda step, row: val_curve.append([step, row["val_loss"]]) if "val_loss" in row else None  # noqa: E731
    mem = PeakMemory(info.device)
    mem.reset()
    try:
        trainer = Trainer(cfg, info, progress=False, on_step=on_step, task_data=task_data)
        trainer.prepare(resume=False, overwrite=True)
        result = trainer.fit()
        if result.stopped == "interrupted":
            raise KeyboardInterrupt(f"cell {cell.key} was interrupted; rerun the grid to redo it")
        model = trainer.raw_model
        if task is None:
            metric, quality = "bits_per_char", result.final_val_loss / math.log(2)
        else:
            metric, quality = task.metric, task_quality(model, task, info.device, cfg.data.batch_size)
        infer = inference_tokens_per_s(model, trainer.val, info.device, trainer.precision,
                                       cell.cfg.compare.inference_batches)
        memory = mem.peak()
    finally:
        D.cleanup(info)
    if not cell.cfg.compare.keep_checkpoints:
        shutil.rmtree(checkpoint_root(trainer.run_dir), ignore_errors=True)
    return {
        "key": cell.key, "fingerprint": cell.fingerprint(), "task": cell.task.label, "task_name": cell.task.name,
        "variant": cell.variant.label, "attention": cell.variant.name, "attention_options": cell.variant.options,
        "seed": cell.seed, "metric": metric, "higher_is_better": HIGHER_IS_BETTER[metric], "quality": quality,
        "final_val_loss": result.final_val_loss, "best_val_loss": result.best_val_loss,
        "final_train_loss": result.losses[-1] if result.losses else None, "steps": result.step,
        "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len, "train_tokens": trainer.tokens,
        "train_seconds": trainer.elapsed, "train_tokens_per_s": trainer.tokens / max(trainer.elapsed, 1e-9),
        "infer_tokens_per_s": infer, "parameters": result.num_parameters, "precision": trainer.precision,
        "device": str(info.device), "threads": torch.get_num_threads(), **memory,
        "losses": [round(x, 5) for x in result.losses], "val_curve": val_curve,
    }


# ---------------------------------------------------------------- the grid

def run_grid(cfg: CompareConfig, progress: bool = True, max_cells: int | None = None, device: str | None = None,
             report: bool = True, on_cell: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every unfinished cell of ``cfg`` (in order), appending each record to ``out_dir/results.jsonl``,
    then write the report. ``max_cells`` trains at most that many new cells (then returns).

    Returns the records of the grid's cells that are finished, in grid order.

    Raises:
        ValueError: a finished cell in ``results.jsonl`` was run with different settings (its fingerprint
            differs); use a new ``compare.out_dir`` or delete that line.
        KeyboardInterrupt: Ctrl-C; finished cells are kept.
    """
    out = Path(cfg.compare.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    results = out / RESULTS
    done = {r["key"]: r for r in read_results(results)}
    cells = cfg.cells()
    for cell in cells:
        if cell.key in done and done[cell.key].get("fingerprint") != cell.fingerprint():
            raise ValueError(f"cell {cell.key} in {results} was run with different settings; set a new "
                             f"compare.out_dir=... or delete its line from {results} to rerun it")
    todo = [c for c in cells if c.key not in done]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), disable=not progress, desc="compare", unit="cell",
               dynamic_ncols=True)
    trained, threads = 0, torch.get_num_threads()
    if cfg.compare.threads is not None:
        torch.set_num_threads(cfg.compare.threads)
    try:
        for cell in todo:
            if max_cells is not None and trained >= max_cells:
                break
            bar.set_postfix_str(cell.key)
            record = run_cell(cell, device)
            append_result(results, record)
            done[cell.key] = record
            trained += 1
            bar.update(1)
            if progress:
                bar.write(f"{cell.key}: {record['metric']} {record['quality']:.4f}, "
                          f"{record['train_tokens_per_s']:,.0f} train tok/s")
            if on_cell is not None:
                on_cell(record)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    if report:
        from .report import write_report

        write_report(out)
    return [done[c.key] for c in cells if c.key in done]
