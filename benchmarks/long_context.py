"""Long-context benchmark: structured sparse kernels vs dense SDPA, forward + backward, on CPU.

Every (kernel, N) runs in a fresh subprocess so that peak memory is its own: the worker allocates
q, k, v, resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5), runs one forward +
backward and reports ``VmHWM - VmRSS(before)`` (memory the call added on top of its inputs), then
times ``--repeats`` more forward + backward passes (median). B=1, H=4, Dh=64, fp32.

Kernels (window / kernel ~256 keys per query):
    dense_causal      torch SDPA, is_causal=True            (what the causal sparse kernels replace)
    dense             torch SDPA, no mask                   (what the bidirectional / 2-D ones replace)
    dense_causal_math, dense_math   the same on SDPA's math backend: N x N scores materialised (memory peers)
    sliding_window    causal, window=256
    sliding_window_recompute   the same, probabilities recomputed in backward (O(N * Dh) memory)
    neighborhood_1d   bidirectional, kernel_size=257 (odd)
    neighborhood_1d_recompute  the same with recompute=True
    block_local_1d    bidirectional, block_size=128, halo=64 (256-key window)
    neighborhood_2d   grid sqrt(N) x sqrt(N), 17x17 kernel (NA needs odd)
    block_local_2d    grid sqrt(N) x sqrt(N), block 8, halo 4 (16x16 window)
    axial_2d          grid sqrt(N) x sqrt(N), rows then columns

Usage:
    python benchmarks/long_context.py                    # N = 1k, 4k, 16k, 64k, 1 thread
    python benchmarks/long_context.py --quick            # N = 1k, 4k, one repeat, no files
    python benchmarks/long_context.py --sizes 1024,16384 --repeats 5 --dense-max 16384
    # drift-robust: the whole sweep 3 times in alternating order, medians over rounds
    python benchmarks/long_context.py --sizes 4096,16384 --rounds 3 --tag _rounds

Rounds: on a shared machine the speed drifts by tens of percent over minutes, so a slow spell that
hits only one (kernel, N) run skews its ratios. ``--rounds R`` repeats the sweep R times (order reversed
every other round) and reports for each (kernel, N) the median over rounds of the per-round medians.
Math-backend baselines are memory peers and are measured in the first round only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
B, H, DH = 1, 4, 64

KERNELS: dict[str, dict] = {
    "dense_causal": dict(dense=True, causal=True),
    "dense": dict(dense=True, causal=False),
    # the same SDPA call on its math backend: the N x N scores are materialised, as in every unfused
    # implementation (e.g. Hugging Face "eager" attention); the memory peer the O(N * w) claim is about
    "dense_causal_math": dict(dense=True, causal=True, math=True),
    "dense_math": dict(dense=True, causal=False, math=True),
    "sliding_window": dict(name="sliding_window", options=dict(window=256), causal=True),
    "sliding_window_recompute": dict(name="sliding_window", options=dict(window=256, recompute=True), causal=True),
    "neighborhood_1d": dict(name="neighborhood", options=dict(kernel_size=257), causal=False),
    "neighborhood_1d_recompute": dict(name="neighborhood", options=dict(kernel_size=257, recompute=True),
                                      causal=False),
    "block_local_1d": dict(name="block_local", options=dict(block_size=128, halo=64), causal=False),
    "neighborhood_2d": dict(name="neighborhood", options=dict(kernel_size=17), causal=False, grid=True),
    "block_local_2d": dict(name="block_local", options=dict(block_size=8, halo=4), causal=False, grid=True),
    "axial_2d": dict(name="axial", options=dict(mode="sequential"), causal=False, grid=True),
}
# the causal kernels compare with causal dense SDPA; every other kernel with bidirectional dense
BASELINE = {"sliding_window": "dense_causal", "sliding_window_recompute": "dense_causal"}
MATERIALISED = {"dense_causal": "dense_causal_math", "dense": "dense_math"}  # fused baseline -> math backend


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_call(spec: dict, N: int):
    """Build inputs and a closure running one forward + backward."""
    import torch
    import torch.nn.functional as F

    from attnlab.attention import AttentionContext, build_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, DH, generator=g).requires_grad_() for _ in range(3))
    if spec.get("dense"):
        import contextlib

        from torch.nn.attention import SDPBackend, sdpa_kernel

        def attn():
            with sdpa_kernel([SDPBackend.MATH]) if spec.get("math") else contextlib.nullcontext():
                return F.scaled_dot_product_attention(q, k, v, is_causal=spec["causal"])
    else:
        side = math.isqrt(N)
        grid = (side, side) if spec.get("grid") else None
        if grid and side * side != N:
            raise SystemExit(f"2-D kernels need a square N, got {N}")
        kernel = build_attention(spec["name"], **spec["options"])
        ctx = AttentionContext(causal=spec["causal"], grid=grid)

        def attn():
            return kernel(q, k, v, ctx)

    def step():
        for t in (q, k, v):
            t.grad = None
        attn().sum().backward()

    return step


def worker(kernel: str, N: int, repeats: int, threads: int) -> dict:
    """Runs inside the fresh subprocess: warm up small, then memory, then timing at N."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    spec = KERNELS[kernel]
    _make_call(spec, 1024)()  # load code paths / thread pools
    step = _make_call(spec, N)
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()  # first pass: builds cached plans, touches fresh memory
    peak_mb = (_status_kb("VmHWM") - base) / 1024
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"kernel": kernel, "N": N, "time_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "times_s": wall, "cpu_times_s": cpu, "peak_mb": peak_mb, "threads": torch.get_num_threads()}


