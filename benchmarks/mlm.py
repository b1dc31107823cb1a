"""Masked-LM pretraining throughput: attnlab's BERT-layout Encoder + ``mlm_step`` vs Hugging Face
``BertForMaskedLM`` at the same shape.

One step = forward + backward + fused AdamW on a batch masked the BERT way (15% of the tokens, 80/10/10), the
loss on the masked positions only. Each library does what it does by default: ``BertForMaskedLM`` projects
every position onto the vocabulary, ``mlm_step`` only the masked ones (as BERT's original ``gather_indexes``). Shape: 4 layers, dim 256, 4 heads, MLP 1024, vocabulary 8,000, 128 tokens,
batch 16, no dropout; fp32 and bf16 autocast, 2 threads. The two models alternate within every repetition;
``paired vs HF`` is the median over repetitions of Hugging Face's step time over attnlab's (the shared
machine's speed drifts, the pairing cancels it).

    python benchmarks/mlm.py            # 15 repetitions
    python benchmarks/mlm.py --quick    # 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from common import machine_info, print_table, write_json

SHAPE = dict(num_layers=4, num_heads=4, dim=256, mlp_dim=1024, vocab_size=8000, max_seq_len=128)


def build_attnlab():
    from attnlab.models import create_model

    return create_model("bert", dropout=0.0, **SHAPE)


def build_hf():
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["dim"], num_hidden_layers=SHAPE["num_layers"],
                     num_attention_heads=SHAPE["num_heads"], intermediate_size=SHAPE["mlp_dim"],
                     max_position_embeddings=SHAPE["max_seq_len"], hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    return BertForMaskedLM(cfg)


def make_step(model, kind: str, batch: dict, precision: str):
    from attnlab.objectives.mlm import mlm_step

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step():
        with ctx():
            if kind == "hf":
                loss = model(input_ids=batch["idx"], labels=batch["labels"]).loss
            else:
                loss, _ = mlm_step(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(precision: str, repeats: int, batch_size: int) -> dict:
    from attnlab.objectives.mlm import mask_tokens

    torch.manual_seed(0)
    ids = torch.randint(5, SHAPE["vocab_size"], (batch_size, SHAPE["max_seq_len"]))
    idx, labels = mask_tokens(ids, mask_id=4, vocab_size=SHAPE["vocab_size"], special_ids=(0, 1, 2, 3),
                              generator=torch.Generator().manual_seed(0))
    batch = {"idx": idx, "labels": labels}
    models = {"attnlab": build_attnlab(), "hf": build_hf()}
    steps = {k: make_step(m, k, batch, precision) for k, m in models.items()}
    for s in steps.values():  # warm-up
        s(), s()
    times = {k: [] for k in steps}
    for _ in range(repeats):  # alternate so drifts in machine load hit both equally
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    tokens = batch_size * SHAPE["max_seq_len"]
    return {k: {"median_s": statistics.median(ts), "tokens_per_s": tokens / statistics.median(ts),
                "times_s": [round(t, 4) for t in ts], "params": sum(p.numel() for p in models[k].parameters())}
            for k, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="5 repetitions")
    args = ap.parse_args()
    from attnlab.train.memory import retain_freed_memory

    retain_freed_memory()  # what attnlab train does on CPU, for both models
    repeats = 5 if args.quick else args.repeats
    rows, results = [], {}
    for precision in ("fp32", "bf16"):
        res = results[precision] = run(precision, repeats, args.batch_size)
        for k in ("attnlab", "hf"):
            r = res[k]
            paired = statistics.median(h / a for a, h in zip(r["times_s"], res["hf"]["times_s"]))
            rows.append({"precision": precision, "model": k, "tokens/s": r["tokens_per_s"],
                         "step ms": r["median_s"] * 1e3, "params M": r["params"] / 1e6,
                         "vs HF": r["tokens_per_s"] / res["hf"]["tokens_per_s"], "paired vs HF": paired})
    table = print_table(rows, ["precision", "model", "tokens/s", "step ms", "params M", "vs HF", "paired vs HF"])
    path = write_json("mlm", {"shape": SHAPE, "batch_size": args.batch_size, "repeats": repeats,
                              "machine": machine_info(), "results": results, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
