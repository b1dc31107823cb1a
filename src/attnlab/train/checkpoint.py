"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

Layout of one checkpoint (``RUN_DIR/checkpoints/step-0000500/``)::

    model.safetensors      weights (tied tensors stored once)
    optimizer.safetensors  AdamW state tensors, keyed "<param index>.<name>"
    rng.safetensors        torch CPU (per rank) and CUDA generator states
    state.json             step, optimizer param groups, scheduler, sampler position, python/numpy RNG,
                           trainer counters, and the size + SHA-256 of every file above

The directory is assembled under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint under a real name and never touches an older one; what a killed writer leaves
(``checkpoints/.tmp-step-*``) is removed by :func:`remove_unfinished_writes` when the run starts again. Loading
verifies sizes and hashes first: a truncated or corrupt checkpoint is a clear :class:`CheckpointError`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ..core.io import unfinished_writes, write_text, write_with

FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{7,})$")
TMP_PREFIX = ".tmp-"  # a checkpoint being written: ".tmp-step-0000500-<pid>"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or does not fit the model."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (read-only folder, full disk, ...); the message says where, why and which
    checkpoint is the newest intact one. ``errno`` is the file system's error number when there is one."""


@dataclass
class Checkpoint:
    """A verified checkpoint on disk: ``path``, ``step`` and the JSON ``state``."""

    path: Path
    step: int
    state: dict


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_unfinished_writes(run_dir: str | Path) -> list[Path]:
    """Delete what writers killed mid-write left in a run: checkpoint folders still under their temporary name
    (``checkpoints/.tmp-step-*``) and the temporary files of atomic writes in the run folder. Call it only while
    holding the run's lock (:mod:`.lock`): a live writer's temporaries look the same. Returns what was removed.
    """
    root = checkpoint_root(run_dir)
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(TMP_PREFIX)) if root.is_dir() else []
    found += unfinished_writes(run_dir)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def capture_rng(rank_states: list[torch.Tensor] | None = None) -> tuple[dict, dict]:
    """(tensors, json) of the torch, CUDA, numpy and python RNG states.

    ``rank_states`` are the torch CPU states of every rank (distributed runs); default: this process.
    """
    cpu = rank_states if rank_states is not None else [torch.get_rng_state()]
    tensors = {f"torch_cpu.rank{r}": s.clone() for r, s in enumerate(cpu)}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s.clone()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    js = {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
          "python": [py_version, list(py_state), py_gauss]}
    return tensors, js


