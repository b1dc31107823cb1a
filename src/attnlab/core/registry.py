"""Entries by name, with one error format for every registry of attnlab (attention kernels, model presets,
objectives, datasets).

A :class:`Registry` maps names to entries of one ``kind``. Registering a taken name is an error (the same
entry again is harmless); looking up an unknown name raises ``ValueError`` with the closest names and the
valid ones. Built-in entries can load lazily: the ``load_builtins`` callback runs on the first lookup.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_MISSING = object()


class Registry(Generic[T]):
    """Entries of one ``kind`` by name.

    Args:
        kind: what an entry is, in messages (``"attention"``, ``"model"``, ``"objective"``, ``"dataset"``).
        load_builtins: called once, before the first lookup, to register the built-in entries (typically
            an import of the modules that register them). If it raises, the next lookup calls it again.
        plural: the plural of ``kind`` in messages (default ``kind + "s"``).
    """

    def __init__(self, kind: str, load_builtins: Callable[[], object] | None = None, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}
        self._load_builtins = load_builtins
        self._loaded = load_builtins is None

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it. The built-ins load first, so a clash with one is found here.

        Raises:
            ValueError: ``name`` already holds another entry (the message names it when it has a ``__qualname__``).
        """
        self._ensure_loaded()
        old = self._entries.get(name, _MISSING)
        if old is not _MISSING and old is not entry:
            by = getattr(old, "__qualname__", None)
            raise ValueError(f"{self.kind} {name!r} is already registered" + (f" by {by}" if by else ""))
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry of ``name``.

        Raises:
            ValueError: unknown name: ``unknown <kind> 'x'. Did you mean [...]? Valid <kinds>: [...]``.
        """
        self._ensure_loaded()
        if name not in self._entries:
            raise ValueError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: object) -> str:
        """The one-line error for an unknown ``name`` (closest names, then every valid one)."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3)
        hint = f" Did you mean {close}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.plural}: {self.names()}"

    def names(self) -> list[str]:
        """Sorted names of every entry."""
        self._ensure_loaded()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs sorted by name."""
        self._ensure_loaded()
        return sorted(self._entries.items(), key=lambda kv: kv[0])

    def values(self) -> list[T]:
        """Entries sorted by name."""
        return [entry for _, entry in self.items()]

    def pop(self, name: str, default: T | None = None) -> T | None:
        """Remove and return the entry of ``name`` (``default`` if there is none); for tests and plugins."""
        return self._entries.pop(name, default)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the callback's imports register entries and may look names up
        try:
            self._load_builtins()
        except BaseException:
            self._loaded = False
            raise
