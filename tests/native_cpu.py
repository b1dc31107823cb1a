"""Whether this machine can build and run attnlab's native kernels (``attnlab.native``), for skip marks.

Decided from the CPU flags and a C compiler, not from ``native_status()``: a kernel that fails to build on a
capable machine must fail its tests, not skip them. Imported by the native tests (``tests/`` is on the path
through its ``conftest.py``)."""

from __future__ import annotations

import platform
import shutil

import pytest


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        return set()


FLAGS = cpu_flags()
HAS_GCC = platform.machine() in ("x86_64", "AMD64") and bool(shutil.which("gcc"))
HAS_NATIVE = HAS_GCC and "avx512_bf16" in FLAGS
HAS_AMX = HAS_NATIVE and "amx_bf16" in FLAGS and "amx_tile" in FLAGS
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="needs x86-64 with AVX-512 BF16 and gcc")
needs_gcc = pytest.mark.skipif(not HAS_GCC, reason="needs x86-64 and gcc")

# The /proc/cpuinfo flags each kernel family of attnlab.native needs (as attnlab/native/build.py declares them).
_BF16_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "fma"}
FAMILY_FLAGS = {"attention_bf16": _BF16_FLAGS, "attention_fp32": {"avx512f", "fma"}, "pointwise": _BF16_FLAGS,
                "transpose": {"avx512f"}, "decode": _BF16_FLAGS}


def family_runs(family: str) -> bool:
    """This machine can build and run the native kernel ``family``."""
    return HAS_GCC and FAMILY_FLAGS[family] <= FLAGS
