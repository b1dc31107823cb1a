"""Reading and writing Hugging Face checkpoint folders safely: no pickle code runs, writes are atomic
(:mod:`attnlab.core.io`).

A folder holds ``config.json`` and weights as ``model.safetensors`` (or sharded with
``model.safetensors.index.json``), or legacy ``pytorch_model.bin`` (or its index), which is read with
``torch.load(weights_only=True)``: a pickle that would construct anything but tensors and plain
containers is refused before any of its code runs.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.io import write_with

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX)


def check_folder(folder: str | os.PathLike) -> Path:
    """The folder as a ``Path``; raises ``ValueError`` if it does not exist or is not a directory."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {str(path)!r} does not exist (or is not a directory)")
    return path


def read_config(folder: Path) -> dict:
    """``config.json`` as a dict. Raises ``ValueError`` when it is missing or not valid JSON."""
    path = folder / CONFIG
    if not path.is_file():
        raise ValueError(
            f"{str(folder)!r} has no {CONFIG}; a Hugging Face checkpoint folder needs {CONFIG} plus weights "
            f"({' or '.join(WEIGHT_FILES)}). Files present: {sorted(p.name for p in folder.iterdir())}"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def read_weights(folder: Path) -> dict[str, Tensor]:
    """All tensors of the checkpoint, keyed by their Hugging Face names (safetensors preferred).

    Raises:
        ValueError: no weight file, a shard listed in an index is missing, or a ``.bin`` pickle holds
            anything but tensors (refused unexecuted).
    """
    if (folder / SAFETENSORS).is_file():
        return load_file(str(folder / SAFETENSORS))
    if (folder / SAFETENSORS_INDEX).is_file():
        return _read_sharded(folder, SAFETENSORS_INDEX, lambda p: load_file(str(p)))
    if (folder / BIN).is_file():
        return load_bin(folder / BIN)
    if (folder / BIN_INDEX).is_file():
        return _read_sharded(folder, BIN_INDEX, load_bin)
    raise ValueError(
        f"{str(folder)!r} has no weights: expected one of {list(WEIGHT_FILES)}. "
        f"Files present: {sorted(p.name for p in folder.iterdir())}"
    )


def _read_sharded(folder: Path, index_name: str, reader) -> dict[str, Tensor]:
    index = json.loads((folder / index_name).read_text(encoding="utf-8"))
    shards = sorted(set(index.get("weight_map", {}).values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if not shards or missing:
        raise ValueError(f"{folder / index_name} lists shards {missing or shards} that are not in the folder")
    out: dict[str, Tensor] = {}
    for shard in shards:
        out.update(reader(folder / shard))
    return out


def load_bin(path: Path) -> dict[str, Tensor]:
    """A ``pytorch_model.bin`` state dict via ``torch.load(weights_only=True)``; never executes pickled code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"refused to load {path}: it is not a plain tensor state dict ({first}). "
            "Only weights are read (torch.load with weights_only=True), so pickled code is never run; "
            "re-export the checkpoint as model.safetensors from a trusted environment"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def write_safetensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write a safetensors file atomically, with the ``format: pt`` metadata transformers expects."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata={"format": "pt"}))
