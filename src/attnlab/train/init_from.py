"""``model.init_from: RUN``: start a model from another run's newest checkpoint (pretrain, then fine-tune).

Every tensor of the new model whose name (ignoring the ``body.`` prefix a task head adds, and the ``encoder.`` prefix
of an SSAST pretraining run) and shape match a tensor of the checkpoint is copied; the rest (a new head) keeps its initialisation. The token embedding may differ in rows
only when the pretraining run read UTF-8 bytes (``data.tokenizer: byte``): ids 0-255 are the same bytes in every
byte-level dataset, so those rows are copied and the others (``[MASK]``, padding, ``[CLS]``) are initialised.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import load_config
from .checkpoint import latest_checkpoint

BYTE_IDS = 256
HEAD_PREFIXES = ("mlm_head.", "head.", "classifier.", "lm_head.")  # pretraining heads a fine-tune drops


def init_from_run(model: nn.Module, run_dir: str | Path, tokenizer_kind: str | None = None) -> dict:
    """Copy the matching tensors of ``run_dir``'s newest checkpoint into ``model`` (in place).

    Args:
        tokenizer_kind: ``data.tokenizer`` of the new run, checked against the pretraining run's: a text corpus
            must be read with the same tokenizer (``RUN/tokenizer.json``); ``None`` for a suite dataset.

    Returns:
        ``{"run", "step", "loaded": [names], "initialised": [names]}``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder or has no checkpoint.
        CheckpointError: the checkpoint is corrupt.
        ValueError: tensors with one name but other shapes (other than byte-level embedding rows), nothing to load,
            or a text corpus read with another tokenizer than the pretraining run's.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"model.init_from={str(run_dir)!r} is not a run folder (no config.yaml); give the "
                                "folder `attnlab train` wrote (its train.run_dir)")
    source_cfg = load_config(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir)
    weights = load_file(str(ckpt.path / "model.safetensors"))
    byte_level = source_cfg.data.tokenizer == "byte"
    if tokenizer_kind is not None and tokenizer_kind != source_cfg.data.tokenizer \
            and Path(tokenizer_kind).resolve() != (run_dir / "tokenizer.json").resolve():
        raise ValueError(f"model.init_from={str(run_dir)!r} was trained with data.tokenizer="
                         f"{source_cfg.data.tokenizer!r}, this run uses {tokenizer_kind!r}: the token ids would mean "
                         f"other tokens; set data.tokenizer={run_dir / 'tokenizer.json'}")
    loaded, initialised, clashes = _copy_matching(model, weights, byte_level)
    if clashes:
        raise ValueError(f"model.init_from={str(run_dir)!r} does not fit this model: {'; '.join(clashes[:5])}; use the "
                         "pretraining run's model settings (dim, layers, heads, mlp) for the body")
    if not loaded:
        raise ValueError(f"model.init_from={str(run_dir)!r}: no tensor of its checkpoint fits this model (was it "
                         f"trained with another model family than {type(model).__name__}?)")
    print(f"attnlab: initialised {len(loaded)} tensors from {ckpt.path} (step {ckpt.step}); "
          f"{len(initialised)} new: {', '.join(initialised[:6])}{' ...' if len(initialised) > 6 else ''}",
          file=sys.stderr)
    return {"run": str(run_dir), "step": ckpt.step, "loaded": loaded, "initialised": initialised}


@torch.no_grad()
def _copy_matching(model: nn.Module, weights: dict, byte_level: bool) -> tuple[list[str], list[str], list[str]]:
    """Copy tensors by name; returns (loaded names, initialised names, clash descriptions)."""
    loaded, initialised, clashes = [], [], []
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    for name, target in params.items():
        bare = name.removeprefix("body.")  # a task head's body, or an SSAST pretrainer's encoder
        source = weights.get(name, weights.get(bare, weights.get("encoder." + bare)))
        if source is None or any(name.startswith(p) for p in HEAD_PREFIXES):
            initialised.append(name)
        elif source.shape == target.shape:
            target.copy_(source.to(target.dtype))
            loaded.append(name)
        elif name.endswith("tok_emb.weight") and byte_level and source.shape[1:] == target.shape[1:] \
                and min(source.shape[0], target.shape[0]) >= BYTE_IDS:
            target[:BYTE_IDS].copy_(source[:BYTE_IDS].to(target.dtype))  # the byte rows; specials stay initialised
            loaded.append(name)
        else:
            clashes.append(f"{name} is {tuple(source.shape)} there but {tuple(target.shape)} here")
    return loaded, initialised, clashes
