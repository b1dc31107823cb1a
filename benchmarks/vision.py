"""Vision throughput: attnlab's Swin-T and ViT-B/16 vs Hugging Face transformers on identical weights.

Forward (inference, no grad) and training step (forward + backward + fused AdamW on a cross-entropy loss) images/s
at 224 px, batch 8, fp32 and bf16 autocast, 2 threads. The models are built by transformers with random weights,
saved, and loaded by ``attnlab.load_pretrained`` (so both run the same numbers; logits are checked equal first). Each
library runs in a process of its own, so neither's memory allocator state changes the other's time (in one
process, attnlab's allocations once moved transformers' Swin-T training step by 10%). Both processes keep freed
memory for the next step (glibc's mmap threshold at 32 MiB, trim threshold 2 GiB: what ``attnlab train`` sets):
with glibc's adaptive thresholds a step's large activations come from fresh pages or from the heap depending on
the process's history, and the training cells' ratios wandered from 1.0x to 1.4x between runs of the same code
(``--allocator default`` measures that way). The two alternate within every repetition, one step at a time (the
other process waits); ``paired`` is the median over repetitions of transformers' time over attnlab's (the shared
machine's speed drifts, the pairing cancels it).

Both libraries spend most of a step in the same matrix products (oneDNN/MKL GEMMs). One profiled step per library
gives each one's GEMM share and ``bound``: the paired ratio over attnlab's GEMM share, i.e. transformers' step time
over attnlab's time in matrix products, the ratio attnlab would reach if everything but its matrix products cost
nothing (no implementation that runs the same GEMMs can beat it). Fused attention kernels (transformers' SDPA,
attnlab's native ones) count as everything else. ``gemm GF/s`` is a large square matmul's rate on this machine, for
scale.

    python benchmarks/vision.py            # 10 repetitions per cell (a training step's time varies ~20% from one
                                           # step to the next on this machine)
    python benchmarks/vision.py --quick    # 3, forward only for ViT-B/16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch

from common import machine_info, matmul_peak, print_table, write_json

BATCH = 8


def build_pair(arch: str, folder: str):
    """(transformers model, attnlab model) with the same random weights, both in eval mode."""
    import transformers

    import attnlab

    if arch == "swin-t":
        cfg = transformers.SwinConfig(num_labels=1000)  # the defaults are Swin-T
        hf = transformers.SwinForImageClassification(cfg)
    else:
        cfg = transformers.ViTConfig(num_labels=1000)  # the defaults are ViT-B/16
        hf = transformers.ViTForImageClassification(cfg)
    hf.config._attn_implementation = "sdpa"
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # transformers zeroes some tables; make every weight count
    hf.save_pretrained(folder)
    ours = attnlab.load_pretrained(folder)
    return hf.eval(), ours.eval()


def logits(model, kind: str, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).logits if kind == "hf" else model.classify(x)


def make_steps(model, kind: str, x: torch.Tensor, y: torch.Tensor, precision: str):
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def forward():
        with torch.no_grad(), ctx():
            logits(model, kind, x)

    def train():
        model.train()
        with ctx():
            loss = torch.nn.functional.cross_entropy(logits(model, kind, x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()

    return {"forward": forward, "train": train}


# matrix products; attnlab's inference MLP runs its first matmul with the activation fused (mostly GEMM time)
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 pointed at the null device meanwhile (C++ logging bypasses ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def gemm_share(step) -> tuple[float, float]:
    """(seconds of one profiled call of ``step``, seconds of it inside GEMM kernels), by the ops' self CPU time."""
    from torch.profiler import profile

    with quiet_stderr(), profile() as prof:  # the profiler's C++ side logs two lines per use on stderr
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    return total, gemm


def load_model(lib: str, folder: str):
    """The library's model of the checkpoint saved in ``folder``, in eval mode."""
    if lib == "hf":
        import transformers

        config = transformers.AutoConfig.from_pretrained(folder)
        config._attn_implementation = "sdpa"
        return transformers.AutoModelForImageClassification.from_pretrained(folder, config=config).eval()
    import attnlab

    return attnlab.load_pretrained(folder).eval()


