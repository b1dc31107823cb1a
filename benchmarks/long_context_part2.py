"""Long-context benchmark, part 2: linear (SLAB), routing, Combiner and SSA (pathways) vs dense SDPA.

Same method as ``benchmarks/long_context.py`` (imported, not copied): every (kernel, N) runs in a
fresh subprocess that warms up at N=1024, resets the peak-RSS counter, runs one forward + backward
and reports ``VmHWM - VmRSS(before)``, then times ``--repeats`` more passes (median). B=1, H=4,
Dh=64, fp32, causal (these kernels are compared with ``dense_causal`` = SDPA ``is_causal=True``).
This script only adds the kernels and builds them with the structural arguments the model shell
would pass (``num_heads``, ``head_dim``, ``max_seq_len = N``): SLAB's depth-wise convolution and key
position term need them.

Kernels:
    linear      SLAB simplified linear attention, causal chunked form (chunk 64, DWC 5, key position P)
    routing     causal routing, 16 clusters, window 256 (each query sees <= 256 keys of its cluster)
    combiner    Combiner-Fixed, segment 128 (the official LM default)
    pathways    SSA around SDPA in training mode, keep = 1/4, per-head partitions

Targets: at N=16k ``linear`` >= 20x faster than dense with memory growing linearly and
time(16k) / time(4k) <= 4.5; ``routing`` and ``combiner`` time(16k) / time(4k) <= 6. Ratios come from
one run, so machine load (shared CPUs) hits every kernel alike only to the extent it is steady; check
``load_avg``. With 2 threads and another process busy on one core, every multi-threaded op can wait
a scheduler slice for its second thread: kernels made of many ops (all but dense SDPA) lose most
then, and ``--threads 1`` gives the steadier comparison.

Usage:
    python benchmarks/long_context_part2.py                     # N = 1k, 2k, 4k, 8k, 16k
    python benchmarks/long_context_part2.py --quick             # N = 1k, 4k, one repeat, no files
    python benchmarks/long_context_part2.py --sizes 4096,16384 --threads 1 --out long_context_part2_t1
    # dense + linear only, as in results/long_context_part2_linear{,_t1}.json (with --out, --threads 1):
    python benchmarks/long_context_part2.py --kernels dense_causal,linear --sizes 1024,4096,16384
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import long_context as lc  # noqa: E402  (the shared measurement protocol)
from common import machine_info, write_json  # noqa: E402

ROOT = lc.ROOT
PART2: dict[str, dict] = {
    "linear": dict(name="linear", options=dict(), causal=True),
    "routing": dict(name="routing", options=dict(num_clusters=16, window=256), causal=True),
    "combiner": dict(name="combiner", options=dict(segment=128), causal=True),
    "pathways": dict(name="pathways", options=dict(keep=0.25), causal=True, train=True),
}
KERNEL_NAMES = ["dense_causal", *PART2]


def _install() -> None:
    """Add the part-2 kernels to long_context's tables and give them structural arguments."""
    lc.KERNELS.update(PART2)
    lc.BASELINE.update({name: "dense_causal" for name in PART2})
    base_make_call = lc._make_call

    def make_call(spec: dict, N: int):
        if spec.get("dense"):
            return base_make_call(spec, N)
        import torch

        from attnlab.attention import AttentionContext, build_attention

        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(lc.B, lc.H, N, lc.DH, generator=g).requires_grad_() for _ in range(3))
        structural = dict(num_heads=lc.H, num_kv_heads=lc.H, head_dim=lc.DH, max_seq_len=N)
        torch.manual_seed(0)
        kernel = build_attention(spec["name"], structural=structural, **spec["options"]).train(spec.get("train", True))
        ctx_gen = torch.Generator().manual_seed(0)

        def step():
            for t in (q, k, v):
                t.grad = None
            kernel(q, k, v, AttentionContext(causal=spec["causal"], generator=ctx_gen)).sum().backward()

        return step

    lc._make_call = make_call


def worker(kernel: str, N: int, repeats: int, threads: int) -> dict:
    """long_context's worker (it takes ``threads`` in newer versions of that file)."""
    if "threads" in inspect.signature(lc.worker).parameters:
        return lc.worker(kernel, N, repeats, threads)
    return lc.worker(kernel, N, repeats)


