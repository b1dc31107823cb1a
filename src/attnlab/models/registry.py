"""Model presets by name: ``create_model("gpt-char-small", attention="sliding_window")``, ``list_models()``."""

from __future__ import annotations

import difflib
from typing import Callable

from pydantic import ValidationError
from torch import nn

from .config import ModelConfig

_MODELS: dict[str, tuple[Callable[[ModelConfig], nn.Module], dict, str]] = {}


def register_model(name: str, family: Callable[[ModelConfig], nn.Module], description: str = "", **preset):
    """Register a preset: the model class and the config values it starts from."""
    if name in _MODELS:
        raise ValueError(f"model preset {name!r} is already registered")
    ModelConfig(**preset)  # a broken preset fails at import, not when a user picks it
    _MODELS[name] = (family, preset, description)


def list_models() -> list[str]:
    _ensure_builtin()
    return sorted(_MODELS)


def describe_models() -> list[dict]:
    _ensure_builtin()
    return [{"name": n, "family": f.__name__, "description": d, "preset": p} for n, (f, p, d) in sorted(_MODELS.items())]


def model_config(name: str, **overrides) -> ModelConfig:
    """The resolved :class:`ModelConfig` of preset ``name`` with ``overrides`` applied."""
    _ensure_builtin()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid models: {sorted(_MODELS)}")
    unknown = sorted(set(overrides) - set(ModelConfig.model_fields))
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(ModelConfig.model_fields), n=2) for k in unknown}
        raise ValueError(f"unknown model option(s) {unknown} (closest: {hints}); valid: {sorted(ModelConfig.model_fields)}")
    try:
        return ModelConfig(**{**_MODELS[name][1], **overrides})
    except ValidationError as e:
        raise ValueError(f"invalid config for model {name!r}: {_short(e)}") from None


def create_model(name: str, **overrides) -> nn.Module:
    """Build preset ``name``; keyword overrides are :class:`ModelConfig` fields (``attention=...``)."""
    cfg = model_config(name, **overrides)
    return _MODELS[name][0](cfg)


def build_model(family: str, cfg: ModelConfig) -> nn.Module:
    """Build a model of preset ``family``'s class from an explicit config."""
    _ensure_builtin()
    model_config(family)  # validates the name
    return _MODELS[family][0](cfg)


def _short(e: ValidationError) -> str:
    # pydantic prefixes validator messages with "Value error, "; the message itself is what users need
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
                     for err in e.errors())


def _ensure_builtin() -> None:
    from . import text, vision  # noqa: F401  (each family folder registers its presets)