def worker(lib: str, folder: str, precision: str, retain: bool, conn) -> None:
    """One library in a process of its own: loads its model and the shared inputs from ``folder``, then answers
    the parent's requests on ``conn`` until it closes: ``("logits",)`` -> fp32 logits, ``("time", mode)`` ->
    seconds of one step, ``("profile", mode)`` -> :func:`gemm_share` of one step. ``retain``: glibc keeps freed
    memory for the next step, as ``attnlab train`` sets it (``attnlab.train.memory``)."""
    from safetensors.torch import load_file

    if retain:
        from attnlab.train.memory import retain_freed_memory

        retain_freed_memory()
    torch.set_num_threads(2)
    model = load_model(lib, folder)
    inputs = load_file(os.path.join(folder, "inputs.safetensors"))
    x, y = inputs["x"], inputs["y"]
    steps = make_steps(model, lib, x, y, precision)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request[0] == "logits":
            with torch.no_grad():
                conn.send(logits(model, lib, x))
        elif request[0] == "time":
            t0 = time.perf_counter()
            steps[request[1]]()
            conn.send(time.perf_counter() - t0)
        else:
            conn.send(gemm_share(steps[request[1]]))


@contextlib.contextmanager
def workers(folder: str, precision: str, retain: bool):
    """``{"attnlab": conn, "hf": conn}``: one :func:`worker` process per library (``spawn``: fresh interpreters),
    stopped on exit."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    try:
        for lib in ("attnlab", "hf"):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(lib, folder, precision, retain, child), daemon=True)
            proc.start()
            child.close()
            conns[lib] = parent
            procs.append(proc)
        yield conns
    finally:
        for conn in conns.values():
            conn.close()
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def ask(conn, *request):
    conn.send(request)
    return conn.recv()


def run(arch: str, precision: str, repeats: int, modes: list[str], retain: bool) -> dict:
    """One (architecture, precision): both libraries in their own processes, one step at a time (the other
    process waits meanwhile), attnlab first in every repetition."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        hf, _ = build_pair(arch, folder)
        del hf
        save_file({"x": torch.randn(BATCH, 3, 224, 224), "y": torch.randint(0, 1000, (BATCH,))},
                  os.path.join(folder, "inputs.safetensors"))
        with workers(folder, precision, retain) as conns:
            err = (ask(conns["hf"], "logits") - ask(conns["attnlab"], "logits")).abs().max().item()
            out = {"max_logit_diff_fp32": err}
            for mode in modes:
                for _ in range(2):  # warm-up: the optimizer's state, the processes' heaps
                    for conn in conns.values():
                        ask(conn, "time", mode)
                times = {lib: [] for lib in conns}
                for _ in range(repeats):
                    for lib in ("attnlab", "hf"):
                        times[lib].append(ask(conns[lib], "time", mode))
                out[mode] = {lib: {"images_per_s": BATCH / statistics.median(ts),
                                   "times_s": [round(t, 4) for t in ts]} for lib, ts in times.items()}
                out[mode]["paired"] = statistics.median(h / a for a, h in zip(times["attnlab"], times["hf"]))
                for lib, conn in conns.items():
                    total, gemm = ask(conn, "profile", mode)
                    out[mode][lib].update(profiled_s=round(total, 4), gemm_s=round(gemm, 4), gemm_share=gemm / total)
                # attnlab's step with everything but its matrix products free: its time times its GEMM share (a
                # share is steadier across one profiled step than the step's time, which the machine's drift moves)
                out[mode]["bound"] = out[mode]["paired"] / out[mode]["attnlab"]["gemm_share"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 repetitions; ViT-B/16 forward only")
    ap.add_argument("--arch", choices=["swin-t", "vit-b16"], nargs="*", default=["swin-t", "vit-b16"])
    ap.add_argument("--allocator", choices=["retain", "default"], default="retain",
                    help="retain (default): both processes keep freed memory between steps, as attnlab train "
                         "does; default: glibc's own adaptive thresholds")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    rows, results = [], {}
    peak = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in ("fp32", "bf16")}
    for arch in args.arch:
        modes = ["forward"] if args.quick and arch == "vit-b16" else ["forward", "train"]
        for precision in ("fp32", "bf16"):
            res = results[f"{arch}/{precision}"] = run(arch, precision, repeats, modes, args.allocator == "retain")
            for mode in modes:
                r = res[mode]
                rows.append({"model": arch, "precision": precision, "step": mode,
                             "attnlab img/s": r["attnlab"]["images_per_s"], "hf img/s": r["hf"]["images_per_s"],
                             "paired vs HF": r["paired"], "GEMM share attnlab": r["attnlab"]["gemm_share"],
                             "GEMM share HF": r["hf"]["gemm_share"], "bound": r["bound"],
                             "gemm GF/s": peak[precision], "max |logit diff|": res["max_logit_diff_fp32"]})
    table = print_table(rows, ["model", "precision", "step", "attnlab img/s", "hf img/s", "paired vs HF",
                               "GEMM share attnlab", "GEMM share HF", "bound", "gemm GF/s", "max |logit diff|"])
    path = write_json("vision", {"batch": BATCH, "repeats": repeats, "allocator": args.allocator,
                                 "machine": machine_info(), "results": results,
                                 "matmul_gflops": peak, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
