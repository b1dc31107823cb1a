"""Encoder-decoder generation speed: attnlab's T5 vs Hugging Face transformers' T5 on identical weights.

A 6 + 6 layer T5 (d_model 256, 4 heads of 64, d_ff 1024, vocabulary 8,000) is built by transformers with random
weights, saved, and loaded by ``attnlab.load_pretrained``; the first decodes are checked token-for-token equal.
Greedy decoding and beam search (4 beams) of 32 new tokens for batch 8 of 64-token sources, no end token (every
sequence runs the full length; transformers gets ``eos_token_id=None`` too), fp32 and bf16 autocast, 2 threads.
Tokens/s counts the generated tokens of the batch (``batch * new tokens``), source encoding included. The two
libraries alternate within every repetition; ``paired`` is the median over repetitions of transformers' time
over attnlab's (the shared machine's speed drifts, the pairing cancels it). ``without native`` runs attnlab with
``attnlab.native.disabled()``: PyTorch's GEMM and SDPA instead of the decoding kernels (:mod:`attnlab.native.decode`),
the part of the speed-up they give.

    python benchmarks/seq2seq.py            # 7 repetitions
    python benchmarks/seq2seq.py --quick    # 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch

from common import machine_info, print_table, write_json

SHAPE = dict(vocab_size=8000, d_model=256, d_kv=64, d_ff=1024, num_layers=6, num_decoder_layers=6, num_heads=4)
BATCH, SRC_LEN, NEW = 8, 64, 32


def build_pair(folder: str):
    import transformers

    import attnlab

    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(dropout_rate=0.0, **SHAPE)).eval()
    hf.save_pretrained(folder)
    return hf, attnlab.load_pretrained(folder).eval()


def decoders(hf, ours, src: torch.Tensor, beams: int, precision: str):
    import attnlab.native
    from attnlab.infer.seq2seq import generate_seq2seq

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def run_hf():
        with torch.no_grad(), ctx():
            return hf.generate(input_ids=src, max_new_tokens=NEW, num_beams=beams, do_sample=False,
                               decoder_start_token_id=0, eos_token_id=None, pad_token_id=0)[:, 1:]

    def run_ours():
        with torch.no_grad(), ctx():
            return generate_seq2seq(ours, src, bos_id=0, eos_id=None, max_new_tokens=NEW, num_beams=beams)

    def run_ours_torch():
        with attnlab.native.disabled():
            return run_ours()

    return {"attnlab": run_ours, "attnlab_torch": run_ours_torch, "hf": run_hf}


def run(precision: str, beams: int, repeats: int, hf, ours) -> dict:
    src = torch.randint(2, SHAPE["vocab_size"], (BATCH, SRC_LEN), generator=torch.Generator().manual_seed(1))
    runs = decoders(hf, ours, src, beams, precision)
    first = {lib: fn() for lib, fn in runs.items()}  # warm-up, and the tokens compared
    same = first["attnlab"].tolist() == first["hf"].tolist() == first["attnlab_torch"].tolist()
    times = {lib: [] for lib in runs}
    for _ in range(repeats):
        for lib in runs:
            t0 = time.perf_counter()
            runs[lib]()
            times[lib].append(time.perf_counter() - t0)
    tokens = BATCH * NEW
    return {"same_tokens": same, **{lib: {"tokens_per_s": tokens / statistics.median(ts),
                                          "times_s": [round(t, 4) for t in ts]} for lib, ts in times.items()},
            "paired": statistics.median(h / a for a, h in zip(times["attnlab"], times["hf"])),
            "paired_torch_only": statistics.median(h / a for a, h in zip(times["attnlab_torch"], times["hf"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repetitions")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as folder:
        hf, ours = build_pair(folder)
    rows, results = [], {}
    for precision in ("fp32", "bf16"):
        for beams in (1, 4):
            r = results[f"{precision}/beams{beams}"] = run(precision, beams, repeats, hf, ours)
            rows.append({"precision": precision, "decoding": "greedy" if beams == 1 else f"beam {beams}",
                         "attnlab tok/s": r["attnlab"]["tokens_per_s"], "hf tok/s": r["hf"]["tokens_per_s"],
                         "paired vs HF": r["paired"], "without native vs HF": r["paired_torch_only"],
                         "same tokens": r["same_tokens"]})
    table = print_table(rows, ["precision", "decoding", "attnlab tok/s", "hf tok/s", "paired vs HF",
                               "without native vs HF", "same tokens"])
    path = write_json("seq2seq", {"shape": SHAPE, "batch": BATCH, "src_len": SRC_LEN, "new_tokens": NEW,
                                  "repeats": repeats, "machine": machine_info(), "results": results, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
