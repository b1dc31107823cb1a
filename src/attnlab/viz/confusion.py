"""Confusion matrices of classifiers: counted from labels and predictions, drawn as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.io import write_with


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts: row = true class, column = predicted class.

    Raises:
        ValueError: arrays of different lengths, or a label outside ``[0, num_classes)``.
    """
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.shape[0]} targets but {predictions.shape[0]} predictions")
    if targets.size and (min(targets.min(), predictions.min()) < 0 or max(targets.max(), predictions.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (targets, predictions), 1)
    return counts


def plot_confusion_matrix(counts: np.ndarray, labels: list[str] | tuple[str, ...], out_path: str | Path,
                          title: str = "") -> Path:
    """Write the matrix as a PNG (rows normalised to the share of each true class; counts in the cells),
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = counts.shape[0]
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    names = list(labels) if len(labels) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    try:
        return write_with(out_path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
