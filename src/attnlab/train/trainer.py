"""The training loop: one explicit loop for one process or a ``torchrun`` job.

AdamW with decay groups, linear warmup + cosine decay, gradient accumulation and clipping, bf16
autocast, periodic evaluation, optional early stopping, atomic checkpoints with bit-exact resume,
Ctrl-C = save and stop. Rank 0 writes ``config.yaml``, ``tokenizer.json``, ``metrics.jsonl``,
checkpoints, ``summary.json`` and ``loss_curve.png`` into ``train.run_dir``, holding the folder's lock
(:mod:`.lock`) from :meth:`Trainer.prepare` until the run ends. A resume continues only the run its checkpoint
recorded (:mod:`.fingerprint`).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm

from ..attention.base import pop_aux_loss
from ..config import RESUMABLE_CHANGES, RunConfig  # noqa: F401  (RESUMABLE_CHANGES: re-exported)
from ..data.text import WindowSampler, eval_batches
from ..objectives import objective_step
from . import distributed as D
from .build import build_for_config, step_options
from .init_from import init_from_run
from .task_feeds import feed_for_config
from .checkpoint import (capture_rng, latest_checkpoint, list_checkpoints, load_training_state,
                         load_weights, restore_rng, save_checkpoint, write_failure)
from .fingerprint import absolute_data_paths, check_resume, fingerprint
from .evaluation import confusion_counts, evaluate_batches, plot_final_confusion
from .logs import (MetricsLog, TrainingDiverged, TrainResult, opening_line, print_summary, rate_unit,
                   truncate_metrics, write_summary)
from .logs import is_regression as _is_regression, loss_text as _loss_text  # the names tests import from here
from .memory import retain_freed_memory
from .optim import WarmupCosine, build_optimizer
from .precision import autocast, resolve_precision
from .rundir import check_flags, clear_run, kept_tokenizer, lock_run_dir, write_run_files
from .signals import Abort, install_stop_handlers, restore_handlers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Holds the pieces of one run; :meth:`fit` is the loop. Use :func:`train` rather than this class."""

    def __init__(self, cfg: RunConfig, info: D.DistInfo, progress: bool = True,
                 on_step: Callable[[int, dict], None] | None = None, feed=None, tokenizer_file: Path | None = None,
                 build: Callable | None = None, step_fn: Callable | None = None):
        """``build(cfg, device, feed, tokenizer_file) -> (data, model, resolved cfg)`` replaces
        :func:`~attnlab.train.build.build_for_config` and ``step_fn(model, batch) -> (loss, metrics)`` the objective's
        step (``attnlab distill`` trains a student with its teacher's losses this way); the model is built after the
        run's seed is set either way."""
        self.info, self.progress, self.on_step = info, progress, on_step
        t = cfg.train
        seed_everything(t.seed)
        self.data, model, self.cfg = (build or build_for_config)(cfg, info.device, feed, tokenizer_file)
        self.feed_kind = getattr(self.data, "kind", "lm")
        self.raw_model = model
        self.model = D.wrap_model(model, info)
        self.step_fn = step_fn or objective_step(self.cfg.objective.name, **step_options(self.cfg.objective))
        self.precision = resolve_precision(t.precision, info.device)
        if t.retain_memory and info.device.type == "cpu":
            retain_freed_memory()  # no page faults on every step's fresh activations (attnlab.train.memory)
        self.optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2))
        self.scheduler = WarmupCosine(self.optimizer, t.lr, t.warmup_steps, t.steps, t.min_lr_ratio)
        d = self.cfg.data  # resolved: a feed's own sequence length
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
        self.val_metrics: dict[str, float] = {}
        self.tokens_per_step = d.batch_size * d.seq_len * t.grad_accum * info.world_size
        self.rate_key = "ex_s" if rate_unit(self.data) == "examples" else "tok_s"  # the progress bar's speed
        self.stop_requested = False
        self.mid_step = False  # True while a step is half done (a checkpoint now would not be consistent)
        self.lock = None  # the run directory's lock (rank 0, from prepare until fit ends)

    # ------------------------------------------------------------ run directory
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Lock the run directory (rank 0; held until :meth:`fit` ends or :meth:`close`), check it (all ranks),
        clean or restore it, then write config and tokenizer (rank 0).

        Raises:
            ValueError: ``resume`` and ``overwrite`` together; a resume whose config or tokenizer differs from what
                its checkpoint was trained with (:func:`~attnlab.train.fingerprint.check_resume`).
            RunLockedError: another process is writing into the run directory.
            FileExistsError: the directory holds a run and neither flag is set.
            FileNotFoundError / CheckpointError: nothing (intact) to resume from.
        """
        check_flags(resume, overwrite, self.run_dir)
        if resume and not list_checkpoints(self.run_dir):
            latest_checkpoint(self.run_dir)  # raises: nothing to resume (before the lock creates the folder)
        self.lock = lock_run_dir(self.run_dir, self.info)
        try:
            self._prepare_locked(resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _prepare_locked(self, resume: bool, overwrite: bool) -> None:
        existing = list_checkpoints(self.run_dir) or (self.run_dir / "metrics.jsonl").exists()
        if resume:
            ckpt = latest_checkpoint(self.run_dir)  # raises for a missing or corrupt checkpoint
            check_resume(ckpt, self.cfg, self.data.tokenizer, self.run_dir, note=self.info.is_main)
            self.restore(ckpt)
        elif existing and not overwrite:
            raise FileExistsError(f"run directory {self.run_dir} already holds a run; pass --resume to continue it, "
                                  "--overwrite to start again, or set train.run_dir=... for a new one")
        elif self.cfg.model.init_from is not None:
            init_from_run(self.raw_model, self.cfg.model.init_from, self.cfg.data.tokenizer if self.feed_kind in
                          ("lm", "mlm") else None)
        D.barrier(self.info)
        if self.info.is_main:
            if overwrite:
                clear_run(self.run_dir)
            write_run_files(self.run_dir, self.cfg, self.data.tokenizer)  # on resume: the checked tokenizer
            if resume:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        D.barrier(self.info)

    def close(self) -> None:
        """Let go of the run directory's lock and of the DDP wrapper, whose reducer holds the process group
        (idempotent; :meth:`fit` calls it when the run ends; ``raw_model`` stays)."""
        if self.lock is not None:
            self.lock.release()
        self.model = self.raw_model

    # ------------------------------------------------------------ checkpoints
    def restore(self, ckpt) -> None:
        load_weights(self.raw_model, ckpt)
        rng_tensors, state = load_training_state(ckpt, self.optimizer)
        restore_rng(rng_tensors, state["rng"], self.info.rank)
        t = self.cfg.train
        for group in self.optimizer.param_groups:  # values train.allow_changes may have changed since the checkpoint
            group["betas"] = (t.beta1, t.beta2)
            if group.get("name") == "decay":
                group["weight_decay"] = t.weight_decay
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        tr = state["trainer"]
        self.step, self.elapsed, self.tokens = ckpt.step, tr["elapsed"], tr["tokens"]
        self.best_val = math.inf if tr["best_val"] is None else tr["best_val"]
        self.bad_evals, self.last_val = tr["bad_evals"], tr["last_val"]

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank contributes its RNG state; rank 0 writes).

        Raises:
            CheckpointWriteError: the checkpoint could not be written (on every rank; the message says where, why
                and which checkpoint is the newest intact one, which is kept).
        """
        cpu_state = torch.get_rng_state()
        states = [s.cpu() for s in D.all_gather_tensor(cpu_state.to(self.info.device), self.info)]
        rng_tensors, rng_json = capture_rng(states)
        path, error = None, None
        if self.info.is_main:
            state = {"rng": rng_json, "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                     "trainer": {"elapsed": self.elapsed, "tokens": self.tokens,
                                 "best_val": None if math.isinf(self.best_val) else self.best_val,
                                 "bad_evals": self.bad_evals, "last_val": self.last_val},
                     "fingerprint": fingerprint(self.cfg, self.data.tokenizer)}
            try:
                path = save_checkpoint(self.run_dir, self.step, self.raw_model, self.optimizer, state, rng_tensors,
                                       keep=self.cfg.train.keep_checkpoints)
            except (OSError, SafetensorError) as e:
                error = write_failure(self.run_dir, self.step, e)
        if D.broadcast_flag(error is not None, self.info):  # also the barrier after the write
            raise error if error is not None else write_failure(self.run_dir, self.step, OSError("rank 0 failed"))
        return path

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches, averaged over ranks (the plain cross-entropy the step reports
        as its ``loss`` metric, unsmoothed); the means of the step's accuracy metrics go to ``self.val_metrics``."""
        loss, self.val_metrics = evaluate_batches(self.step_fn, self.raw_model, self.val, self.precision, self.info)
        return loss

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
        """Train to ``train.steps`` (or a stop), save the last checkpoint, write the summary, then let go of the run
        directory's lock.

        Raises:
            TrainingDiverged: the loss became NaN/inf.
            CheckpointWriteError: a checkpoint could not be written (the newest intact one is kept).
            KeyboardInterrupt: a second Ctrl-C, or one in the middle of a step (nothing is saved).
        """
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
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
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", **{self.rate_key: f"{row['tokens_per_s']:.0f}"},
                        refresh=False)
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
        row.update({f"val_{k}": v for k, v in self.val_metrics.items()})
        if not _is_regression(self.data):
            row[f"val_bits_per_{self.data.tokenizer.unit}"] = val / math.log(2)
        if self.info.is_main:
            extra = "".join(f", {k} {v:.4f}" for k, v in self.val_metrics.items())
            bar.write(f"step {self.step:>6}: val_loss {_loss_text(val, self.data)}{extra}")

    def _finish(self, result: TrainResult) -> TrainResult:
        path = self.save()
        result.step, result.train_seconds = self.step, self.elapsed
        result.final_val_loss = self.last_val
        result.best_val_loss = None if math.isinf(self.best_val) else self.best_val
        classifier = self.feed_kind == "classify" and self.cfg.objective.name == "classify"  # the same on every rank
        counts = (confusion_counts(self.raw_model, self.val, self.precision, self.info,  # every rank, before rank 0
                                   self.data.dataset.num_classes) if classifier else None)  # writes anything
        if self.info.is_main:
            write_summary(self, result, path)
            if counts is not None:
                plot_final_confusion(counts, self.data.dataset, self.step, self.run_dir / "confusion_matrix.png")
        return result


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
          on_step: Callable[[int, dict], None] | None = None, feed=None) -> TrainResult:
    """Train ``cfg`` (under ``torchrun`` this joins the process group and trains with DDP).

    The run directory is locked for the whole call (:mod:`attnlab.train.lock`): one writer at a time.

    Args:
        resume: continue from the newest checkpoint in ``train.run_dir`` (bit-exact: same losses as an
            uninterrupted run). The config and tokenizer must be the ones that checkpoint was trained with, except
            :data:`RESUMABLE_CHANGES` and the keys ``train.allow_changes`` names.
        overwrite: start afresh in a ``run_dir`` that already holds a run (its checkpoints and logs are deleted).
        progress: show the tqdm bar (rank 0).
        on_step: called as ``on_step(step, row)`` after every optimizer step (raising KeyboardInterrupt there
            stops the run like Ctrl-C: a checkpoint is saved).
        feed: train on a dataset of the comparison suite (:class:`~attnlab.train.feeds.DatasetFeed`) or an
            already tokenized corpus (:class:`~attnlab.train.feeds.CorpusFeed`) instead of the text corpus
            of ``cfg.data``.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together; inconsistent settings (message names the keys); a resume
            whose config or tokenizer differs from its checkpoint's (message lists the changes); partial or
            inconsistent distributed variables (``DistEnvError``).
        RunLockedError: another process writes into ``run_dir`` (a ``FileExistsError``; message names it).
        FileExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError / CheckpointError: nothing (intact) to resume from.
        CheckpointWriteError: a checkpoint could not be written (an ``OSError``; the newest intact one is kept).
        PeersTimeout: the other processes of a distributed job did not join in time.
        TrainingDiverged: the loss became NaN/inf (message has the step and what to change).
    """
    check_flags(resume, overwrite, cfg.train.run_dir)
    data = absolute_data_paths({"data": cfg.data.model_dump()})["data"]  # stored so: eval, viz work from anywhere
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={k: data[k] for k in ("dataset", "options")})})
    info = D.init_distributed(cfg.train.device)
    trainer = None
    try:
        kept = kept_tokenizer(cfg.train.run_dir, cfg.data.tokenizer) if resume and feed is None else None
        feed = feed if feed is not None else feed_for_config(cfg, kept)  # seq2seq, mlm, a suite dataset
        trainer = Trainer(cfg, info, progress=progress, on_step=on_step, feed=feed, tokenizer_file=kept)
        trainer.prepare(resume=resume, overwrite=overwrite)
        if info.is_main:
            n = sum(p.numel() for p in trainer.raw_model.parameters())
            tqdm.write(opening_line(cfg, trainer, n, resume))
        result = trainer.fit()
        if info.is_main:
            print_summary(result, trainer)
            if trainer.cfg.objective.name in ("forecast", "irregular"):  # scored on the test split right away
                from .forecast_feed import write_test_report

                write_test_report(trainer.raw_model, feed, trainer.run_dir, info.device)
        return result
    finally:
        if trainer is not None:
            trainer.close()
        D.cleanup(info)

