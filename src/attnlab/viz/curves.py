"""Loss curves from a run's ``metrics.jsonl`` (training loss per step, validation loss per evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.io import write_with


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file (one JSON object per line); a torn last line is ignored."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as in TensorBoard), same length as ``values``."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def plot_loss_curve(rows: list[dict], out_path: str | Path, title: str = "", unit: str = "token") -> Path:
    """Write a PNG with the training loss (raw and smoothed) and validation loss against the step.

    The file is written atomically (temp file + ``os.replace``). Raises ``ValueError`` if there are no rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        raise ValueError("no training rows to plot")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    steps, losses = zip(*train)
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    weight = max(0.0, min(0.95, 1.0 - 10.0 / len(losses)))  # ~n/10-step memory, at most 0.95
    ax.plot(steps, smooth(list(losses), weight), color="tab:blue", linewidth=1.6, label="train (smoothed)")
    if val:
        vs, vl = zip(*val)
        ax.plot(vs, vl, "o-", color="tab:orange", linewidth=1.6, markersize=3.5, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss (nats/{unit})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        return write_with(out_path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
