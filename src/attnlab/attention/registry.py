"""The attention registry: ``@register_attention``, ``build_attention``, ``list_attention``.

Options of a kernel are the keyword arguments of its ``__init__``. A few *structural* arguments
(``num_heads``, ``num_kv_heads``, ``head_dim``, ``max_seq_len``) are filled in by the shell when the
kernel's ``__init__`` accepts them, so kernels with their own parameters know the head layout.
"""

from __future__ import annotations

import inspect

from ..core.registry import Registry
from .base import AttentionKernel

STRUCTURAL_ARGS = ("num_heads", "num_kv_heads", "head_dim", "max_seq_len")


def _load_builtin() -> None:
    from . import kernels  # noqa: F401  (imports every built-in kernel file)


_REGISTRY: Registry[type[AttentionKernel]] = Registry("attention", _load_builtin, plural="attention kernels")


def register_attention(name: str):
    """Class decorator: make a kernel buildable by ``name``. A duplicate name is an error."""

    def deco(cls: type[AttentionKernel]) -> type[AttentionKernel]:
        if not (isinstance(cls, type) and issubclass(cls, AttentionKernel)):
            raise TypeError(f"@register_attention({name!r}) needs an AttentionKernel subclass, got {cls!r}")
        _REGISTRY.register(name, cls)  # raises for a name another class holds
        cls.name = name
        return cls

    return deco


def list_attention() -> list[str]:
    """Sorted names of every registered attention kernel."""
    return _REGISTRY.names()


def get_attention_class(name: str) -> type[AttentionKernel]:
    """The kernel class registered as ``name``.

    Raises:
        ValueError: unknown name (the message suggests the closest and lists the valid ones).
    """
    return _REGISTRY.get(name)


def unknown_attention_message(name: object) -> str:
    """The one-line error for an attention name the registry does not know (closest names, then every name)."""
    return _REGISTRY.unknown_message(name)


def attention_options(name: str) -> dict[str, object]:
    """User-settable options of kernel ``name`` with their defaults (structural args excluded)."""
    sig = inspect.signature(get_attention_class(name).__init__)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in list(sig.parameters.values())[1:]
        if p.name not in STRUCTURAL_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_attention(name: str, structural: dict | None = None, **options) -> AttentionKernel:
    """Instantiate kernel ``name`` with ``options``.

    Args:
        name: a registered name (see :func:`list_attention`).
        structural: ``num_heads`` / ``num_kv_heads`` / ``head_dim`` / ``max_seq_len``, passed only if the
            kernel's ``__init__`` takes them.
        **options: the kernel's own options.

    Raises:
        ValueError: unknown name, or an option the kernel does not take (the message lists valid ones).
    """
    cls = get_attention_class(name)
    valid = attention_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"attention {name!r} has no option(s) {unknown}; valid options: "
            f"{ {k: v for k, v in valid.items()} }"
        )
    params = inspect.signature(cls.__init__).parameters
    for key, value in (structural or {}).items():
        if key in params and value is not None:
            options[key] = value
    return cls(**options)


def describe_attention() -> list[dict]:
    """One row per kernel: name, first docstring line, capabilities, options (for docs and the CLI). The
    capabilities are those of a kernel built with its default options (a composite kernel such as ``pathways``
    takes some of its inner kernel's), or the class's declaration when it cannot be built without options."""
    rows = []
    for name, cls in _REGISTRY.items():
        doc = (inspect.getdoc(cls) or "").splitlines()
        try:
            caps = build_attention(name, structural=dict(num_heads=2, num_kv_heads=2, head_dim=8,
                                                         max_seq_len=64)).capabilities
        except (TypeError, ValueError):
            caps = cls.capabilities
        rows.append({
            "name": name,
            "summary": doc[0] if doc else "",
            "capabilities": caps.as_dict(),
            "options": attention_options(name),
        })
    return rows
