"""What a run is built from: data, model (with a task head for classify/regression data) and the resolved config."""

from __future__ import annotations

import torch
from torch import nn

from ..config import RunConfig
from ..data.text import LMData, build_lm_data
from ..models.registry import build_model


def build_for_config(cfg: RunConfig, device: torch.device, task_data=None) -> tuple[LMData, nn.Module, RunConfig]:
    """Data, model (on ``device``) and the resolved config (``model.vocab_size`` filled in from the tokenizer).

    ``task_data`` (a :class:`~attnlab.train.task_data.TaskData`) replaces the text corpus of ``cfg.data``; for a
    ``classify`` or ``regression`` task the model of ``cfg.model`` is wrapped in that task's head
    (:func:`~attnlab.models.heads.wrap_for_task`) and ``task.name`` of the resolved config is the kind.

    Raises:
        ValueError: ``data.seq_len > model.max_seq_len``, a non-causal model for the ``lm`` task, or for a
            classify/regression task a ``task.name`` other than ``lm`` (the default) or the task's kind.
        CapabilityError: the attention kernel cannot run this model or task head.
    """
    d = cfg.data
    data = task_data if task_data is not None else build_lm_data(d.dataset, d.tokenizer, d.seq_len, d.val_fraction,
                                                                 d.split)
    kind = getattr(data, "kind", "lm")  # a suite task of kind classify/regression decides its own step
    if kind != "lm" and cfg.task.name not in ("lm", kind):
        raise ValueError(f"task.name={cfg.task.name!r} does not fit the task data of kind {kind!r}; "
                         f"remove task.name or set it to {kind!r}")
    # regression inputs are vectors: the body gets a 1-row token table that its head replaces
    mcfg = cfg.model.to_model_config(data.vocab_size if data.vocab_size is not None else 1)
    if d.seq_len > mcfg.max_seq_len:
        raise ValueError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={mcfg.max_seq_len}; "
                         "lower data.seq_len or raise model.max_seq_len")
    model = build_model(cfg.model.name, mcfg)
    if kind != "lm":
        from ..models.heads import wrap_for_task

        model = wrap_for_task(model, data.task)
    model = model.to(device)
    if cfg.task.name == "lm" and kind == "lm" and not getattr(model, "causal", False):
        raise ValueError(f"task lm needs a causal decoder, but model.name={cfg.model.name!r} is not one; "
                         "use a gpt preset (`attnlab list models`)")
    resolved = cfg.model_copy(deep=True)
    resolved.model = cfg.model.model_copy(update={"vocab_size": mcfg.vocab_size})
    if kind != "lm":
        resolved.task = cfg.task.model_copy(update={"name": kind})
    return data, model, resolved
