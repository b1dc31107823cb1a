"""The run directory around a training run: one writer at a time, no leftovers, and what ``--resume`` and
``--overwrite`` do to it (:class:`~attnlab.train.trainer.Trainer` calls these from ``prepare``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..config import RunConfig
from ..data.text.subword import SUBWORD_KINDS
from ..data.text.tokenizers import save_tokenizer
from . import distributed as D
from .checkpoint import checkpoint_root, remove_unfinished_writes
from .fingerprint import stored_config
from .lock import RunLock, RunLockedError
from .logs import RUN_FILES


def check_flags(resume: bool, overwrite: bool, run_dir: str | Path) -> None:
    """Raises ``ValueError`` when ``resume`` and ``overwrite`` are both set (they contradict each other)."""
    if resume and overwrite:
        raise ValueError(f"--resume and --overwrite cannot be used together: --resume continues the run in {run_dir}, "
                         "--overwrite deletes it and starts again; pass only one of them")


def kept_tokenizer(run_dir: str | Path, kind: str) -> Path | None:
    """The run's ``tokenizer.json`` when ``kind`` (``data.tokenizer``) is trained (bpe, wordpiece, unigram, word):
    resuming or evaluating a run needs the vocabulary its model was trained with, and training again need not give it
    (WordPiece and Unigram training is not deterministic). ``None`` for char and byte tokenizers (rebuilt from the
    data, and on resume compared with the checkpoint's by :func:`~attnlab.train.fingerprint.check_resume`) or when
    the run has no such file yet."""
    path = Path(run_dir) / "tokenizer.json"
    return path if kind in SUBWORD_KINDS and path.is_file() else None


def lock_run_dir(run_dir: str | Path, info: D.DistInfo) -> RunLock | None:
    """Rank 0 takes the run directory's lock (creating the folder) and removes what writers killed mid-write left
    there; every rank learns whether that worked. Returns the lock on rank 0, ``None`` on the others.

    Raises (on every rank, so that none waits for a rank that gave up):
        RunLockedError: another process holds the lock.
        OSError: the folder cannot be created or written (rank 0's own error there).
    """
    lock, error = None, None
    if info.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            for path in remove_unfinished_writes(run_dir):
                print(f"attnlab: removed {path}, left by an interrupted write", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - raised again below, on every rank
            error = e
    if D.broadcast_flag(error is not None, info):
        if lock is not None:
            lock.release()
        raise error if error is not None else RunLockedError(
            f"rank 0 could not lock the run folder {str(run_dir)!r} (its message says why)")
    return lock


def clear_run(run_dir: str | Path) -> None:
    """What ``--overwrite`` deletes: the checkpoints and the logs (``config.yaml`` and ``tokenizer.json`` are then
    written again)."""
    shutil.rmtree(checkpoint_root(run_dir), ignore_errors=True)
    for name in RUN_FILES:
        if name not in ("config.yaml", "tokenizer.json"):
            (Path(run_dir) / name).unlink(missing_ok=True)
    for pattern in ("eval-*.json", "confusion_matrix*.png"):  # the other evaluations' files (run_tasks.result_suffix)
        for path in Path(run_dir).glob(pattern):
            path.unlink(missing_ok=True)


def write_run_files(run_dir: str | Path, cfg: RunConfig, tokenizer) -> None:
    """``config.yaml`` (without ``train.allow_changes``) and, for a text tokenizer, ``tokenizer.json``."""
    stored_config(cfg).save(Path(run_dir) / "config.yaml")
    if hasattr(tokenizer, "to_dict"):  # suite datasets' token ids have no file
        save_tokenizer(tokenizer, Path(run_dir) / "tokenizer.json")
