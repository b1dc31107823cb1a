"""fp32 attention: attnlab's native per-document kernel (AVX-512 FMA) vs PyTorch's SDPA, forward and
forward + backward.

Two workloads, q/k/v strided views of one fused projection as attnlab's attention shell makes them:

    gpt      causal, batch 8, 6 heads x 64 (the GPT of benchmarks/train_step.py), one document per row
    encoder  packed batch of 32 documents, 12 heads x 64, full attention, inference only

Peers, in the same run and alternating order: ``sdpa`` (PyTorch's fused kernel, what attnlab uses without
the native kernel: ``F.scaled_dot_product_attention`` for the GPT rows, one call per group of equal
documents for the encoder) and ``native``. Timed past the length up to which attnlab uses the native
kernel (``MAX_DOC_LEN_FP32``), which is how that limit was chosen. Reports median times, the speedup over
``sdpa`` and useful GFLOP/s (causal counts half the score matrix; backward 2.5x forward). Writes
``benchmarks/results/native_attention_fp32.json``.

Usage:
    python benchmarks/native_attention_fp32.py                 # lengths 64..1024, 2 threads
    python benchmarks/native_attention_fp32.py --lengths 256 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import machine_info, print_table, write_json
from attnlab import native
from attnlab.attention.engines.documents import per_document_attention
from attnlab.native import documents_fp32
from attnlab.native.documents_fp32 import documents_attention_fp32


def strided_qkv(batch: int, length: int, heads: int, head_dim: int):
    """q, k, v ``(B, H, L, Dh)`` fp32 views of a ``(B, L, 3 H Dh)`` projection (what the shell hands over)."""
    qkv = torch.randn(batch, length, 3 * heads * head_dim)
    return tuple(t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in qkv.split(heads * head_dim, -1))


def timed(peers: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each peer, alternating their order every repetition."""
    for fn in peers.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in peers}
    for rep in range(repeats):
        for name in (list(peers) if rep % 2 == 0 else list(reversed(peers))):
            start = time.perf_counter()
            peers[name]()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def gpt_peers(length: int, train: bool) -> dict:
    q, k, v = strided_qkv(8, length, 6, 64)
    spans = [[(0, length)]] * 8
    dout = torch.randn(q.shape)

    def run(attend):
        if not train:
            with torch.inference_mode():
                return attend(q, k, v)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        attend(*leaves).backward(dout)

    return {"sdpa": lambda: run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True)),
            "native": lambda: run(lambda a, b, c: documents_attention_fp32(a, b, c, spans, causal=True, scale=None))}


def encoder_peers(length: int) -> dict:
    docs = 32
    q, k, v = strided_qkv(1, docs * length, 12, 64)
    spans = [[(i * length, (i + 1) * length) for i in range(docs)]]

    def run(attend):
        with torch.inference_mode():
            return attend()

    return {"sdpa": lambda: run(lambda: per_document_attention(q, k, v, spans, causal=False, scale=None)),
            "native": lambda: run(lambda: documents_attention_fp32(q, k, v, spans, causal=False, scale=None))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="64,128,256,512,1024", help="document lengths, comma separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--name", default="native_attention_fp32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    status = native.native_status("attention_fp32")
    print(f"native kernels: {status}; {args.threads} thread(s)")
    if not status.startswith("available"):
        raise SystemExit("the native kernel is not available here: nothing to compare")
    documents_fp32.MAX_DOC_LEN_FP32 = 1 << 20  # measure past the limit attnlab uses in production
    rows = []
    for length in map(int, args.lengths.split(",")):
        workloads = {("gpt", "forward"): (gpt_peers(length, False), 8 * 6 * 64 * 2 * length**2),
                     ("gpt", "forward+backward"): (gpt_peers(length, True), 3.5 * 8 * 6 * 64 * 2 * length**2),
                     ("encoder", "forward"): (encoder_peers(length), 32 * 12 * 64 * 4 * length**2)}
        for (workload, passes), (peers, flops) in workloads.items():
            med = timed(peers, args.repeats)
            for name, seconds in med.items():
                rows.append({"workload": workload, "pass": passes, "L": length, "path": name, "ms": 1e3 * seconds,
                             "speedup vs sdpa": med["sdpa"] / seconds, "GFLOP/s": flops / seconds / 1e9})
            print(f"L={length} {workload} {passes}: native {med['sdpa'] / med['native']:.2f}x sdpa", flush=True)
    table = print_table(rows, ["workload", "pass", "L", "path", "ms", "speedup vs sdpa", "GFLOP/s"])
    path = write_json(args.name, {"machine": machine_info(), "native": status, "args": vars(args), "rows": rows,
                                  "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