# glibc malloc serves blocks above its mmap threshold (dynamic, at most 32 MB) with fresh mmaps, so every
# step of a kernel whose buffers exceed 32 MB page-faults and zeroes them anew (measured at N=16k: ~45k
# faults per sliding-window step, ~12% of its time; none at 4k). ``--tuned-malloc`` runs every worker,
# the dense baselines included, with the thresholds raised, the effect jemalloc / tcmalloc (the usual
# advice for PyTorch on CPU) have too.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
MALLOC_ENV: dict[str, str] = {}


def measure(kernel: str, N: int, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kernel, str(N), str(repeats), str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **MALLOC_ENV)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        return {"kernel": kernel, "N": N, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(sizes: list[int], repeats: int, dense_max: int, kernels: list[str], threads: int,
        rounds: int = 1) -> list[dict]:
    """Measure every (kernel, N) ``rounds`` times (alternating order); one row per (kernel, N)."""
    jobs = [(N, name) for N in sizes for name in kernels]
    runs: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(rounds):
        for N, name in (jobs if rnd % 2 == 0 else jobs[::-1]):
            spec = KERNELS[name]
            if (spec.get("dense") and N > dense_max) or (rnd and spec.get("math")):
                continue
            row = measure(name, N, repeats, threads)
            runs.setdefault((name, N), []).append(row)
            shown = (f"{row['time_s']:.3f} s  cpu {row['cpu_s']:.3f} s  {row['peak_mb']:.0f} MB"
                     if "time_s" in row else row)
            print(f"  round {rnd + 1}/{rounds}  {name:18s} N={N:6d}  {shown}", flush=True)
    rows = []
    for N, name in jobs:
        if KERNELS[name].get("dense") and N > dense_max:
            rows.append({"kernel": name, "N": N, "skipped": f"N > --dense-max {dense_max} (time, see notes)"})
            continue
        done = [r for r in runs[(name, N)] if "time_s" in r]
        if not done:
            rows.append(runs[(name, N)][0])
            continue
        row = dict(done[0])
        if len(done) > 1:
            row.update(time_s=statistics.median(r["time_s"] for r in done),
                       cpu_s=statistics.median(r["cpu_s"] for r in done),
                       peak_mb=statistics.median(r["peak_mb"] for r in done),
                       round_times_s=[r["time_s"] for r in done])
        rows.append(row)
    return rows


NOTES = """\
## How to read this

- Time: median of `--repeats` forward + backward passes after one warm-up pass, each (kernel, N) in a
  fresh process. Wall time and process CPU time are both reported; on a loaded shared machine the CPU
  time (single thread) is the steadier measure of the work, since it excludes time spent descheduled.
- Memory: `VmHWM - VmRSS` around the first forward + backward after the inputs exist (peak RSS reset
  via `/proc/self/clear_refs`), i.e. what the call adds: activations, kept probabilities (default
  `recompute=False`), gradients, masks, cached plans, allocator slack.
- Dense baselines are `torch.nn.functional.scaled_dot_product_attention` (causal for `sliding_window`,
  unmasked for the bidirectional / 2-D kernels). On CPU it runs a fused flash-style kernel whose memory
  is O(N * Dh), so dense memory is *not* quadratic here: the sparse kernels (also O(N * Dh), plus
  O(N * span) mask bits and per-chunk scratch) do not beat it on memory. An explicit N x N score or
  mask tensor, which every non-fused dense path needs, would be 4 * N^2 bytes per head
  (1 GB at N = 16k, 17 GB at N = 64k) and is never built by these kernels.
- `dense_causal_math` / `dense_math` are the same SDPA call forced onto PyTorch's math backend, which
  materialises the N x N scores and probabilities like every unfused implementation (Hugging Face "eager"
  attention, the reference formula); the last column compares with them. Against the fused kernel a
  1/10 memory ratio is out of reach for any kernel: the output and the three input gradients alone are
  4 * N * H * Dh * 4 bytes (64 MB at 16k), while fused SDPA's whole peak is ~80 MB.
- Dense is not run above `--dense-max` (default 16k) because of time, not memory: its cost grows as
  N^2, so at 64k it is ~16x its 16k time per pass.
- Shared 2-core machines: with the default 2 OpenMP threads, other processes' load stalls every
  parallel op; `--threads 1` (the default) gives reproducible numbers. The load average is in the JSON.
"""


def table(rows: list[dict]) -> str:
    """Markdown table: wall and CPU time, peak memory, and ratios vs the matching dense baseline."""
    by = {(r["kernel"], r["N"]): r for r in rows}
    math_rows = any(KERNELS[r["kernel"]].get("math") for r in rows)
    lines = ["| kernel | N | wall (s) | CPU (s) | peak extra MB | speedup vs dense (wall / CPU) | memory vs dense |"
             + (" memory vs N x N dense |" if math_rows else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if math_rows else "")]
    for r in rows:
        if "time_s" not in r:
            lines.append(f"| {r['kernel']} | {r['N']} | {r.get('skipped') or r.get('error')} | | | | |"
                         + (" |" if math_rows else ""))
            continue
        base_name = BASELINE.get(r["kernel"], "dense")
        base = by.get((base_name, r["N"]), {})
        materialised = by.get((MATERIALISED[base_name], r["N"]), {})
        is_dense = KERNELS[r["kernel"]].get("dense")
        speed = (f"{base['time_s'] / r['time_s']:.1f}x / {base['cpu_s'] / r['cpu_s']:.1f}x"
                 if "time_s" in base and not is_dense else "")
        mem = f"{r['peak_mb'] / base['peak_mb']:.2f}x" if base.get("peak_mb") and not is_dense else ""
        mem_nn = (f"{r['peak_mb'] / materialised['peak_mb']:.3f}x"
                  if materialised.get("peak_mb") and not is_dense else "")
        lines.append(f"| {r['kernel']} | {r['N']} | {r['time_s']:.3f} | {r['cpu_s']:.3f} | {r['peak_mb']:.0f} "
                     f"| {speed} | {mem} |" + (f" {mem_nn} |" if math_rows else ""))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(r["kernel"] for r in rows):
        pts = [r for r in rows if r["kernel"] == name and "time_s" in r]
        if not pts:
            continue
        style = "--" if KERNELS[name].get("dense") else "-"
        for ax, key in zip(axes, ("time_s", "cpu_s", "peak_mb")):
            ax.plot([p["N"] for p in pts], [max(p[key], 1e-3) for p in pts], style, marker="o", label=name)
    labels = ("fwd + bwd wall time (s)", "fwd + bwd CPU time (s)", "peak extra memory (MB)")
    for ax, label in zip(axes, labels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"attnlab structured sparse attention vs dense SDPA (B={B}, H={H}, Dh={DH}, fp32, CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024,4096,16384,65536", help="comma-separated N values")
    p.add_argument("--repeats", type=int, default=3, help="timed fwd+bwd passes per (kernel, N); median")
    p.add_argument("--quick", action="store_true", help="N = 1024,4096, 1 repeat, print only")
    p.add_argument("--dense-max", type=int, default=16384, help="largest N at which dense SDPA is run")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"subset of {list(KERNELS)}")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: reproducible on shared machines; 0 = torch default)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep this many times (alternating order); median over rounds")
    p.add_argument("--tuned-malloc", action="store_true",
                   help="raise glibc's mmap/trim thresholds in every worker (big buffers reused, not re-faulted)")
    p.add_argument("--tag", default="", help="suffix for the output files (e.g. '_1thread')")
    p.add_argument("--from-json", type=Path, help="re-render table and plot from a saved results JSON")
    p.add_argument("--worker", nargs=4, metavar=("KERNEL", "N", "REPEATS", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), int(args.worker[3]))))
        return
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        write_docs(saved["rows"], saved["meta"], args.tag, saved["meta"].get("command", ""))
        return
    sizes = [1024, 4096] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    kernels = args.kernels.split(",")
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        p.error(f"unknown kernels {unknown}; valid: {list(KERNELS)}")
    if args.tuned_malloc:
        MALLOC_ENV.update(TUNED_MALLOC)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    rows = run(sizes, repeats, args.dense_max, kernels, args.threads, 1 if args.quick else args.rounds)
    print(table(rows))
    print("\n".join(targets(rows)))
    if args.quick:
        return
    meta = {"B": B, "H": H, "Dh": DH, "dtype": "float32", "repeats": repeats, "rounds": args.rounds,
            "malloc_env": dict(MALLOC_ENV), "threads": args.threads or "default",
            "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
            "command": " ".join(argv if argv is not None else sys.argv[1:])}
    out = ROOT / "benchmarks" / "results" / f"long_context{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_docs(rows, meta, args.tag, meta["command"])
    print(f"wrote {out}")


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets at N=16k for sliding_window and neighborhood_1d, from this run's rows."""
    by = {(r["kernel"], r["N"]): r for r in rows if "time_s" in r}
    out = []
    for name in ("sliding_window", "neighborhood_1d"):
        base = BASELINE.get(name, "dense")
        r16, r4, d16 = by.get((name, 16384)), by.get((name, 4096)), by.get((base, 16384))
        m16 = by.get((MATERIALISED[base], 16384))
        if r16 and d16:
            x = d16["time_s"] / r16["time_s"]
            out.append(f"- {name}: speedup vs {base} at 16k >= 10x: {x:.1f}x ({'met' if x >= 10 else 'NOT met'})")
            x = r16["peak_mb"] / d16["peak_mb"]
            out.append(f"- {name}: memory vs fused {base} at 16k <= 0.1: {x:.2f} ({'met' if x <= 0.1 else 'NOT met'})")
        if r16 and m16:
            x = r16["peak_mb"] / m16["peak_mb"]
            out.append(f"- {name}: memory vs N x N {MATERIALISED[base]} at 16k <= 0.1: {x:.3f} "
                       f"({'met' if x <= 0.1 else 'NOT met'})")
        if r16 and r4:
            x = r16["time_s"] / r4["time_s"]
            out.append(f"- {name}: time(16k)/time(4k) <= 4.5: {x:.2f} ({'met' if x <= 4.5 else 'NOT met'})")
    return out


def write_docs(rows: list[dict], meta: dict, tag: str, command: str) -> None:
    """docs/long_context{tag}.md (header, table, notes) and docs/long_context{tag}.png."""
    head = (f"# Long-context attention benchmark\n\nB={B}, H={H}, Dh={DH}, fp32, CPU, torch threads = "
            f"{meta['threads']}, load average at end {meta['load_avg_at_end'][0]:.1f} on {meta['cpu_count']} "
            f"cores. Regenerate: `python benchmarks/long_context.py {command}`.\n\n")
    if meta.get("malloc_env"):
        head += f"Workers ran with `{' '.join(f'{k}={v}' for k, v in meta['malloc_env'].items())}`.\n\n"
    goals = targets(rows)
    goals = "## Targets\n\n" + "\n".join(goals) + "\n\n" if goals else ""
    (ROOT / "docs" / f"long_context{tag}.md").write_text(head + table(rows) + "\n\n" + goals + NOTES)
    plot(rows, ROOT / "docs" / f"long_context{tag}.png")
    print(f"wrote docs/long_context{tag}.md, docs/long_context{tag}.png")


if __name__ == "__main__":
    main()
