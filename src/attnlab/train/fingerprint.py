"""What a checkpoint was trained with, and the check that a resume still trains the same run.

Every checkpoint's ``state.json`` holds a ``fingerprint``: the whole resolved config (``model.vocab_size`` filled
in, ``train.allow_changes`` left out) and the SHA-256 of the tokenizer (its JSON with sorted keys). A resume
(:func:`check_resume`) compares the config it is given, and the tokenizer its data builds, against the
fingerprint of the checkpoint it continues — not against the run's ``config.yaml``, which anyone may have edited.
Keys in :data:`~attnlab.config.RESUMABLE_CHANGES` may always differ, keys of
:data:`~attnlab.config.CHANGES_ON_REQUEST` when ``train.allow_changes`` names them; any other difference, or
another tokenizer, is refused with the list of changes. Checkpoints written before fingerprints existed are
compared with ``config.yaml`` and ``tokenizer.json``, with a note.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ..config import CHANGES_ON_REQUEST, RESUMABLE_CHANGES, RunConfig, load_config
from .checkpoint import Checkpoint

ALWAYS = frozenset({f"train.{k}" for k in RESUMABLE_CHANGES} | {"train.allow_changes"})


def stored_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a run records it (``config.yaml``, fingerprints): without ``train.allow_changes``, which applies
    only to the resume it is given for."""
    out = cfg.model_copy(deep=True)
    out.train.allow_changes = []
    return out


def tokenizer_digest(tokenizer) -> str | None:
    """SHA-256 of a text tokenizer's JSON form (sorted keys); ``None`` for data without a tokenizer file."""
    if not hasattr(tokenizer, "to_dict"):
        return None
    return _digest(tokenizer.to_dict())


def _digest(tokenizer_dict: dict) -> str:
    text = json.dumps(tokenizer_dict, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def absolute_data_paths(cfg: dict) -> dict:
    """A config dict (``model_dump`` form) whose data paths are absolute: ``data.dataset`` when it names an existing
    file (a text or CSV file) and ``data.options.path`` (``image_folder``, ``audio_folder``), so that ``attnlab eval``
    and ``viz`` find the data from any folder. A name (``kjv``, ``digits``) or a path that does not exist stays."""
    data = dict(cfg.get("data") or {})
    if isinstance(data.get("dataset"), str) and Path(data["dataset"]).expanduser().is_file() \
            and not _registered(data["dataset"]):
        data["dataset"] = os.path.abspath(Path(data["dataset"]).expanduser())
    options = dict(data.get("options") or {})
    if isinstance(options.get("path"), str) and options["path"] and Path(options["path"]).expanduser().exists():
        options["path"] = os.path.abspath(Path(options["path"]).expanduser())
        data["options"] = options
    return {**cfg, "data": data}


def _registered(name: str) -> bool:
    """A dataset name the loaders take before a file of that name (embedded text, suite datasets, series)."""
    from ..data.registry import list_datasets
    from ..data.series import EMBEDDED_SERIES
    from ..data.sources import list_sources

    return name in {*list_datasets(), *list_sources(), *EMBEDDED_SERIES}


def fingerprint(cfg: RunConfig, tokenizer) -> dict:
    """``{"config": the resolved config as JSON, "tokenizer_sha256": ...}`` for a checkpoint's ``state.json``."""
    return {"config": stored_config(cfg).model_dump(mode="json"), "tokenizer_sha256": tokenizer_digest(tokenizer)}


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """``{"section.key": (old value, new value)}`` for every key whose value differs (keys only one side has — a
    config key added or removed since — are not compared)."""
    changes = {}
    for section, values in new.items():
        before = old.get(section)
        if not isinstance(values, dict) or not isinstance(before, dict):
            continue
        for key, value in values.items():
            if key in before and before[key] != value:
                changes[f"{section}.{key}"] = (before[key], value)
    return changes


def check_resume(ckpt: Checkpoint, cfg: RunConfig, tokenizer, run_dir: str | Path, note: bool = True) -> None:
    """Refuse to resume ``ckpt`` with a config or tokenizer it was not trained with.

    Args:
        cfg: the resolved config of the resume (``model.vocab_size`` filled in).
        tokenizer: the tokenizer built from ``cfg.data`` (anything without ``to_dict`` is not compared).
        note: print a line on stderr when an older checkpoint without a fingerprint is compared with ``config.yaml``.

    Raises:
        ValueError: keys differ that may not (the message lists each as ``key old -> new`` and says how to go on),
            or the tokenizer differs.
        FileNotFoundError: a checkpoint without a fingerprint and a run folder without ``config.yaml``.
    """
    run_dir = Path(run_dir)
    stored = ckpt.state.get("fingerprint")
    if stored is None:
        if note:
            print(f"attnlab: note: checkpoint {ckpt.path} records no config (an older attnlab wrote it); comparing "
                  f"with {run_dir / 'config.yaml'} and {run_dir / 'tokenizer.json'} as they are now", file=sys.stderr)
        stored = {"config": load_config(run_dir / "config.yaml").model_dump(mode="json"),
                  "tokenizer_sha256": _file_digest(run_dir / "tokenizer.json")}
    allowed = ALWAYS | set(cfg.train.allow_changes)
    # a run written before data paths were stored absolute: its relative paths, read from here, are the same data
    old, new = absolute_data_paths(stored["config"]), absolute_data_paths(cfg.model_dump(mode="json"))
    changes = {k: v for k, v in config_changes(old, new).items() if k not in allowed}
    if changes:
        raise ValueError(_changes_message(changes, ckpt, run_dir))
    digest = tokenizer_digest(tokenizer)
    if digest is not None and stored.get("tokenizer_sha256") not in (None, digest):
        raise ValueError(
            f"cannot resume {run_dir}: the tokenizer built from data.dataset={cfg.data.dataset!r} "
            f"(data.tokenizer={cfg.data.tokenizer!r}) differs from the one checkpoint {ckpt.path.name} was trained "
            f"with (its vocabulary no longer fits the model); train on the same data and tokenizer, or start a new "
            "train.run_dir")


def _file_digest(path: Path) -> str | None:
    """Digest of a saved ``tokenizer.json`` (``None`` when there is none or it is not JSON: nothing to compare)."""
    try:
        return _digest(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _changes_message(changes: dict[str, tuple], ckpt: Checkpoint, run_dir: Path) -> str:
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
    fixed = [k for k in changes if k not in CHANGES_ON_REQUEST]
    head = (f"cannot resume {run_dir}: the config differs from the one checkpoint {ckpt.path.name} was trained with: "
            f"{listed}")
    if fixed:
        return (f"{head}; {', '.join(fixed)} cannot change in a resumed run: undo the change (in the command line or "
                f"{run_dir / 'config.yaml'}), or start a new train.run_dir")
    keys = ",".join(changes)
    return (f"{head}; undo the change, or keep the new value{'s' if len(changes) > 1 else ''} with "
            f"'train.allow_changes=[{keys}]' (e.g. `attnlab train {run_dir} --resume 'train.allow_changes=[{keys}]'`)")
