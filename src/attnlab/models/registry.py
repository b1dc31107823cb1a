"""Model presets by name: ``create_model("gpt-char-small", attention="sliding_window")``, ``list_models()``."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from pydantic import ValidationError
from torch import nn

from ..core.registry import Registry
from .config import ModelConfig


@dataclass(frozen=True)
class Preset:
    """A registered preset: the model class (``family``), the config values it starts from, one line of text."""

    family: Callable[[ModelConfig], nn.Module]
    values: dict
    description: str


def _load_builtin() -> None:
    from . import audio, bytes, seq2seq, series, text, vision  # noqa: F401  (each family folder registers its presets)


_MODELS: Registry[Preset] = Registry("model", _load_builtin)


def register_model(name: str, family: Callable[[ModelConfig], nn.Module], description: str = "", **preset):
    """Register a preset: the model class and the config values it starts from.

    Raises:
        ValueError: ``name`` is taken, or the values are not a valid :class:`ModelConfig` (checked now, so a
            broken preset fails at import rather than when a user picks it).
    """
    ModelConfig(**preset)
    _MODELS.register(name, Preset(family, preset, description))


def list_models() -> list[str]:
    """Sorted names of every preset."""
    return _MODELS.names()


def describe_models() -> list[dict]:
    """One row per preset: ``name``, ``family`` (class name), ``description``, ``preset`` (its config values)."""
    return [{"name": n, "family": p.family.__name__, "description": p.description, "preset": p.values}
            for n, p in _MODELS.items()]


def model_config(name: str, **overrides) -> ModelConfig:
    """The resolved :class:`ModelConfig` of preset ``name`` with ``overrides`` applied.

    Raises:
        ValueError: unknown preset or option (both name the closest valid ones), or an invalid value.
    """
    preset = _MODELS.get(name)
    unknown = sorted(set(overrides) - set(ModelConfig.model_fields))
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(ModelConfig.model_fields), n=2) for k in unknown}
        raise ValueError(f"unknown model option(s) {unknown} (closest: {hints}); valid: {sorted(ModelConfig.model_fields)}")
    try:
        return ModelConfig(**{**preset.values, **overrides})
    except ValidationError as e:
        raise ValueError(f"invalid config for model {name!r}: {short_error(e)}") from None


def create_model(name: str, **overrides) -> nn.Module:
    """Build preset ``name``; keyword overrides are :class:`ModelConfig` fields (``attention=...``)."""
    cfg = model_config(name, **overrides)
    return _MODELS.get(name).family(cfg)


def build_model(preset: str, cfg: ModelConfig) -> nn.Module:
    """A model of the class of preset ``preset``, built from the explicit ``cfg`` (the preset's values unused).

    Raises:
        ValueError: unknown preset.
    """
    return _MODELS.get(preset).family(cfg)


def short_error(e: ValidationError) -> str:
    """A pydantic validation error as one line: each field and its message."""
    # pydantic prefixes validator messages with "Value error, "; the message itself is what users need
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
                     for err in e.errors())
