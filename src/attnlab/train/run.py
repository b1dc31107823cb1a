"""Use a finished (or interrupted) run directory: load its model and tokenizer, evaluate, generate.

Reading a run takes no lock; :func:`evaluate_run` writes ``eval.json`` and so holds the run's lock (:mod:`.lock`)
while it evaluates: it does not run while ``attnlab train`` writes into the same folder.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig, load_config
from ..core.io import write_json
from ..data.text import build_lm_data, sequential_batches
from ..data.text.tokenizers import Tokenizer, load_tokenizer
from ..infer.generate import generate
from ..models.registry import build_model
from ..objectives import get_objective
from .checkpoint import Checkpoint, latest_checkpoint, load_weights
from .distributed import resolve_device
from .lock import RunLock, RunLockedError
from .rundir import kept_tokenizer
from .run_tasks import check_tta_mode, evaluate_task_run, result_suffix, tta_refused
from .task_feeds import feed_for_config
from .precision import autocast, resolve_precision


@dataclass
class LoadedRun:
    """A trained model (eval mode) with its tokenizer, resolved config and the checkpoint it came from."""

    model: nn.Module
    tokenizer: Tokenizer
    config: RunConfig
    checkpoint: Checkpoint
    device: torch.device


def load_run(run_dir: str | Path, device: str = "auto") -> LoadedRun:
    """Rebuild the model of ``run_dir`` from ``config.yaml`` and load the newest checkpoint's weights.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint yet.
        CheckpointError: the newest checkpoint is corrupt or does not fit the config.
        ValueError: a seq2seq, masked-LM or suite dataset run (evaluate it with :func:`evaluate_run`).
    """
    run_dir = _require_run_dir(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if feed_for_config(cfg) is not None:
        raise ValueError(f"{run_dir} trained {cfg.model.name} with objective {cfg.objective.name} on "
                         f"{cfg.data.dataset!r}; `attnlab generate` continues the text of language-model runs: score "
                         f"this run with `attnlab eval {run_dir}`")
    tok = load_tokenizer(run_dir / "tokenizer.json")
    dev = resolve_device(device)
    model = build_model(cfg.model.name, cfg.model.to_model_config(tok.vocab_size)).to(dev)
    ckpt = latest_checkpoint(run_dir)
    load_weights(model, ckpt)
    model.eval()
    return LoadedRun(model=model, tokenizer=tok, config=cfg, checkpoint=ckpt, device=dev)


def _require_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); train one with `attnlab train`")
    return run_dir


def generate_text(run: LoadedRun, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = None, top_p: float | None = None, seed: int = 0, num_samples: int = 1) -> list[str]:
    """Sample ``num_samples`` continuations of ``prompt`` (returned without the prompt).

    Raises:
        ValueError: empty prompt, or characters the tokenizer does not know (message lists them).
    """
    if not prompt:
        raise ValueError("prompt is empty; give at least one character (e.g. --prompt $'\\n')")
    ids = torch.as_tensor(run.tokenizer.encode(prompt), dtype=torch.long, device=run.device)
    idx = ids[None].repeat(num_samples, 1)  # (num_samples, T)
    max_len = run.model.cfg.max_seq_len
    if idx.shape[1] > max_len:
        idx = idx[:, -max_len:]  # keep the most recent context the model can see
    gen = torch.Generator(device=run.device).manual_seed(seed)
    out = generate(run.model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    return [run.tokenizer.decode(row[idx.shape[1]:].tolist()) for row in out]


def evaluate_run(run_dir: str | Path, split: str = "val", batch_size: int | None = None,
                 max_batches: int | None = None, device: str = "auto", progress: bool = True,
                 save: bool = True, tta: str | None = None) -> dict:
    """Loss over a whole split in non-overlapping windows of ``data.seq_len`` (each token scored once); a run of a
    seq2seq, masked-LM or suite dataset is scored on its test split instead (:mod:`.run_tasks`: greedy decoding
    with exact match and character error rate for seq2seq, the objective's metrics otherwise).

    Returns ``{"split", "loss", "bits_per_<unit>", "tokens", ...}`` and, with ``save``, writes it to ``eval.json`` in
    the run directory, holding the run's lock meanwhile (``eval-train.json`` for the training split, and
    ``-first<N>`` before ``.json`` for the first ``max_batches`` batches only: see
    :func:`~attnlab.train.run_tasks.result_suffix`). ``split="train"`` of a suite dataset scores a classifier on its
    training split (other task runs refuse it). A run folder that cannot be written (read-only) still gives
    the result; a line on stderr says ``eval.json`` was not written. ``tta="flip"`` scores an image classifier on
    the mean class probabilities of each test image and its mirror image (test-time augmentation), written to
    ``eval-flip.json`` (and ``confusion_matrix-flip.png``) beside the plain evaluation.

    Raises:
        ValueError: ``split`` not ``val`` or ``train``; ``tta`` unknown or given for a run that is not an image
            classifier.
        FileNotFoundError: not a run directory, or no checkpoint yet.
        RunLockedError: ``save`` and another process writes into the run directory (``attnlab train``); the message
            names it (``save=False`` evaluates without writing, so without the lock).
    """
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    if tta is not None:
        check_tta_mode(tta)
    run_dir = _require_run_dir(run_dir)
    lock = _lock_for_writing(run_dir) if save else None
    try:
        cfg = load_config(run_dir / "config.yaml")
        if feed_for_config(cfg) is not None:  # seq2seq, masked LM or a suite dataset: scored on its own split
            result = evaluate_task_run(run_dir, cfg, batch_size, max_batches, device, progress, save=lock is not None,
                                       tta=tta, split=split)
        elif tta is not None:
            raise tta_refused(tta, f"trains a language model on {cfg.data.dataset!r}")
        else:
            result = _evaluate(run_dir, load_run(run_dir, device), split, batch_size, max_batches, progress)
        if max_batches is not None:
            result["max_batches"] = max_batches
        if lock is not None:  # another split, an augmented or a partial score goes next to the full one, not over it
            _write_eval(run_dir, result, f"eval{result_suffix(split, tta, max_batches)}.json")
        return result
    finally:
        if lock is not None:
            lock.release()


def _lock_for_writing(run_dir: Path) -> RunLock | None:
    """The run's lock, or ``None`` (with a line on stderr) when the folder cannot be written at all.

    Raises:
        RunLockedError: another process holds the lock.
    """
    try:
        return RunLock(run_dir).acquire()
    except RunLockedError:
        raise
    except OSError as e:
        _not_saved(run_dir, e)
        return None


def _write_eval(run_dir: Path, result: dict, name: str = "eval.json") -> None:
    try:
        write_json(run_dir / name, result)
    except OSError as e:
        _not_saved(run_dir, e, name)


def _not_saved(run_dir: Path, e: OSError, name: str = "eval.json") -> None:
    reason = f"{e.strerror}: {str(e.filename)!r}" if e.strerror and e.filename is not None else str(e)
    print(f"attnlab: cannot write {run_dir / name} ({reason}); the result is not saved", file=sys.stderr)


@torch.no_grad()
def _evaluate(run_dir: Path, run: LoadedRun, split: str, batch_size: int | None, max_batches: int | None,
              progress: bool) -> dict:
    d = run.config.data
    kept = kept_tokenizer(run_dir, d.tokenizer)  # a trained kind: the vocabulary the model has, not a new one
    data = build_lm_data(d.dataset, d.tokenizer if kept is None else str(kept), d.seq_len, d.val_fraction, d.split,
                         d.vocab_size)
    tokens = data.val if split == "val" else data.train
    step_fn = get_objective(run.config.objective.name)
    precision = resolve_precision(run.config.train.precision, run.device)
    bs = batch_size or d.batch_size
    n_windows = math.ceil((len(tokens) - 1) / d.seq_len)
    total = max_batches if max_batches is not None else math.ceil(n_windows / bs)
    loss_sum, count = 0.0, 0
    for i, batch in enumerate(tqdm(sequential_batches(tokens, d.seq_len, bs), total=total, desc=f"eval {split}",
                                   disable=not progress, dynamic_ncols=True)):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(run.device) for k, v in batch.items()}
        with autocast(precision, run.device):
            loss, _ = step_fn(run.model, batch)
        n = batch["targets"].numel()
        loss_sum += float(loss) * n
        count += n
    unit = run.tokenizer.unit
    mean = loss_sum / count
    return {"split": split, "loss": mean, f"bits_per_{unit}": mean / math.log(2), "tokens": count,
            "step": run.checkpoint.step, "precision": precision, "seq_len": d.seq_len}
