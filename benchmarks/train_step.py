"""Training-step throughput: attnlab GPT vs Hugging Face GPT2LMHeadModel at the same shape.

Full step = forward + backward + AdamW. Shape: 6 layers, 6 heads, dim 384, context 256,
vocab 256, batch 8; fp32 and bf16 autocast; runs alternate between the two models and we report
medians, the ratio, and model FLOP utilisation (MFU) against a bf16/fp32 matmul peak (2048^3 GEMM) measured
inside every repetition, next to the steps: ``MFU`` divides the median throughput by the median peak,
``paired MFU`` is the median over repetitions of throughput / that repetition's peak, and ``paired vs
HF`` the median over repetitions of the two models' step-time ratio (this shared machine's speed drifts;
the pairing cancels it). FLOPs per token follow the PaLM/nanoGPT estimate
``6 N + 12 L H Dh T``.

Both models run in one process with the same allocator setting: by default glibc keeps freed memory for
the next step (``attnlab.train.memory.retain_freed_memory``, what ``attnlab train`` does on CPU; without
it each step page-faults ~120 MB of fresh activations back in); ``--malloc default`` leaves glibc alone.
Both models get the same math: the same activation (``--activation``, default exact erf GELU; GPT-2's
``gelu_tanh`` costs ~5x more on CPU for both) and the same optimizer, fused AdamW, which is what
``attnlab train`` uses (``--optimizer foreach`` for the multi-tensor one).

    python benchmarks/train_step.py            # full run
    python benchmarks/train_step.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from common import machine_info, matmul_peak, print_table, write_json

SHAPE = dict(num_layers=6, num_heads=6, dim=384, max_seq_len=256, vocab_size=256)


HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


def build_attnlab(activation: str = "gelu"):
    from attnlab.models import create_model

    return create_model("gpt", activation=activation, dropout=0.0, **SHAPE)


def build_hf(activation: str = "gelu"):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["max_seq_len"], n_embd=SHAPE["dim"],
                     n_layer=SHAPE["num_layers"], n_head=SHAPE["num_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                     activation_function=HF_ACTIVATION[activation])
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def make_step(model, kind: str, batch: torch.Tensor, precision: str, optimizer: str = "fused"):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **{optimizer: True})
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    x, y = batch[:, :-1], batch[:, 1:]

    def step():
        with ctx():
            logits = model(x).logits if kind == "hf" else model(x)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def flops_per_token(model) -> float:
    n = sum(p.numel() for p in model.parameters())
    L, H, T = SHAPE["num_layers"], SHAPE["num_heads"], SHAPE["max_seq_len"]
    return 6 * n + 12 * L * H * (SHAPE["dim"] // H) * T


def run(precision: str, repeats: int, batch_size: int, activation: str, optimizer: str) -> dict:
    torch.manual_seed(0)
    batch = torch.randint(0, SHAPE["vocab_size"], (batch_size, SHAPE["max_seq_len"] + 1))
    models = {"attnlab": build_attnlab(activation), "hf": build_hf(activation)}
    steps = {k: make_step(m, k, batch, precision, optimizer) for k, m in models.items()}
    for s in steps.values():  # warm-up
        s(), s()
    times = {k: [] for k in steps}
    peaks = []  # the matmul peak measured inside every repetition, next to the steps it is compared with
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for _ in range(repeats):  # alternate so drifts in machine load hit both equally
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
        peaks.append(matmul_peak(dtype, repeats=3))
    tokens = batch_size * SHAPE["max_seq_len"]
    out = {"peak_gflops": statistics.median(peaks), "peaks_per_rep": [round(p, 1) for p in peaks]}
    for k, ts in times.items():
        med = statistics.median(ts)
        flops = flops_per_token(models[k]) * tokens
        out[k] = {"median_s": med, "tokens_per_s": tokens / med, "model_tflops": flops / med / 1e12,
                  "mfu": flops / med / 1e9 / out["peak_gflops"],
                  "mfu_paired": statistics.median(flops / t / 1e9 / p for t, p in zip(ts, peaks)),
                  "times_s": [round(t, 4) for t in ts], "params": sum(p.numel() for p in models[k].parameters())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="5 repetitions")
    ap.add_argument("--activation", choices=sorted(HF_ACTIVATION), default="gelu",
                    help="MLP activation for both models (gelu_tanh = GPT-2's gelu_new)")
    ap.add_argument("--optimizer", choices=["fused", "foreach"], default="fused",
                    help="AdamW implementation for both models (attnlab train uses fused)")
    ap.add_argument("--malloc", choices=["retain", "default"], default="retain",
                    help="retain: keep freed memory between steps as `attnlab train` does on CPU; default: glibc's own")
    args = ap.parse_args()
    malloc = "glibc default"
    if args.malloc == "retain":
        from attnlab.train.memory import retain_freed_memory

        malloc = retain_freed_memory()
    print(f"allocator: {malloc}")
    repeats = 5 if args.quick else args.repeats
    rows, results, peaks = [], {}, {}
    for precision in ("fp32", "bf16"):
        res = run(precision, repeats, args.batch_size, args.activation, args.optimizer)
        results[precision], peaks[precision] = res, res["peak_gflops"]
        for k in ("attnlab", "hf"):
            r = res[k]
            paired = statistics.median(h / a for a, h in zip(r["times_s"], res["hf"]["times_s"]))
            rows.append({"precision": precision, "model": k, "tokens/s": r["tokens_per_s"],
                         "step ms": r["median_s"] * 1e3, "MFU %": 100 * r["mfu"], "paired MFU %": 100 * r["mfu_paired"],
                         "vs HF": r["tokens_per_s"] / res["hf"]["tokens_per_s"], "paired vs HF": paired})
    print(f"matmul peak (median over repetitions): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s;"
          f" bf16 per repetition {results['bf16']['peaks_per_rep']}")
    table = print_table(rows, ["precision", "model", "tokens/s", "step ms", "MFU %", "paired MFU %", "vs HF",
                               "paired vs HF"])
    name = "train_step" if args.activation == "gelu" else f"train_step_{args.activation}"
    name += "" if args.malloc == "retain" else "_default_malloc"
    path = write_json(name, {"shape": SHAPE, "batch_size": args.batch_size, "repeats": repeats,
                                     "activation": args.activation, "optimizer": args.optimizer, "malloc": malloc,
                                     "matmul_peak_gflops": peaks, "results": results, "table": table,
                                     "machine": machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