def measure(kernel: str, N: int, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kernel, str(N), str(repeats), str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        return {"kernel": kernel, "N": N, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(sizes: list[int], repeats: int, kernels: list[str], threads: int) -> list[dict]:
    from tqdm import tqdm

    rows = []
    jobs = [(N, name) for N in sizes for name in kernels]
    for N, name in tqdm(jobs, desc="long-context part 2", unit="run"):
        row = measure(name, N, repeats, threads)
        rows.append(row)
        shown = f"{row['time_s']:.3f} s  {row['peak_mb']:.0f} MB" if "time_s" in row else row
        tqdm.write(f"  {name:12s} N={N:6d}  {shown}")
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, computed from this run's rows (missing sizes -> not evaluated)."""
    by = {(r["kernel"], r["N"]): r for r in rows if "time_s" in r}
    out = []

    def ratio(name, a, b, key):
        return by[(name, a)][key] / by[(name, b)][key] if (name, a) in by and (name, b) in by else None

    speed = None
    if ("dense_causal", 16384) in by and ("linear", 16384) in by:
        speed = by[("dense_causal", 16384)]["time_s"] / by[("linear", 16384)]["time_s"]
    out.append({"target": "linear speedup vs dense at 16k >= 20x", "value": speed,
                "met": speed is not None and speed >= 20})
    mem = ratio("linear", 16384, 4096, "peak_mb")
    out.append({"target": "linear memory(16k)/memory(4k) ~ 4 (linear growth)", "value": mem,
                "met": mem is not None and mem <= 5})
    r = ratio("linear", 16384, 4096, "time_s")
    out.append({"target": "linear time(16k)/time(4k) <= 4.5", "value": r, "met": r is not None and r <= 4.5})
    for name in ("routing", "combiner"):
        r = ratio(name, 16384, 4096, "time_s")
        out.append({"target": f"{name} time(16k)/time(4k) <= 6", "value": r, "met": r is not None and r <= 6})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="comma-separated N values")
    p.add_argument("--repeats", type=int, default=3, help="timed fwd+bwd passes per (kernel, N); median")
    p.add_argument("--quick", action="store_true", help="N = 1024,4096, 1 repeat, print only")
    p.add_argument("--kernels", default=",".join(KERNEL_NAMES), help=f"subset of {KERNEL_NAMES}")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch default)")
    p.add_argument("--out", default="long_context_part2", help="results file name in benchmarks/results/")
    p.add_argument("--worker", nargs=4, metavar=("KERNEL", "N", "REPEATS", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _install()
    if args.worker:
        print(json.dumps(worker(args.worker[0], *map(int, args.worker[1:]))))
        return
    kernels = args.kernels.split(",")
    unknown = sorted(set(kernels) - set(KERNEL_NAMES))
    if unknown:
        p.error(f"unknown kernels {unknown}; valid: {KERNEL_NAMES}")
    sizes = [1024, 4096] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    load_start = os.getloadavg()
    rows = run(sizes, repeats, kernels, args.threads)
    print(lc.table(rows))
    checks = targets(rows)
    for c in checks:
        verdict = "not run" if c["value"] is None else f"{c['value']:.2f} -> {'met' if c['met'] else 'NOT met'}"
        print(f"  {c['target']}: {verdict}")
    if args.quick:
        return
    meta = {"B": lc.B, "H": lc.H, "Dh": lc.DH, "dtype": "float32", "repeats": repeats, "causal": True,
            "torch_threads": args.threads or "default",
            "kernels": {k: PART2.get(k, lc.KERNELS.get(k)) for k in kernels}, **machine_info(),
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    path = write_json(args.out, {"meta": meta, "rows": rows, "targets": checks})
    command = " ".join(argv if argv is not None else sys.argv[1:])
    doc = write_docs(rows, checks, meta, args.out, command)
    print(f"wrote {path}, {doc} and {doc.with_suffix('.png')}")


def write_docs(rows: list[dict], checks: list[dict], meta: dict, name: str, command: str) -> Path:
    """docs/{name}.md (setup, table, target verdicts) and docs/{name}.png (time and memory vs N, log-log)."""
    lines = [f"# Long-context benchmark, part 2\n",
             f"B={lc.B}, H={lc.H}, Dh={lc.DH}, fp32, causal, forward + backward, torch threads = "
             f"{meta['torch_threads']}, load average {meta['load_avg_start'][0]:.1f} at start, "
             f"{meta['load_avg_end'][0]:.1f} at end. Regenerate: `python benchmarks/long_context_part2.py {command}`.\n",
             "Kernels: " + "; ".join(f"`{k}` {PART2[k]['options'] or 'defaults'}" for k in PART2 if k in meta["kernels"])
             + ". Dense baseline: SDPA with `is_causal=True` (fused flash-style on CPU, O(N * Dh) memory).\n",
             lc.table(rows), "\n## Targets\n"]
    for c in checks:
        verdict = "not run" if c["value"] is None else f"{c['value']:.2f} ({'met' if c['met'] else 'NOT met'})"
        lines.append(f"- {c['target']}: {verdict}")
    doc = ROOT / "docs" / f"{name}.md"
    doc.write_text("\n".join(lines) + "\n\nMethod and memory notes: [long_context.md](long_context.md).\n")
    lc.plot(rows, doc.with_suffix(".png"))
    return doc


if __name__ == "__main__":
    main()
