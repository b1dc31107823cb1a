"""Shared helpers for benchmarks: timing medians, matmul peak, table printing, atomic JSON."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from attnlab.core import io as core_io

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured GEMM throughput in GFLOP/s for ``n x n @ n x n`` in ``dtype`` (this run, this machine)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    t = median_time(lambda: a @ b, repeats, warmup=2)
    return 2 * n**3 / t / 1e9


def machine_info() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def print_table(rows: list[dict], columns: list[str]) -> str:
    """Render rows as a Markdown table, print it and return it."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(name: str, payload: dict) -> Path:
    """Atomically write ``benchmarks/results/<name>.json``."""
    return core_io.write_json(RESULTS / f"{name}.json", payload)
