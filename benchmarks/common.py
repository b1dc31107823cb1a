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


def repeats_from_args(doc: str, default: int = 9) -> int:
    """The repetitions a benchmark's command line asks for: ``--repeats N`` (default ``default``) or ``--quick``
    (3); ``doc`` is the script's help text. Exits with a usage error for fewer than one."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=default)
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return 3 if args.quick else args.repeats


def paired(fns: dict, repeats: int, baseline: str, candidate: str) -> dict:
    """Times every function of ``fns`` (name -> callable) once to warm up, then ``repeats`` times alternating
    them within each repetition (the machine's drift then hits all alike). Returns each one's median in
    milliseconds (``<name>_ms``) and ``ratio``: the median over repetitions of ``baseline``'s time over
    ``candidate``'s (> 1: the candidate is faster)."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {f"{name}_ms": 1e3 * statistics.median(ts) for name, ts in times.items()}
    out["ratio"] = statistics.median(b / c for c, b in zip(times[candidate], times[baseline]))
    return out


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
