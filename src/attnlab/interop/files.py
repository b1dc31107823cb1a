"""Reading and writing Hugging Face checkpoint folders safely: no pickle code runs, writes are atomic
(:mod:`attnlab.core.io`).

A folder holds ``config.json`` and weights as ``model.safetensors`` (or sharded with
``model.safetensors.index.json``), or legacy ``pytorch_model.bin`` (or its index), which is read with
``torch.load(weights_only=True)``: a pickle that would construct anything but tensors and plain
containers is refused before any of its code runs. A shard index may only name files inside the folder, and a
truncated or corrupt file is a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.io import write_with

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX)


def check_folder(folder: str | os.PathLike) -> Path:
    """The folder as a ``Path``.

    Raises:
        TypeError: ``folder`` is not a path (``str`` or ``os.PathLike``).
        ValueError: it does not exist or is a file.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"the checkpoint folder must be a path (str or os.PathLike), got {type(folder).__name__}")
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint folder {str(path)!r} is a file; give the folder that holds {CONFIG} and the "
                         "weights")
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {str(path)!r} does not exist (or is not a directory)")
    return path


def read_config(folder: Path) -> dict:
    """``config.json`` as a dict. Raises ``ValueError`` when it is missing or not a JSON object in UTF-8."""
    path = folder / CONFIG
    if not path.is_file():
        raise ValueError(
            f"{str(folder)!r} has no {CONFIG}; a Hugging Face checkpoint folder needs {CONFIG} plus weights "
            f"({' or '.join(WEIGHT_FILES)}). Files present: {sorted(p.name for p in folder.iterdir())}"
        )
    return read_json(path)


def read_json(path: Path) -> dict:
    """A JSON object from a UTF-8 file.

    Raises:
        ValueError: the file is not UTF-8, not valid JSON, or holds something other than an object (names it).
    """
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); it is damaged: copy or export "
                         "it again") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def read_weights(folder: Path) -> dict[str, Tensor]:
    """All tensors of the checkpoint, keyed by their Hugging Face names (safetensors preferred).

    Raises:
        ValueError: no weight file, a shard listed in an index is missing or outside the folder, a truncated or
            corrupt safetensors file, or a ``.bin`` pickle holds anything but tensors (refused unexecuted).
    """
    if (folder / SAFETENSORS).is_file():
        return load_safetensors(folder / SAFETENSORS)
    if (folder / SAFETENSORS_INDEX).is_file():
        return _read_sharded(folder, SAFETENSORS_INDEX, load_safetensors)
    if (folder / BIN).is_file():
        return load_bin(folder / BIN)
    if (folder / BIN_INDEX).is_file():
        return _read_sharded(folder, BIN_INDEX, load_bin)
    raise ValueError(
        f"{str(folder)!r} has no weights: expected one of {list(WEIGHT_FILES)}. "
        f"Files present: {sorted(p.name for p in folder.iterdir())}"
    )


def _read_sharded(folder: Path, index_name: str, reader) -> dict[str, Tensor]:
    index_path = folder / index_name
    weight_map = read_json(index_path).get("weight_map", {})
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: weight_map must map tensor names to file names, got "
                         f"{type(weight_map).__name__}")
    shards = sorted({_shard_path(folder, index_path, name) for name in weight_map.values()})
    missing = [s for s in shards if not (folder / s).is_file()]
    if not shards or missing:
        raise ValueError(f"{index_path} lists shards {missing or shards} that are not in the folder")
    out: dict[str, Tensor] = {}
    for shard in shards:
        out.update(reader(folder / shard))
    return out


def _shard_path(folder: Path, index_path: Path, name) -> str:
    """``name`` when it is a file name inside ``folder``.

    The shard file itself may be a symbolic link (the Hugging Face cache links every snapshot file to a blob
    outside the snapshot folder), but the folders on its path must stay inside ``folder``.

    Raises:
        ValueError: ``name`` is not a string, is absolute, has a ``..`` part, or leads out of the folder
            through a linked folder.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{index_path}: weight_map values must be file names, got {name!r}")
    parts = Path(name).parts
    parent = (folder / name).parent.resolve()
    if Path(name).is_absolute() or ".." in parts or not parent.is_relative_to(folder.resolve()):
        raise ValueError(f"{index_path} names the weight file {name!r}, which is outside the checkpoint folder "
                         f"{str(folder)!r}; every shard must be a file inside the folder (no absolute path, '..' "
                         "or link leading out): copy the shard into the folder and list it by its file name")
    return name


def load_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of one safetensors file.

    Raises:
        ValueError: the file is empty, truncated or not safetensors (names the file).
    """
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt: copy or "
                         "export it again") from None


def check_finite(weights: dict[str, Tensor], source: Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged run or a damaged file would give NaN outputs).

    Raises:
        ValueError: naming the tensors that are not finite and how many values each holds.
    """
    bad = [(name, int((~torch.isfinite(t)).sum())) for name, t in weights.items()
           if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        listed = ", ".join(f"{name!r} ({n} of {weights[name].numel()} values)" for name, n in bad[:3])
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise ValueError(f"checkpoint {str(source)!r} holds NaN or infinite weights in {listed}{more}; the weights "
                         "are unusable (a diverged training run or a damaged file): load an earlier checkpoint or "
                         "export it again")


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


def read_checkpoint(path: str | os.PathLike, model_type: str) -> tuple[Path, dict, dict[str, Tensor]]:
    """``(folder, config.json, finite weights)`` of a Hugging Face folder that must hold ``model_type``.

    Raises:
        ValueError: missing folder/config/weights, another ``model_type``, non-finite weights (named).
    """
    folder = check_folder(path)
    hf = read_config(folder)
    if hf.get("model_type") != model_type:
        raise ValueError(f"{folder} holds a {hf.get('model_type')!r} model, not {model_type!r}")
    weights = read_weights(folder)
    check_finite(weights, folder)
    return folder, hf, weights


def copy_mapped(model: torch.nn.Module, names: dict[str, str], weights: dict[str, Tensor], copies: set[str],
                folder: Path, what: str, convert=None) -> None:
    """Fill every parameter of ``model`` from ``weights`` through ``names`` (ours -> theirs), strictly.

    ``copies``: checkpoint keys that duplicate mapped ones (tied tables), allowed and unused; ``convert(theirs_name,
    tensor)`` reshapes a checkpoint tensor into ours (e.g. dropping unused rows).

    Raises:
        ValueError: missing or unexpected tensors (``what``: the model named in the message), or a shape mismatch.
    """
    missing = sorted(h for h in names.values() if h not in weights)
    unexpected = sorted(set(weights) - set(names.values()) - copies)
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(folder)!r} does not match a {what} of its config: missing "
                         f"{missing[:8] or 'none'}; unexpected {unexpected[:8] or 'none'}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, h in names.items():
            theirs = weights[h] if convert is None else convert(h, weights[h])
            if params[name].shape != theirs.shape:
                raise ValueError(f"{folder}: {h} is {tuple(weights[h].shape)} but attnlab's {name} is "
                                 f"{tuple(params[name].shape)}")
            params[name].copy_(theirs)
