"""Per-document bf16 attention: attnlab's native kernel (AMX tiles, AVX-512 BF16) vs PyTorch's SDPA.

The workload is what an encoder meets in ``attnlab.embed``: a packed batch of 32 documents of one length
``L``, heads as MiniLM (12 x 32) or BERT-base (12 x 64), q/k/v strided views of one fused projection, bf16,
inference. Peers, in the same run and alternating order:

    sdpa_bf16     attnlab's PyTorch path: one fused SDPA call per group of equal-length documents
    native_amx    the native kernel on AMX tiles (when the CPU has AMX-BF16)
    native_avx512 the native kernel on AVX-512 BF16 instructions

Both native paths are timed past the document lengths up to which attnlab uses them (``MAX_DOC_LEN``:
1,024 tokens on both paths), which is how those limits were chosen. Reports the median time per
batch, the speedup over ``sdpa_bf16`` and useful GFLOP/s
(``4 * docs * H * L^2 * Dh``). Writes ``benchmarks/results/native_attention.json``.

Usage:
    python benchmarks/native_attention.py                    # L in 16..512, both head sizes, 1 thread
    python benchmarks/native_attention.py --lengths 80 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from common import machine_info, print_table, write_json
from attnlab import native
from attnlab.attention.engines.documents import per_document_attention
from attnlab.native.documents import MAX_DOC_LEN, documents_attention_bf16


def packed_batch(docs: int, length: int, heads: int, head_dim: int):
    """q, k, v ``(1, H, docs * L, Dh)`` bf16 views of a ``(1, T, 3 H Dh)`` projection; spans of the docs."""
    T = docs * length
    qkv = torch.randn(1, T, 3 * heads * head_dim).to(torch.bfloat16)
    q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in qkv.split(heads * head_dim, -1))
    return q, k, v, [[(i * length, (i + 1) * length) for i in range(docs)]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="16,32,64,80,128,256,512", help="document lengths, comma separated")
    ap.add_argument("--head-dims", default="32,64")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--name", default="native_attention")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    MAX_DOC_LEN.update(amx=1 << 20, avx512=1 << 20)  # measure past the limits attnlab uses in production
    status = native.native_status()
    print(f"native kernel: {status}; {args.threads} thread(s), {args.docs} documents per batch, {args.heads} heads")
    if not status.startswith("available"):
        raise SystemExit("the native kernel is not available here: nothing to compare")
    peers = {"sdpa_bf16": lambda q, k, v, s: per_document_attention(q, k, v, s, causal=False, scale=None),
             "native_avx512": lambda q, k, v, s: documents_attention_bf16(q, k, v, s, causal=False, scale=None,
                                                                          amx=False)}
    if native.load().amx:
        peers["native_amx"] = lambda q, k, v, s: documents_attention_bf16(q, k, v, s, causal=False, scale=None,
                                                                          amx=True)
    rows = []
    for head_dim in map(int, args.head_dims.split(",")):
        for length in map(int, args.lengths.split(",")):
            q, k, v, spans = packed_batch(args.docs, length, args.heads, head_dim)
            times: dict[str, list[float]] = {name: [] for name in peers}
            with torch.inference_mode():
                for name, fn in peers.items():
                    fn(q, k, v, spans)  # warm-up
                for rep in range(args.repeats):
                    order = list(peers) if rep % 2 == 0 else list(reversed(peers))
                    for name in order:
                        start = time.perf_counter()
                        peers[name](q, k, v, spans)
                        times[name].append(time.perf_counter() - start)
            flops = 4 * args.docs * args.heads * length * length * head_dim
            base = sorted(times["sdpa_bf16"])[len(times["sdpa_bf16"]) // 2]
            for name, ts in times.items():
                med = sorted(ts)[len(ts) // 2]
                rows.append({"head_dim": head_dim, "L": length, "path": name, "ms": 1e3 * med,
                             "speedup vs sdpa": base / med, "GFLOP/s": flops / med / 1e9})
    table = print_table(rows, ["head_dim", "L", "path", "ms", "speedup vs sdpa", "GFLOP/s"])
    path = write_json(args.name, {"machine": machine_info(), "native": status, "args": vars(args), "rows": rows,
                                  "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
