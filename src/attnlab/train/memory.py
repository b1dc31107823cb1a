"""Keep memory freed at the end of a training step for the next step (glibc malloc, Linux).

glibc returns large freed blocks to the operating system: blocks above its mmap threshold are unmapped
and the top of the heap is trimmed once more than the trim threshold is free there. A training step frees
almost all of its activations at the end, so the next step gets fresh pages and the kernel faults and
zeroes every one of them again: ~30,000 page faults (~120 MB) per step of the issue-2 GPT
(``benchmarks/train_step.py``), several percent of the step. :func:`retain_freed_memory` raises both
thresholds (the effect jemalloc or tcmalloc, the usual advice for PyTorch on CPU, have too); the price
is that the process keeps its peak heap instead of shrinking between steps. ``attnlab train`` calls it on
CPU unless ``train.retain_memory: false``.
"""

from __future__ import annotations

import ctypes
import logging
import platform

_log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger values on 64-bit
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to 2 GiB free at the top of the heap

_done: dict = {}


def retain_freed_memory() -> str:
    """Raise glibc's mmap threshold to 32 MiB and its trim threshold to 2 GiB for this process (once).

    Returns what happened: ``"retaining freed memory (...)"`` or ``"unchanged: <why>"`` (not glibc, or
    mallopt refused); never raises.
    """
    if "status" not in _done:
        _done["status"] = _apply()
        _log.info("allocator: %s", _done["status"])
    return _done["status"]


def _apply() -> str:
    libc_name, _ = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        return f"unchanged: needs glibc on Linux (this is {platform.system()} {libc_name or 'without glibc'})"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "unchanged: mallopt not found"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "unchanged: mallopt refused the thresholds"
    return "retaining freed memory (glibc mmap threshold 32 MiB, trim threshold 2 GiB)"
