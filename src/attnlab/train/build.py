"""What a run is built from: data, model (with a head for classify/regression data) and the resolved config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..data.text import LMData, build_lm_data
from ..models.registry import build_model


def build_for_config(cfg: RunConfig, device: torch.device, feed=None,
                     tokenizer_file: str | Path | None = None) -> tuple[LMData, nn.Module, RunConfig]:
    """Data, model (on ``device``) and the resolved config (``model.vocab_size`` filled in from the tokenizer).

    ``tokenizer_file`` (a ``tokenizer.json``) replaces training the tokenizer ``data.tokenizer`` names: a resumed run
    keeps the tokenizer its model was trained with (the resolved config still says ``data.tokenizer``).

    ``feed`` (a :mod:`~attnlab.train.feeds` object) replaces the text corpus of ``cfg.data``; for a dataset of
    kind ``classify`` or ``regression`` the model of ``cfg.model`` is wrapped in that dataset's head
    (:func:`~attnlab.models.heads.wrap_for_dataset`) and ``objective.name`` of the resolved config is the kind.

    Raises:
        ValueError: ``data.seq_len > model.max_seq_len``, a non-causal model for the ``lm`` objective, or for a
            classify/regression dataset an ``objective.name`` other than ``lm`` (the default) or the dataset's kind.
        CapabilityError: the attention kernel cannot run this model or head.
    """
    d = cfg.data
    tok = d.tokenizer if tokenizer_file is None else str(tokenizer_file)
    data = feed if feed is not None else build_lm_data(d.dataset, tok, d.seq_len, d.val_fraction, d.split, d.vocab_size)
    kind = getattr(data, "kind", "lm")  # a suite dataset of kind classify/regression decides its own objective
    objective = cfg.objective.name
    if kind != "lm" and objective not in ("lm", kind):
        raise ValueError(f"objective.name={objective!r} does not fit the dataset of kind {kind!r}; "
                         f"remove objective.name or set it to {kind!r}")
    # regression inputs are vectors: the body gets a 1-row token table that its head replaces
    mcfg = cfg.model.to_model_config(data.vocab_size if data.vocab_size is not None else 1)
    if d.seq_len > mcfg.max_seq_len:
        raise ValueError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={mcfg.max_seq_len}; "
                         "lower data.seq_len or raise model.max_seq_len")
    model = build_model(cfg.model.name, mcfg)
    if kind != "lm":
        from ..models.heads import wrap_for_dataset

        model = wrap_for_dataset(model, data.dataset)
    model = model.to(device)
    if objective == "lm" and kind == "lm" and not getattr(model, "causal", False):
        raise ValueError(f"objective lm needs a causal decoder, but model.name={cfg.model.name!r} is not one; "
                         "use a gpt preset (`attnlab list models`)")
    resolved = cfg.model_copy(deep=True)
    resolved.model = cfg.model.model_copy(update={"vocab_size": mcfg.vocab_size})
    if kind != "lm":
        resolved.objective = cfg.objective.model_copy(update={"name": kind})
    return data, model, resolved
