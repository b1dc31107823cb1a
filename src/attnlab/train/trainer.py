"""The training loop: one explicit loop for one process or a ``torchrun`` job.

AdamW with decay groups, linear warmup + cosine decay, gradient accumulation and clipping, bf16
autocast, periodic evaluation, optional early stopping, atomic checkpoints with bit-exact resume,
Ctrl-C = save and stop. Rank 0 writes ``config.yaml``, ``tokenizer.json``, ``metrics.jsonl``,
checkpoints, ``summary.json`` and ``loss_curve.png`` into ``train.run_dir``.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..attention.base import pop_aux_loss
from ..config import RunConfig
from ..core.io import write_json
from ..data.text import WindowSampler, eval_batches
from ..data.text.tokenizers import save_tokenizer
from ..objectives import get_objective
from ..viz.curves import plot_loss_curve, read_metrics
from . import distributed as D
from .build import build_for_config
from .checkpoint import (capture_rng, checkpoint_root, latest_checkpoint, list_checkpoints, load_training_state,
                         load_weights, restore_rng, save_checkpoint)
from .logs import MetricsLog, format_seconds, truncate_metrics
from .memory import retain_freed_memory
from .optim import WarmupCosine, build_optimizer
from .precision import autocast, resolve_precision
from .signals import Abort, install_stop_handlers, restore_handlers

# keys that may change when a run is resumed (everything else must match the saved config.yaml)
RESUMABLE_CHANGES = {"steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                     "early_stopping_patience", "device", "run_dir"}


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a call to :func:`train` did. ``stopped`` is ``completed``, ``interrupted`` or ``early_stopping``."""

    run_dir: Path
    step: int
    stopped: str
    losses: list[float] = field(default_factory=list)
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    num_parameters: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Holds the pieces of one run; :meth:`fit` is the loop. Use :func:`train` rather than this class."""

    def __init__(self, cfg: RunConfig, info: D.DistInfo, progress: bool = True,
                 on_step: Callable[[int, dict], None] | None = None, feed=None):
        self.info, self.progress, self.on_step = info, progress, on_step
        t = cfg.train
        seed_everything(t.seed)
        self.data, model, self.cfg = build_for_config(cfg, info.device, feed)
        self.raw_model = model
        self.model = D.wrap_model(model, info)
        self.step_fn = get_objective(self.cfg.objective.name)  # the resolved name: a suite dataset's kind
        self.precision = resolve_precision(t.precision, info.device)
        if t.retain_memory and info.device.type == "cpu":
            retain_freed_memory()  # no page faults on every step's fresh activations (attnlab.train.memory)
        self.optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2))
        self.scheduler = WarmupCosine(self.optimizer, t.lr, t.warmup_steps, t.steps, t.min_lr_ratio)
        d = cfg.data
        if feed is not None:  # a suite dataset or a shared corpus (attnlab.train.feeds)
            self.sampler = feed.sampler(d.batch_size, t.seed, info.rank, info.world_size, t.grad_accum)
            self.val = feed.eval_batches(d.batch_size, t.eval_batches, info.rank, info.world_size)
        else:
            self.sampler = WindowSampler(self.data.train, d.seq_len, d.batch_size, t.seed, info.rank, info.world_size,
                                         t.grad_accum)
            self.val = eval_batches(self.data.val, d.seq_len, d.batch_size, t.eval_batches, info.rank, info.world_size)
        self.run_dir = Path(t.run_dir)
        self.step, self.elapsed, self.tokens = 0, 0.0, 0
        self.best_val, self.bad_evals, self.last_val = math.inf, 0, None
        self.tokens_per_step = d.batch_size * d.seq_len * t.grad_accum * info.world_size
        self.stop_requested = False
        self.mid_step = False  # True while a step is half done (a checkpoint now would not be consistent)

    # ------------------------------------------------------------ run directory
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Check the run directory (all ranks), clean or restore it, then write config and tokenizer (rank 0)."""
        existing = list_checkpoints(self.run_dir) or (self.run_dir / "metrics.jsonl").exists()
        if resume:
            ckpt = latest_checkpoint(self.run_dir)  # raises for a missing or corrupt checkpoint
            self._check_resume_config()
            self.restore(ckpt)
        elif existing and not overwrite:
            raise FileExistsError(f"run directory {self.run_dir} already holds a run; pass --resume to continue it, "
                                  "--overwrite to start again, or set train.run_dir=... for a new one")
        D.barrier(self.info)
        if self.info.is_main:
            if overwrite and not resume:
                shutil.rmtree(checkpoint_root(self.run_dir), ignore_errors=True)
                for name in ("metrics.jsonl", "summary.json", "loss_curve.png", "eval.json"):
                    (self.run_dir / name).unlink(missing_ok=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.run_dir / "config.yaml")
            if hasattr(self.data.tokenizer, "to_dict"):  # text tokenizers; suite datasets' token ids have no file
                save_tokenizer(self.data.tokenizer, self.run_dir / "tokenizer.json")
            if resume:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        D.barrier(self.info)

    def _check_resume_config(self) -> None:
        from ..config import load_config

        saved = load_config(self.run_dir / "config.yaml").model_dump(mode="json")
        given = self.cfg.model_dump(mode="json")
        for section, values in given.items():
            for key, value in values.items():
                if section == "train" and key in RESUMABLE_CHANGES:
                    continue
                if saved.get(section, {}).get(key) != value:
                    raise ValueError(
                        f"cannot resume: {section}.{key} is {value!r} but the run in {self.run_dir} used "
                        f"{saved.get(section, {}).get(key)!r}; resume with the saved config "
                        f"(`attnlab train {self.run_dir} --resume`) or start a new train.run_dir")

    # ------------------------------------------------------------ checkpoints
    def restore(self, ckpt) -> None:
        load_weights(self.raw_model, ckpt)
        rng_tensors, state = load_training_state(ckpt, self.optimizer)
        restore_rng(rng_tensors, state["rng"], self.info.rank)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        tr = state["trainer"]
        self.step, self.elapsed, self.tokens = ckpt.step, tr["elapsed"], tr["tokens"]
        self.best_val = math.inf if tr["best_val"] is None else tr["best_val"]
        self.bad_evals, self.last_val = tr["bad_evals"], tr["last_val"]

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank contributes its RNG state; rank 0 writes)."""
        cpu_state = torch.get_rng_state()
        states = [s.cpu() for s in D.all_gather_tensor(cpu_state.to(self.info.device), self.info)]
        rng_tensors, rng_json = capture_rng(states)
        path = None
        if self.info.is_main:
            state = {"rng": rng_json, "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                     "trainer": {"elapsed": self.elapsed, "tokens": self.tokens,
                                 "best_val": None if math.isinf(self.best_val) else self.best_val,
                                 "bad_evals": self.bad_evals, "last_val": self.last_val}}
            path = save_checkpoint(self.run_dir, self.step, self.raw_model, self.optimizer, state, rng_tensors,
                                   keep=self.cfg.train.keep_checkpoints)
        D.barrier(self.info)
        return path

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches, averaged over ranks."""
        self.raw_model.eval()
        total = torch.zeros((), device=self.info.device)
        for batch in self.val:
            batch = {k: v.to(self.info.device) for k, v in batch.items()}
            with autocast(self.precision, self.info.device):
                loss, _ = self.step_fn(self.raw_model, batch)
            total += loss.float()
        self.raw_model.train()
        return float(D.all_reduce_mean(total / len(self.val), self.info))

    # ------------------------------------------------------------ the loop
    def train_step(self) -> tuple[float, float | None, bool]:
        """One optimizer step over ``grad_accum`` micro-batches -> (loss, grad norm, stop requested anywhere)."""
        t = self.cfg.train
        loss_sum = torch.zeros((), device=self.info.device)
        for micro in range(t.grad_accum):
            batch = {k: v.to(self.info.device, non_blocking=True) for k, v in self.sampler.next().items()}
            sync = micro == t.grad_accum - 1 or not self.info.distributed
            with (contextlib.nullcontext() if sync else self.model.no_sync()):
                with autocast(self.precision, self.info.device):
                    loss, _ = self.step_fn(self.model, batch)
                aux = pop_aux_loss(self.raw_model)  # kernels' own training objectives (routing commitment)
                ((loss if aux is None else loss + aux.float()) / t.grad_accum).backward()
            loss_sum += loss.detach().float()
        # one all-reduce carries the loss (SUM -> mean) and any rank's stop request
        packed = torch.stack([loss_sum / t.grad_accum, torch.tensor(float(self.stop_requested), device=self.info.device)])
        packed = D.all_reduce_mean(packed, self.info)
        loss, stop = float(packed[0]), bool(packed[1] > 0)
        if not math.isfinite(loss):
            self._diverged(loss)
        gnorm = None
        if t.grad_clip is not None:
            gnorm = float(nn.utils.clip_grad_norm_(self.raw_model.parameters(), t.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss, gnorm, stop

    def _diverged(self, loss: float) -> None:
        last = list_checkpoints(self.run_dir)
        t = self.cfg.train
        raise TrainingDiverged(
            f"loss is {loss} at step {self.step + 1} (lr {self.optimizer.param_groups[0]['lr']:.3g}, "
            f"precision {self.precision}). Try a lower train.lr (now {t.lr:g}), a longer train.warmup_steps "
            f"(now {t.warmup_steps}), train.grad_clip=1.0 (now {t.grad_clip}) or train.precision=fp32. "
            + (f"Last checkpoint: {last[-1]}." if last else "No checkpoint was written yet."))

    def fit(self) -> TrainResult:
        t = self.cfg.train
        log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.info.is_main)
        bar = tqdm(total=t.steps, initial=self.step, disable=not (self.progress and self.info.is_main),
                   dynamic_ncols=True, mininterval=0.5, desc="train", unit="step")
        result = TrainResult(self.run_dir, self.step, "completed",
                             num_parameters=sum(p.numel() for p in self.raw_model.parameters()))
        handlers = install_stop_handlers(self._request_stop)
        wall0 = time.perf_counter()
        try:
            while self.step < t.steps:
                if self._one_step(log, bar, result):
                    break
        except KeyboardInterrupt as e:
            if isinstance(e, Abort) or self.mid_step:
                bar.close()
                log.close()
                raise KeyboardInterrupt(f"aborted during step {self.step + 1}; the last checkpoint is kept") from None
            result.stopped = "interrupted"
        finally:
            restore_handlers(handlers)
            bar.close()
            log.close()
        result.wall_seconds = time.perf_counter() - wall0
        return self._finish(result)

    def _request_stop(self) -> None:
        self.stop_requested = True
        if self.info.is_main:
            tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort at once)")

    def _one_step(self, log: MetricsLog, bar, result: TrainResult) -> bool:
        """Train, log, evaluate and checkpoint one step; True when the run should stop now."""
        t = self.cfg.train
        t0 = time.perf_counter()
        self.mid_step = True
        lr = self.scheduler.apply()
        loss, gnorm, stop = self.train_step()
        self.step += 1
        self.tokens += self.tokens_per_step
        self.mid_step = False
        dt = time.perf_counter() - t0
        self.elapsed += dt
        row = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens": self.tokens,
               "elapsed": round(self.elapsed, 3), "tokens_per_s": round(self.tokens_per_step / dt, 1)}
        if self.step % t.eval_every == 0 or self.step == t.steps:
            self._eval_into(row, bar)
        result.losses.append(loss)
        log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
        if self.on_step is not None:
            self.on_step(self.step, row)
        if stop:
            result.stopped = "interrupted"
            return True
        if t.early_stopping_patience is not None and self.bad_evals >= t.early_stopping_patience:
            result.stopped = "early_stopping"
            if self.info.is_main:
                bar.write(f"early stopping at step {self.step}: no new best val_loss in {self.bad_evals} evaluations")
            return True
        if self.step % t.checkpoint_every == 0 and self.step < t.steps:
            self.save()
        return False

    def _eval_into(self, row: dict, bar) -> None:
        val = self.evaluate()
        self.last_val = val
        if val < self.best_val:
            self.best_val, self.bad_evals = val, 0
        else:
            self.bad_evals += 1
        row["val_loss"] = val
        if not _is_regression(self.data):
            row[f"val_bits_per_{self.data.tokenizer.unit}"] = val / math.log(2)
        if self.info.is_main:
            bar.write(f"step {self.step:>6}: val_loss {_loss_text(val, self.data)}")

    def _finish(self, result: TrainResult) -> TrainResult:
        path = self.save()
        result.step, result.train_seconds = self.step, self.elapsed
        result.final_val_loss = self.last_val
        result.best_val_loss = None if math.isinf(self.best_val) else self.best_val
        if self.info.is_main:
            summary = {"step": self.step, "stopped": result.stopped, "final_val_loss": result.final_val_loss,
                       "best_val_loss": result.best_val_loss, "train_seconds": round(self.elapsed, 2),
                       "wall_seconds_this_invocation": round(result.wall_seconds, 2),
                       "tokens": self.tokens, "num_parameters": result.num_parameters, "precision": self.precision,
                       "world_size": self.info.world_size, "unit": self.data.tokenizer.unit, "checkpoint": str(path)}
            write_json(self.run_dir / "summary.json", summary)
            rows = read_metrics(self.run_dir / "metrics.jsonl")
            if rows:
                plot_loss_curve(rows, self.run_dir / "loss_curve.png", title=str(self.run_dir),
                                unit=self.data.tokenizer.unit)
        return result


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
          on_step: Callable[[int, dict], None] | None = None, feed=None) -> TrainResult:
    """Train ``cfg`` (under ``torchrun`` this joins the process group and trains with DDP).

    Args:
        resume: continue from the newest checkpoint in ``train.run_dir`` (bit-exact: same losses as an
            uninterrupted run).
        overwrite: start afresh in a ``run_dir`` that already holds a run (its checkpoints and logs are deleted).
        progress: show the tqdm bar (rank 0).
        on_step: called as ``on_step(step, row)`` after every optimizer step (raising KeyboardInterrupt there
            stops the run like Ctrl-C: a checkpoint is saved).
        feed: train on a dataset of the comparison suite (:class:`~attnlab.train.feeds.DatasetFeed`) or an
            already tokenized corpus (:class:`~attnlab.train.feeds.CorpusFeed`) instead of the text corpus
            of ``cfg.data``.

    Raises:
        FileExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError / CheckpointError: nothing (intact) to resume from.
        TrainingDiverged: the loss became NaN/inf (message has the step and what to change).
        ValueError: inconsistent settings (message names the keys).
    """
    info = D.init_distributed(cfg.train.device)
    try:
        trainer = Trainer(cfg, info, progress=progress, on_step=on_step, feed=feed)
        trainer.prepare(resume=resume, overwrite=overwrite)
        if info.is_main:
            n = sum(p.numel() for p in trainer.raw_model.parameters())
            tqdm.write(f"training {cfg.model.name} ({n / 1e6:.2f}M parameters, attention {cfg.model.attention}) on "
                       f"{cfg.data.dataset} ({cfg.data.tokenizer}, vocab {trainer.data.vocab_size}), {trainer.precision}, "
                       f"{info.world_size} process(es), device {info.device} -> {trainer.run_dir}"
                       + (f", resuming at step {trainer.step}" if resume else ""))
        result = trainer.fit()
        if info.is_main:
            _print_summary(result, trainer)
        return result
    finally:
        D.cleanup(info)


def _print_summary(result: TrainResult, trainer: Trainer) -> None:
    rate = trainer.tokens / max(trainer.elapsed, 1e-9)
    msg = (f"{result.stopped} at step {result.step}: {format_seconds(result.train_seconds)} in training steps "
           f"({rate:,.0f} tokens/s); this invocation took {format_seconds(result.wall_seconds)} with evaluation")
    if result.final_val_loss is not None:
        msg += f"; final val loss {_loss_text(result.final_val_loss, trainer.data)}"
    tqdm.write(msg + f"; run directory {trainer.run_dir}")
    if result.stopped == "interrupted":
        tqdm.write(f"resume with: attnlab train {trainer.run_dir} --resume")


def _is_regression(data) -> bool:
    return getattr(data, "kind", None) == "regression"


def _loss_text(val: float, data) -> str:
    """Cross-entropy in nats and bits per unit, or the squared error of a regression dataset."""
    if _is_regression(data):
        return f"{val:.4f} (mean squared error)"
    unit = data.tokenizer.unit
    return f"{val:.4f} nats/{unit} ({val / math.log(2):.3f} bits/{unit})"
