"""Native CPU kernels, compiled on first use with the system C compiler and loaded through ctypes.

Five kernel families, each its own shared library built from ``csrc/`` (:mod:`attnlab.native.build`)
with only the instruction-set flags it needs, so each is available or not on its own:

- ``attention_bf16`` (``common.c``, ``forward.c``, ``backward.c``): exact softmax attention over packed
  documents in bfloat16, forward and backward, on AMX tiles where the CPU has AMX-BF16 (Sapphire Rapids
  and later) and AVX-512 BF16 otherwise (``ATTNLAB_NATIVE_AMX=0`` forces the latter);
- ``attention_fp32`` (``attention_fp32.c``, ``window_fp32.c``): the same in float32 on AVX-512F and FMA, and
  Swin's window attention at inference (:mod:`attnlab.native.window_fp32`);
- ``pointwise`` (``pointwise.c``): fused LayerNorm and bias + GELU for bf16-autocast training (AVX-512 BF16);
- ``transpose`` (``transpose.c``): a bf16 transpose for weight gradients (AVX-512F);
- ``decode`` (``skinny.c``, ``decode_attention.c``): the few-row linear layers and few-query attention of a
  generation step, fp32 and bf16 (AVX-512 BF16; :mod:`attnlab.native.decode`).

The ``softmax`` kernel reaches the attention families through one call,
:func:`attnlab.native.attention.documents_attention`; the LayerNorm and MLP layers use the pointwise family
(:mod:`attnlab.native.pointwise`) and the linear layers the transpose (:mod:`attnlab.native.linear`).

The exported C functions are declared once, in ``csrc/attnlab_native.h``, and their ctypes signatures are
read from there (:mod:`attnlab.native.interface`).
No PyTorch headers are needed, so a build takes a couple of seconds, once per family (logged at INFO level);
the libraries are cached under ``$ATTNLAB_CACHE`` (default ``~/.cache/attnlab``). They link libgomp.so.1,
which resolves to PyTorch's own OpenMP runtime, so their threads are PyTorch's intra-op threads.

Everything falls back to PyTorch where a family is not available: no compiler, a CPU without the family's
features, a non-x86 machine, or ``ATTNLAB_NATIVE=0`` in the environment. :func:`native_status` says which.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from contextlib import contextmanager

from . import build, interface
from .build import FAMILIES, cache_dir

__all__ = ["FAMILIES", "cache_dir", "disabled", "load", "native_status", "set_enabled", "status_by_family"]

_lock = threading.RLock()  # reentrant: opening a family opens the probe library first
_loaded: dict[str, tuple[ctypes.CDLL | None, str]] = {}  # family -> (library or None, status)
_switch = {"on": True}  # process-wide (embed's worker threads must see it too)
_SWITCHED_OFF = "switched off (attnlab.native.set_enabled(False) or attnlab.native.disabled())"


def set_enabled(on: bool) -> None:
    """Turn the native kernels on or off for the whole process (off: PyTorch's kernels everywhere)."""
    _switch["on"] = bool(on)


@contextmanager
def disabled():
    """``with attnlab.native.disabled(): ...`` runs the block on PyTorch's kernels only."""
    before = _switch["on"]
    _switch["on"] = False
    try:
        yield
    finally:
        _switch["on"] = before


def load(family: str = "attention_bf16") -> ctypes.CDLL | None:
    """The library of kernel ``family`` (one of :data:`FAMILIES`; by default the bf16 attention, whose
    library also has ``.amx``: whether its AMX path is used), building it on first use; ``None`` when it is
    unavailable here or the native kernels are switched off.

    Raises:
        ValueError: ``family`` is not one of :data:`FAMILIES`.
    """
    if family not in FAMILIES:
        raise ValueError(f"no native kernel family {family!r}; the families are {', '.join(FAMILIES)}")
    return _open(family)[0] if _switch["on"] else None


def native_status(family: str | None = None) -> str:
    """Whether ``family`` (default: all) can run, or why not. The bf16 attention's status comes first:
    ``"available (AMX-BF16)"`` or ``"available (AVX-512 BF16)"``, then ``"; <family>: <status>"`` for each
    other family (``"available"``, or why not); a reason that holds for every family (switched off, no
    compiler, ...) is given once, alone.

    Raises:
        ValueError: ``family`` is not one of :data:`FAMILIES`.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"no native kernel family {family!r}; the families are {', '.join(FAMILIES)}")
    if not _switch["on"]:
        return _SWITCHED_OFF
    if family is not None:
        return _open(family)[1]
    probe, why = _open("probe")
    if probe is None:
        return why
    first, *others = status_by_family().items()
    return "; ".join([first[1]] + [f"{name}: {status}" for name, status in others])


def status_by_family() -> dict[str, str]:
    """``{family: status}`` for every family in :data:`FAMILIES`, as :func:`native_status` gives them."""
    return {name: native_status(name) for name in FAMILIES}


def _open(name: str) -> tuple[ctypes.CDLL | None, str]:
    """``(library, status)`` of a family or of the probe, opened once per process."""
    if name not in _loaded:
        with _lock:
            if name not in _loaded:
                _loaded[name] = _open_uncached(name)
    return _loaded[name]


def _open_uncached(name: str) -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("ATTNLAB_NATIVE", "1") == "0":
        return None, "disabled by ATTNLAB_NATIVE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"needs x86-64 (this machine is {platform.machine()})"
    compiler = build.find_compiler()
    if compiler is None:
        return None, "no C compiler found (install gcc, or set CC)"
    family = FAMILIES.get(name, build.PROBE)
    features = 0
    if family is not build.PROBE:
        probe, why = _open("probe")
        if probe is None:
            return None, why
        features = probe.features
        bits = interface.interface().features
        missing = [build.FEATURES[f][1] for f in family.needs if not features & bits[f]]
        if missing:  # its code may use these instructions anywhere: do not even load it
            return None, f"this CPU lacks {', '.join(missing)}"
    lib, why = build.open_library(family, compiler)
    if lib is None:
        return None, why
    try:
        interface.bind(lib, family.name)
    except AttributeError as e:
        return None, f"the native {family.name} library does not match csrc/attnlab_native.h: {e}"
    return lib, _ready(lib, family.name, features)


def _ready(lib: ctypes.CDLL, name: str, features: int) -> str:
    """Record what a freshly opened library needs to know about this CPU on it; its status."""
    if name == "probe":
        lib.features = _cpu_features(lib)
    elif name == "attention_bf16":
        amx = bool(features & interface.interface().features["AMX_BF16"])
        lib.amx = amx and os.environ.get("ATTNLAB_NATIVE_AMX", "1") != "0"
        return "available (AMX-BF16)" if lib.amx else "available (AVX-512 BF16)"
    return "available"


def _cpu_features(probe: ctypes.CDLL) -> int:
    """The probe's ATTNLAB_CPU_* bits for this CPU (a separate function so tests can simulate other CPUs)."""
    return probe.attnlab_cpu_features()
