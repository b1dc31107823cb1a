"""Native CPU kernels, compiled on first use with the system C compiler and loaded through ctypes.

One library, built from ``csrc/`` (``kernels.h``, ``common.c``, ``forward.c``, ``backward.c``,
``attention_fp32.c``, ``pointwise.c``, ``transpose.c``): exact softmax attention over packed documents in
bfloat16 and in float32, forward and backward (used by the ``softmax`` kernel through
:mod:`attnlab.native.documents` and :mod:`attnlab.native.documents_fp32`), fused LayerNorm and bias + GELU
for bf16-autocast training (used by the LayerNorm and MLP layers through :mod:`attnlab.native.pointwise`)
and a bf16 transpose for weight gradients (:mod:`attnlab.native.linear`).
It needs no PyTorch headers, so the build takes a couple of seconds, once (logged at INFO level); the
shared library is cached under ``$ATTNLAB_CACHE`` (default ``~/.cache/attnlab``) by a hash of its sources
and flags, written atomically. It links
libgomp.so.1, which resolves to PyTorch's own OpenMP runtime, so its threads are PyTorch's intra-op
threads.

It uses AMX tiles where the CPU has AMX-BF16 (Sapphire Rapids and later) and AVX-512 BF16 otherwise
(``ATTNLAB_NATIVE_AMX=0`` forces the latter). Everything falls back to PyTorch when the kernel is not
available: no compiler, a CPU without AVX-512 BF16, a non-x86 machine, or ``ATTNLAB_NATIVE=0`` in the
environment. :func:`native_status` says which.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("common.c", "forward.c", "backward.c", "attention_fp32.c", "pointwise.c",
                                    "transpose.c")]
HEADERS = [CSRC / "kernels.h"]
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-mamx-tile", "-mamx-bf16",
         "-fopenmp", "-shared", "-fPIC"]
LIBS = ["-lm"]

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {}  # "lib": CDLL or None, "why": reason it is None
_switch = {"on": True}  # process-wide (embed's worker threads must see it too)


def cache_dir() -> Path:
    """Where compiled kernels live: ``$ATTNLAB_CACHE/native`` or ``~/.cache/attnlab/native``."""
    root = os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab"
    return Path(root) / "native"


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


def load() -> ctypes.CDLL | None:
    """The compiled attention library, building it on first use; ``None`` when unavailable or switched off."""
    if not _switch["on"]:
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"], _state["why"] = _build_and_load()
    return _state["lib"]


def native_status() -> str:
    """``"available (AMX-BF16)"``, ``"available (AVX-512 BF16)"``, or why the native kernel is not used."""
    if not _switch["on"]:
        return "switched off (attnlab.native.set_enabled(False) or attnlab.native.disabled())"
    load()
    return _state["why"]


def _build_and_load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("ATTNLAB_NATIVE", "1") == "0":
        return None, "disabled by ATTNLAB_NATIVE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"needs x86-64 (this machine is {platform.machine()})"
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None, "no C compiler found (install gcc, or set CC)"
    text = b"".join(f.read_bytes() for f in HEADERS + SOURCES)
    digest = hashlib.sha256(text + " ".join([compiler] + FLAGS + LIBS).encode()).hexdigest()[:16]
    target = cache_dir() / f"attention_bf16-{digest}.so"
    if not target.exists():
        _log.info("building attnlab's native kernels (first use, a few seconds) into %s", target)
        error = _compile(compiler, target)
        if error:
            _log.warning("attnlab's native kernels are not used: %s", error)
            return None, error
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:  # a damaged cache file: rebuild once
        target.unlink(missing_ok=True)
        error = _compile(compiler, target)
        if error:
            return None, error
        try:
            lib = ctypes.CDLL(str(target))
        except OSError:
            return None, f"could not load {target}: {e}"
    caps = lib.attnlab_native_caps()
    if not caps & 1:
        return None, "this CPU lacks AVX-512 BF16"
    lib.amx = bool(caps & 2) and os.environ.get("ATTNLAB_NATIVE_AMX", "1") != "0"
    fn = lib.attnlab_attend_docs_bf16
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    fn.argtypes = [ptr] * 9 + [i64, i32, i32, i32, ctypes.c_float, i32, i32, ptr, ptr, i32]
    fn.restype = i32
    bwd = lib.attnlab_attend_docs_bf16_backward
    bwd.argtypes = [ptr] * 19 + [i64, i32, i32, i32, ctypes.c_float, i32, i32]
    bwd.restype = i32
    f32 = ctypes.c_float
    signatures = {  # pointwise.c
        "attnlab_layer_norm_fwd": [ptr, ptr, ptr, i64, i32, ptr, ptr, f32, ptr, ptr, ptr, i32],
        "attnlab_layer_norm_bwd": [ptr] * 7 + [i64, i32, ptr, ptr, ptr, i32],
        "attnlab_bias_gelu_fwd": [ptr, ptr, i64, i32, ptr, ptr, i32],
        "attnlab_bias_gelu_bwd": [ptr, ptr, i64, i32, ptr, ptr, i32],
        "attnlab_transpose_bf16": [ptr, i64, i64, i64, ptr, i64, i32],  # transpose.c
        "attnlab_attend_docs_f32": [ptr] * 9 + [i64, i32, i32, i32, f32, i32, ptr, ptr, i32],  # attention_fp32.c
        "attnlab_attend_docs_f32_backward": [ptr] * 17 + [i64, i32, i32, i32, f32, i32, i32],
    }
    for name, args in signatures.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = i32
    return lib, "available (AMX-BF16)" if lib.amx else "available (AVX-512 BF16)"


def _compile(compiler: str, target: Path) -> str | None:
    """Compile to a temporary file next to ``target`` and rename it into place; an error text or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the kernel cache {target.parent}: {e} (set ATTNLAB_CACHE)"
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, *map(str, SOURCES), *LIBS], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            return f"compiling the native kernels ({CSRC}) failed: {done.stderr.strip()[-500:]}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"compiling the native kernels ({CSRC}) failed: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
