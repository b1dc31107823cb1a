"""What a run is built from: data, model (with a head for classify/regression data) and the resolved config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..data.text import LMData, build_lm_data
from ..models.registry import build_model

# which models a feed's kind trains: (test, what to use instead)
MODEL_FOR_KIND = {
    "seq2seq": (lambda m: hasattr(m, "decode") and hasattr(m, "encode"),
                "an encoder-decoder: set model.name to a seq2seq preset (seq2seq-tiny, seq2seq-small, ...)"),
    "forecast": (lambda m: getattr(m, "forecaster", False),
                 "a series forecaster: set model.name to a series preset (patchtst-small, itransformer-small, dlinear, "
                 "nlinear; `attnlab list models`)"),
    "irregular": (lambda m: getattr(m, "irregular_classifier", False),
                  "an irregular-series classifier: set model.name to irregular-tiny or irregular-small"),
    "mlm": (lambda m: hasattr(m, "mlm_logits"), "an encoder with a masked-LM head: set model.name to an encoder "
                                                 "preset (encoder-tiny, encoder, bert)"),
}


def build_for_config(cfg: RunConfig, device: torch.device, feed=None,
                     tokenizer_file: str | Path | None = None) -> tuple[LMData, nn.Module, RunConfig]:
    """Data, model (on ``device``) and the resolved config (``model.vocab_size`` filled in from the tokenizer).

    ``tokenizer_file`` (a ``tokenizer.json``) replaces training the tokenizer ``data.tokenizer`` names: a resumed run
    keeps the tokenizer its model was trained with (the resolved config still says ``data.tokenizer``).

    ``feed`` (a :mod:`~attnlab.train.feeds` object) replaces the text corpus of ``cfg.data``; for a dataset of
    kind ``classify`` or ``regression`` the model of ``cfg.model`` is wrapped in that dataset's head
    (:func:`~attnlab.models.heads.wrap_for_dataset`); the resolved ``objective.name`` is the feed's kind
    (``classify``, ``regression``, ``seq2seq``, ``mlm``) and ``data.seq_len`` its sequence length.

    Raises:
        ValueError: a sequence length above ``model.max_seq_len``, a non-causal model for the ``lm`` objective, a
            model of another family than the feed's kind trains, an ``objective.name`` other than ``lm`` (the
            default) or the dataset's kind, or a ``model.init_from`` that does not fit.
        CapabilityError: the attention kernel cannot run this model or head.
    """
    d = cfg.data
    tok = d.tokenizer if tokenizer_file is None else str(tokenizer_file)
    data = feed if feed is not None else build_lm_data(d.dataset, tok, d.seq_len, d.val_fraction, d.split, d.vocab_size)
    kind = getattr(data, "kind", "lm")  # a suite dataset or a masked corpus decides its own objective
    objective = cfg.objective.name
    # masked-patch pretraining on forecasting windows, or on spectrograms (SSAST)
    pretrain = (kind, objective) in (("forecast", "patch_mask"), ("classify", "ssast"))
    if kind != "lm" and objective not in ("lm", kind) and not pretrain:
        raise ValueError(f"objective.name={objective!r} does not fit the dataset of kind {kind!r}; "
                         f"remove objective.name or set it to {kind!r}")
    # regression inputs are vectors: the body gets a 1-row token table that its head replaces
    mcfg = cfg.model.to_model_config(data.vocab_size if data.vocab_size is not None else 1)
    seq_len = getattr(data, "seq_len", d.seq_len) if feed is not None else d.seq_len
    if kind in ("forecast", "irregular"):  # the series shape comes from the data
        mcfg = _series_config(cfg, mcfg, data.model_shape())
    model = _model_for(cfg, mcfg, data, kind)  # first: a model of the wrong family is the clearer message
    # images, spectrograms and files: the model checks its own input size
    images = getattr(getattr(data, "dataset", None), "whole_examples", False)
    images = images or kind in ("forecast", "irregular")  # series models check their own token counts
    if seq_len > mcfg.max_seq_len and not images:
        what = "data.seq_len" if seq_len == d.seq_len else f"the dataset's longest sequence ({seq_len} tokens)"
        raise ValueError(f"{what} exceeds model.max_seq_len={mcfg.max_seq_len}; raise model.max_seq_len or use "
                         "shorter sequences (data.seq_len, or data.options for a suite dataset)")
    model = model.to(device)
    resolved = cfg.model_copy(deep=True)
    resolved.model = cfg.model.model_copy(update={"vocab_size": mcfg.vocab_size})
    if kind in ("forecast", "irregular"):
        resolved.model = resolved.model.model_copy(update=data.model_shape())
    if kind != "lm" and not pretrain:
        resolved.objective = cfg.objective.model_copy(update={"name": kind})
    if feed is not None:
        resolved.data = cfg.data.model_copy(update={"seq_len": seq_len})
    return data, model, resolved


def _series_config(cfg: RunConfig, mcfg, shape: dict):
    """``mcfg`` with the series shape of the data; a value the recipe set must agree with it.

    Raises:
        ValueError: a series model key set to another value than the data's (names both).
    """
    for key, value in shape.items():
        set_to = getattr(cfg.model, key)
        if set_to is not None and set_to != value:
            source = f"data.{key}" if key in ("lookback", "horizon") else "the data"
            raise ValueError(f"model.{key}={set_to} but {source} gives {value}; remove model.{key} (it comes from the "
                             "data)")
    return mcfg.model_copy(update=shape)


def _check_classes(cfg: RunConfig, dataset) -> None:
    """A dataset sets its classification head's size; a ``model.num_classes`` the recipe changed from the preset's
    to another count would be silently replaced, so it is refused.

    Raises:
        ValueError: naming both counts.
    """
    from ..models.registry import model_config

    classes = getattr(dataset, "num_classes", None)
    given = cfg.model.num_classes
    if classes and given not in (classes, model_config(cfg.model.name).num_classes):
        raise ValueError(f"model.num_classes={given} but dataset {dataset.name!r} has {classes} classes, which set "
                         "the head; remove model.num_classes")


def _model_for(cfg: RunConfig, mcfg, data, kind: str) -> nn.Module:
    """The preset's model, under the dataset's head for classify/regression; checked against what ``kind`` trains."""
    model = build_model(cfg.model.name, mcfg)
    if cfg.objective.name == "ssast":
        return _spectrogram_pretrainer(cfg, model, data)
    if kind in ("classify", "regression"):
        from ..models.heads import wrap_for_dataset

        _check_classes(cfg, data.dataset)
        return wrap_for_dataset(model, data.dataset)
    if cfg.objective.name == "patch_mask" and not getattr(model, "patch_pretrainer", False):
        raise ValueError(f"objective patch_mask pretrains a PatchTSTPretrain: set model.name to patchtst-pretrain-tiny "
                         f"or patchtst-pretrain-small; model.name={cfg.model.name!r} is a {type(model).__name__}")
    if cfg.objective.name == "patch_mask":
        return model
    if kind in MODEL_FOR_KIND and not MODEL_FOR_KIND[kind][0](model):
        raise ValueError(f"the {kind} objective trains {MODEL_FOR_KIND[kind][1]}; model.name={cfg.model.name!r} "
                         f"is a {type(model).__name__}")
    if cfg.objective.name == "lm" and kind == "lm" and not getattr(model, "causal", False):
        raise ValueError(f"objective lm needs a causal decoder, but model.name={cfg.model.name!r} is not one; "
                         "use a gpt preset (`attnlab list models`)")
    return model


def _spectrogram_pretrainer(cfg: RunConfig, model: nn.Module, data) -> nn.Module:
    """The SSAST preset of ``objective.name: ssast``, checked against the spectrograms of the dataset.

    Raises:
        ValueError: not an SSAST preset, not a spectrogram dataset, or other frames / mel bins than the dataset's.
    """
    if not getattr(model, "spectrogram_pretrainer", False):
        raise ValueError(f"objective ssast pretrains an SSAST preset (ssast-tiny, ssast-small); model.name="
                         f"{cfg.model.name!r} is a {type(model).__name__}")
    shape = getattr(getattr(data, "dataset", None), "audio_shape", None)
    if shape is None:
        raise ValueError(f"objective ssast pretrains on spectrograms: set data.dataset to keywords or audio_folder, not "
                         f"{cfg.data.dataset!r}")
    from ..models.heads import check_spectrogram_shape

    check_spectrogram_shape(model.cfg, shape)
    return model


def step_options(objective) -> dict:
    """The options of ``objective`` (an :class:`~attnlab.config.ObjectiveConfig`) its step function takes: those set
    away from their default (``mask_prob`` and ``whole_word`` shape the data, not the step)."""
    data_side = {"name", "mask_prob", "whole_word"}
    fields = type(objective).model_fields
    return {k: v for k, v in objective.model_dump().items() if k not in data_side and v != fields[k].default}