def restore_rng(tensors: dict, js: dict, rank: int = 0) -> None:
    """Inverse of :func:`capture_rng` for process ``rank`` (falls back to rank 0's state)."""
    key = f"torch_cpu.rank{rank}" if f"torch_cpu.rank{rank}" in tensors else "torch_cpu.rank0"
    torch.set_rng_state(tensors[key])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    name, keys, pos, has_gauss, gauss = js["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = js["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into tensors (``"<idx>.<name>"``) and JSON (param groups, scalars)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict, js: dict) -> None:
    state: dict = {}
    for key, value in list(tensors.items()) + list(js["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in js["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, rng_tensors: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep``.

    Args:
        state: JSON-serialisable trainer state (scheduler, sampler, rng json, counters).
        rng_tensors: tensors from :func:`capture_rng`.

    Returns the checkpoint directory. An existing, intact checkpoint of the same step is kept as is.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        opt_tensors, opt_json = optimizer_to_files(optimizer)
        # each file is complete, flushed and has the umask's mode before the directory is renamed into place
        write_with(tmp / "model.safetensors", lambda p: save_model(model, str(p)))
        write_with(tmp / "optimizer.safetensors", lambda p: save_file(opt_tensors, str(p)))
        write_with(tmp / "rng.safetensors", lambda p: save_file(rng_tensors, str(p)))
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                 for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors")}
        meta = {"format": FORMAT, "step": step, "files": files, "optimizer": opt_json, **state}
        write_text(tmp / "state.json", json.dumps(meta))
        if final.exists():
            try:
                verify_checkpoint(final)
                shutil.rmtree(tmp)  # an intact checkpoint of this step already exists: keep it
                return final
            except CheckpointError:
                final.rename(root / f".corrupt-{final.name}-{os.getpid()}")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    verify_checkpoint(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_failure(run_dir: str | Path, step: int, error: Exception) -> CheckpointWriteError:
    """The one-line error for checkpoint ``step`` that could not be written because of ``error`` (an ``OSError`` or a
    ``SafetensorError``): where, why, the newest intact checkpoint and what to do."""
    final = checkpoint_root(run_dir) / f"step-{step:07d}"
    if isinstance(error, OSError) and error.strerror:
        reason, number = error.strerror + (f": {str(error.filename)!r}" if error.filename else ""), error.errno
    else:  # safetensors reports the file system's error as text: "... I/O error: File too large (os error 27)"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        found = re.search(r"os error (\d+)", reason)
        number = int(found.group(1)) if found else None
    fix = {errno.EACCES: "make the run folder writable", errno.EPERM: "make the run folder writable",
           errno.EROFS: "make the file system writable", errno.ENOSPC: "free some space",
           errno.EDQUOT: "free some space", errno.EFBIG: "free some space or raise the file size limit"
           }.get(number, "fix the cause")
    intact = list_checkpoints(run_dir)
    then = (f"the newest intact checkpoint is {intact[-1]}: {fix}, then continue with `attnlab train {run_dir} --resume`"
            if intact else f"no checkpoint was written before: {fix}, then start again with --overwrite")
    err = CheckpointWriteError(f"cannot write checkpoint {final} ({reason}); training stopped at step {step} and {then}")
    err.errno = number
    return err


def verify_checkpoint(path: str | Path) -> Checkpoint:
    """Check ``state.json`` and the size and SHA-256 of every file.

    Raises:
        CheckpointError: missing files, unreadable ``state.json``, wrong size (truncated) or hash (corrupt).
    """
    path = Path(path)
    meta_path = path / "state.json"
    hint = _previous_hint(path)
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: state.json is missing.{hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        files = meta["files"]
        step = int(meta["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: state.json cannot be read ({e}).{hint}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')}, this attnlab reads format {FORMAT}")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing.{hint}")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {name} has {size} bytes, "
                                  f"expected {info['bytes']}.{hint}")
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: the SHA-256 of {name} does not match.{hint}")
    return Checkpoint(path=path, step=step, state=meta)


def _previous_hint(path: Path) -> str:
    older = [p for p in list_checkpoints(path.parent.parent) if p.name < path.name]
    if older:
        return (f" The previous checkpoint {older[-1].name} is still there: delete {path} to resume from it.")
    return " Delete it and start the run again."


def latest_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest checkpoint of a run, verified.

    Raises:
        FileNotFoundError: the run has no checkpoint.
        CheckpointError: the newest checkpoint is truncated or corrupt (it is never skipped silently).
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_root(run_dir)}; train first (`attnlab train ...`)")
    return verify_checkpoint(found[-1])


def load_weights(model: nn.Module, ckpt: Checkpoint, strict: bool = True) -> None:
    """Load the checkpoint's weights into ``model``; raises :class:`CheckpointError` on missing/unexpected keys."""
    try:
        missing, unexpected = load_model(model, str(ckpt.path / "model.safetensors"), strict=False,
                                         device=str(next(model.parameters()).device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot load weights from {ckpt.path}: {e}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit the model: missing {sorted(missing)[:10]}, "
                              f"unexpected {sorted(unexpected)[:10]}; was it trained with a different model config?")


def load_training_state(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore the optimizer; return (rng tensors, full JSON state) for the caller to apply."""
    try:
        opt_tensors = load_file(str(ckpt.path / "optimizer.safetensors"))
        rng_tensors = load_file(str(ckpt.path / "rng.safetensors"))
        optimizer_from_files(optimizer, opt_tensors, ckpt.state["optimizer"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot restore the optimizer from {ckpt.path}: {e}") from None
    return rng_tensors, ckpt.state
