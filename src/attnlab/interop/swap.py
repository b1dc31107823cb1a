"""A swapped attention kernel in a Hugging Face checkpoint: which keywords of ``load_pretrained`` set the model
rather than the kernel, and the record of a kernel that ``transformers`` does not run, kept in ``config.json`` so
that ``load_pretrained`` restores it (``transformers`` itself runs the weights with its own attention).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError
from torch import nn

from ..models.config import ModelConfig
from ..models.registry import short_error

# model fields no kernel takes as an option -> the model types whose checkpoints still load when they change
MODEL_KEYS = {"image_size": ("swin", "cvt"), "num_classes": ("swin", "cvt"), "kv_stride": ("cvt",),
              "pooling": ("vit",)}
WHY_FIXED = {"vit": " (its position embeddings fix the image size and its key map the head)"}


def split_options(model_type: str, options: dict) -> tuple[dict, dict]:
    """``(model options, attention options)`` of ``load_pretrained``'s keywords.

    ``image_size`` and ``num_classes`` (Swin, CvT), ``kv_stride`` (CvT) and ``pooling`` (ViT: ``"mean"`` leaves out
    the [CLS] token, so that grid kernels serve every block) change the model built around the checkpoint's
    weights: a new size of input, a new classification head (initialised), CvT's key stride.

    Raises:
        ValueError: a model keyword this model type cannot change, naming the ones it can.
    """
    if "attention_options" in options:  # a per-layer or per-stage list, which keywords cannot carry
        rest = sorted(set(options) - {"attention_options"} - set(MODEL_KEYS))
        if rest:
            raise ValueError(f"give the kernel's options either as keywords or as attention_options=, not both "
                             f"(got attention_options and {rest})")
        options = {**{k: v for k, v in options.items() if k in MODEL_KEYS}, **_as_keywords(options)}
    _check_known(model_type, options)
    model = {k: v for k, v in options.items() if k in MODEL_KEYS and not _combiner_pooling(k, v)}
    bad = sorted(k for k in model if model_type not in MODEL_KEYS[k])
    if bad:
        can = sorted(k for k, types in MODEL_KEYS.items() if model_type in types)
        raise ValueError(f"{bad} cannot be set when loading a {model_type} checkpoint{WHY_FIXED.get(model_type, '')}; "
                         + (f"a {model_type} checkpoint takes {can}" if can else "leave them out"))
    return model, {k: v for k, v in options.items() if k not in model}


def _combiner_pooling(key: str, value) -> bool:
    """``pooling="identity-max"`` and the like are the ``combiner`` kernel's option, not the model's (``mean``,
    ``cls``)."""
    return key == "pooling" and value not in ("mean", "cls")


def _check_known(model_type: str, options: dict) -> None:
    """Raises ValueError for a keyword that is neither a model keyword (:data:`MODEL_KEYS`) nor an option of any
    attention kernel (a misspelling such as ``image_sise``), or a model setting no checkpoint lets change
    (``num_channels``), naming what the family takes."""
    import difflib

    from ..attention.registry import attention_options, list_attention

    kernel = {o for name in list_attention() for o in attention_options(name)}
    takes = sorted(k for k, types in MODEL_KEYS.items() if model_type in types)
    for key in options:
        if key in MODEL_KEYS or key in kernel or key == "attention_options":
            continue
        if key in ModelConfig.model_fields:
            raise ValueError(f"{key!r} cannot be set when loading a {model_type} checkpoint (its weights and config "
                             f"fix it); a {model_type} checkpoint takes {takes} and its kernel's options")
        close = difflib.get_close_matches(key, sorted({*MODEL_KEYS, *kernel}), n=3, cutoff=0.7)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"load_pretrained has no keyword {key!r}.{hint} A {model_type} checkpoint takes {takes} "
                         "and the options of the attention kernel (attention=...)")


def _as_keywords(options: dict) -> dict:
    """``attention_options=`` as the keywords :func:`split_options` returns: a dict's items, a list under the one
    key ``attention_options`` (the loaders pass it on whole)."""
    value = options["attention_options"]
    return dict(value) if isinstance(value, dict) else {"attention_options": value}


def kernel_options(options: dict | list) -> dict | list:
    """The ``attention_options`` of a model config from a loader's keywords (a list arrives whole under its key)."""
    return options["attention_options"] if isinstance(options, dict) and set(options) == {"attention_options"} else options


def reconfigured(cfg: ModelConfig, update: dict, family: str) -> ModelConfig:
    """``cfg`` with ``update`` applied and validated (schedules, kernel options, sizes).

    Raises:
        ValueError: an invalid value, in one line naming the field.
    """
    if "attention_options" in update:
        update = {**update, "attention_options": kernel_options(update["attention_options"])}
    try:
        return ModelConfig(**{**cfg.model_dump(), **update})
    except ValidationError as e:
        raise ValueError(f"cannot build the {family} of this checkpoint with {sorted(update)}: "
                         f"{short_error(e)}") from None


def restored_attention(hf: dict, attention, options: dict) -> tuple:
    """``(attention, options)`` to build: the ones asked for, else the kernel :func:`attention_record` kept in
    ``config.json``, else ``(None, {})`` (the checkpoint's own attention)."""
    if attention is None and "attnlab_attention" in hf:
        record = hf["attnlab_attention"]
        return record["attention"], record["attention_options"]
    return attention, options


def attention_record(cfg, kernels: Iterable[nn.Module], native: str, family: str, allow: bool) -> dict:
    """The ``config.json`` entry recording a model's kernels (``{}`` when every kernel is ``native``).

    Raises:
        ValueError: kernels other than ``native`` without ``allow``; kernels with their own parameters or
            persistent state (buffers), which a Hugging Face checkpoint cannot hold.
    """
    kernels = list(kernels)
    names = sorted({k.name for k in kernels})
    if names == [native]:
        return {}
    if not allow:
        raise ValueError(f"transformers' {family} runs {native} attention only; this model uses {names}. Pass "
                         "allow_attention_change=True to save anyway (transformers runs the weights with "
                         f"{native} attention; the kernel is recorded in config.json for attnlab.load_pretrained)")
    own = sorted({k.name for k in kernels if k.name != native and k.state_dict()})  # weights or persistent state
    if own:
        raise ValueError(f"attention {own} has its own parameters or state (routing's centroids, ...), which a "
                         f"Hugging Face {family} checkpoint cannot hold; keep this model in attnlab's own checkpoints "
                         "(a training run's folder)")
    return {"attnlab_attention": {"attention": cfg.attention, "attention_options": cfg.attention_options}}
