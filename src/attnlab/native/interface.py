"""The native libraries' interface, read from its one declaration, ``csrc/attnlab_native.h``.

Each exported C function is declared there once, as ``ATTNLAB_API(family) <result> attnlab_<name>(<params>);``,
and every C file that defines one includes the header, so the compiler checks the definitions. This module
parses those prototypes into ctypes argument and result types and applies them to a loaded library
(:func:`bind`), so the Python side has no hand-written copy of the argument lists to drift from the C one.
It also reads the CPU feature bits (``ATTNLAB_CPU_* = 1 << n``) that the probe library reports.

The grammar is deliberately small (what the header's comment promises) and anything outside it raises
``ValueError``: results ``void``, ``int``, ``int64_t``, ``float``; named parameters that are pointers (to
anything; passed as addresses) or ``int``, ``int64_t``, ``float``; ``(void)`` for none.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from pathlib import Path

HEADER = Path(__file__).with_name("csrc") / "attnlab_native.h"

_SCALARS = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}
_QUALIFIERS = {"const", "volatile", "restrict"}
_DECLARATION = re.compile(r"\bATTNLAB_API\s*\(\s*(\w+)\s*\)([^;]*?)\b(attnlab_\w+)\s*\(([^)]*)\)\s*;")
_FEATURE = re.compile(r"\bATTNLAB_CPU_(\w+)\s*=\s*1\s*<<\s*(\d+)\s*[,}]")
_TOKEN = re.compile(r"[A-Za-z_]\w*|\*|\S")


@dataclass(frozen=True)
class Prototype:
    """One exported function: its library (``family``) and ctypes types (``restype`` None for void)."""

    name: str
    family: str
    restype: type | None
    argtypes: tuple[type, ...]


@dataclass(frozen=True)
class Interface:
    """Everything the header declares: ``prototypes`` by function name, CPU ``features`` (name -> bit)."""

    prototypes: dict[str, Prototype]
    features: dict[str, int]

    def of_family(self, family: str) -> list[Prototype]:
        """The prototypes of the functions ``family``'s library exports."""
        return [p for p in self.prototypes.values() if p.family == family]


def parse_header(text: str) -> Interface:
    """The :class:`Interface` declared by header ``text``.

    Raises:
        ValueError: a prototype outside the grammar above (an unknown or by-value struct type, an unnamed
            parameter, ...), a function declared twice, an ``attnlab_*`` call-like name that is not an
            ``ATTNLAB_API`` declaration, or a feature bit that is given twice.
    """
    code = _code_only(text)
    prototypes: dict[str, Prototype] = {}
    for match in _DECLARATION.finditer(code):
        family, result, name, params = match.groups()
        if name in prototypes:
            raise ValueError(f"{name} is declared twice in the native interface")
        prototypes[name] = Prototype(name, family, _result_type(result, name), _parameter_types(params, name))
    unread = set(re.findall(r"\b(attnlab_\w+)\s*\(", code)) - prototypes.keys()
    if unread:
        raise ValueError(f"cannot read the declaration of {', '.join(sorted(unread))}: write it as "
                         "ATTNLAB_API(family) <result> attnlab_<name>(<type> <name>, ...);")
    features: dict[str, int] = {}
    for name, shift in _FEATURE.findall(code):
        if name in features or 1 << int(shift) in features.values():
            raise ValueError(f"CPU feature {name} (bit {shift}) is given twice in the native interface")
        features[name] = 1 << int(shift)
    return Interface(prototypes, features)


@functools.cache
def interface() -> Interface:
    """The parsed ``csrc/attnlab_native.h`` (read once per process)."""
    return parse_header(HEADER.read_text())


def bind(lib: ctypes.CDLL, family: str, declared: Interface | None = None) -> None:
    """Set ``argtypes`` and ``restype`` of every function ``family``'s library ``lib`` exports, from the header.

    Raises:
        AttributeError: ``lib`` lacks a function the header declares for ``family``.
    """
    for proto in (declared or interface()).of_family(family):
        fn = getattr(lib, proto.name)
        fn.argtypes = list(proto.argtypes)
        fn.restype = proto.restype


def _code_only(text: str) -> str:
    """``text`` without comments and preprocessor lines (the ``ATTNLAB_API`` macro's own definition)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _result_type(text: str, function: str) -> type | None:
    tokens = [t for t in _TOKEN.findall(text) if t not in _QUALIFIERS]
    if tokens == ["void"]:
        return None
    return _c_type(tokens, f"the result of {function}")


def _parameter_types(text: str, function: str) -> tuple[type, ...]:
    if text.strip() == "void":
        return ()
    types = []
    for i, param in enumerate(text.split(",")):
        tokens = [t for t in _TOKEN.findall(param) if t not in _QUALIFIERS]
        # the last word names the parameter: a type alone ("int64_t") would otherwise pass for a name
        if len(tokens) < 2 or not re.fullmatch(r"[A-Za-z_]\w*", tokens[-1]) or tokens[-1] in _SCALARS:
            raise ValueError(f"parameter {i + 1} of {function} ({param.strip()!r}) needs a type and a name")
        types.append(_c_type(tokens[:-1], f"parameter {i + 1} of {function} ({param.strip()!r})"))
    return tuple(types)


def _c_type(tokens: list[str], what: str) -> type:
    """ctypes type of a C type given as tokens (qualifiers removed): ``T *...`` -> address, else a scalar."""
    if len(tokens) >= 2 and re.fullmatch(r"[A-Za-z_]\w*", tokens[0]) and set(tokens[1:]) == {"*"}:
        return ctypes.c_void_p
    if len(tokens) == 1 and tokens[0] in _SCALARS:
        return _SCALARS[tokens[0]]
    raise ValueError(f"{what} has type {' '.join(tokens) or '(none)'}, which the native interface does not "
                     f"take: pointers, {', '.join(_SCALARS)} (and void results) only")
