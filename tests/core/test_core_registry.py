"""attnlab.core.registry.Registry: registration, duplicate names, did-you-mean lookups, lazy built-ins."""

from __future__ import annotations

import pytest

from attnlab.core.registry import Registry


def test_register_get_and_list():
    reg = Registry("widget")
    assert reg.register("b", 2) == 2 and reg.register("a", 1) == 1
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] == list(reg)
    assert reg.items() == [("a", 1), ("b", 2)] and reg.values() == [1, 2]
    assert "a" in reg and "z" not in reg and len(reg) == 2
    assert reg.pop("a") == 1 and reg.pop("a") is None and reg.names() == ["b"]


def test_unknown_name_suggests_and_lists_in_one_line():
    reg = Registry("widget")
    for name in ("softmax", "sliding_window"):
        reg.register(name, name)
    with pytest.raises(ValueError) as err:
        reg.get("softmx")
    assert str(err.value) == ("unknown widget 'softmx'. Did you mean ['softmax']? "
                              "Valid widgets: ['sliding_window', 'softmax']")
    with pytest.raises(ValueError) as err:
        Registry("box", plural="boxes").get("zzz")
    assert str(err.value) == "unknown box 'zzz'. Valid boxes: []"


def test_duplicate_name_is_an_error_unless_the_same_entry():
    def fn():
        pass

    reg = Registry("objective")
    reg.register("lm", fn)
    assert reg.register("lm", fn) is fn  # the same entry again is harmless
    with pytest.raises(ValueError, match="objective 'lm' is already registered by .*fn"):
        reg.register("lm", lambda: None)
    reg.register("x", [1, 2])
    with pytest.raises(ValueError, match=r"^objective 'x' is already registered$"):
        reg.register("x", [1, 2])  # equal but not the same object


def test_builtins_load_once_before_the_first_lookup():
    calls = []

    def load():
        calls.append(1)
        reg.register("builtin", 0)

    reg = Registry("thing", load)
    assert calls == []
    assert reg.names() == ["builtin"] and reg.get("builtin") == 0 and calls == [1]
    with pytest.raises(ValueError, match="'builtin' is already registered"):
        reg.register("builtin", 1)  # a clash with a built-in shows at registration
    assert calls == [1]


def test_a_failing_loader_is_retried():
    attempts = []

    def load():
        attempts.append(1)
        if len(attempts) == 1:
            raise ImportError("broken plugin")

    reg = Registry("thing", load)
    with pytest.raises(ImportError):
        reg.names()
    assert reg.names() == [] and len(attempts) == 2
