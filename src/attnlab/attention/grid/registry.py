"""The grid attention registry: ``@register_grid_attention``, ``build_grid_attention``, ``list_grid_attention``."""

from __future__ import annotations

import inspect

from torch import nn

from ...core.registry import Registry


def _load_builtin() -> None:
    from . import atconv, lka, psa, ulsam  # noqa: F401  (each registers its module)


_REGISTRY: Registry[type[nn.Module]] = Registry("grid attention", _load_builtin, plural="grid attention modules")


def register_grid_attention(name: str):
    """Class decorator: make a ``(B, C, H, W) -> (B, C, H, W)`` module buildable by ``name``.

    The class takes ``channels`` first, then its options as keyword arguments, and sets ``role`` (``"gate"`` or
    ``"mixer"``)."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if getattr(cls, "role", None) not in ("gate", "mixer"):
            raise TypeError(f"grid attention {name!r}: {cls.__qualname__}.role must be 'gate' or 'mixer'")
        _REGISTRY.register(name, cls)
        cls.name = name
        return cls

    return deco


def list_grid_attention() -> list[str]:
    """Sorted names of every registered grid attention module."""
    return _REGISTRY.names()


def grid_attention_options(name: str) -> dict[str, object]:
    """``{option: default}`` of module ``name`` (its ``__init__`` keywords after ``channels``).

    Raises:
        ValueError: unknown name (with the valid ones).
    """
    params = inspect.signature(_REGISTRY.get(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "channels")}


def grid_attention_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (``ValueError`` naming the valid ones if unknown)."""
    return _REGISTRY.get(name)


def build_grid_attention(name: str, channels: int, **options) -> nn.Module:
    """Module ``name`` for ``channels`` input channels.

    Raises:
        ValueError: unknown name or option (each with the valid ones), or channels the module cannot split.
    """
    valid = grid_attention_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"grid attention {name!r} has no option(s) {unknown}; valid: {sorted(valid)}")
    return _REGISTRY.get(name)(channels, **options)
