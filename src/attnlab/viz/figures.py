"""PNG figures of explanations, each written atomically: a heat map over an image, token heat maps for text, and a
layer x head table (attention distance, head importance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.io import write_with


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(rows, cols)`` -> ``(H, W)`` by repeating each cell over the pixels it covers (patch-exact, no smoothing)."""
    rows, cols = heat.shape
    ri = np.minimum((np.arange(size[0]) * rows) // size[0], rows - 1)
    ci = np.minimum((np.arange(size[1]) * cols) // size[1], cols - 1)
    return heat[ri][:, ci]


def overlay_png(image: np.ndarray, heats: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """The image (``(C, H, W)`` in [0, 1]) and, beside it, each ``(rows, cols)`` heat map laid over it."""
    plt = _pyplot()
    img = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    n = 1 + len(heats)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), dpi=110, squeeze=False)
    axes[0, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=8)
    for ax, (name, heat) in zip(axes[0, 1:], heats.items()):
        h = heat - heat.min()
        h = h / h.max() if h.max() > 0 else h
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.imshow(upsample(h, img.shape[:2]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def tokens_png(tokens: list[str], values: np.ndarray, path: str | Path, title: str = "", per_line: int = 24) -> Path:
    """Tokens in reading order, each on a cell coloured by its value (min-max scaled), ``per_line`` per row."""
    plt = _pyplot()
    v = values - values.min()
    v = v / v.max() if v.max() > 0 else v
    lines = max(1, -(-len(tokens) // per_line))
    fig, ax = plt.subplots(figsize=(0.45 * min(per_line, len(tokens)) + 1.0, 0.45 * lines + 0.9), dpi=110)
    cmap = plt.get_cmap("Reds")
    for i, (tok, x) in enumerate(zip(tokens, v)):
        r, c = divmod(i, per_line)
        ax.add_patch(plt.Rectangle((c, -r - 1), 1, 1, color=cmap(0.1 + 0.85 * float(x))))
        shown = tok.replace("\n", "\\n").replace(" ", "\u2423") or "\u2205"
        ax.text(c + 0.5, -r - 0.5, shown[:6], ha="center", va="center", fontsize=7)
    ax.set_xlim(0, min(per_line, len(tokens)))
    ax.set_ylim(-lines, 0)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def layer_head_png(table: np.ndarray, path: str | Path, title: str, label: str) -> Path:
    """A ``(layers, heads)`` table (NaN where a layer has fewer heads) as a heat map with its values written in."""
    plt = _pyplot()
    L, H = table.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * H, 1.0 + 0.4 * L), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(table), cmap="viridis", aspect="auto")
    for i in range(L):
        for j in range(H):
            if np.isfinite(table[i, j]):
                ax.text(j, i, f"{table[i, j]:.3g}", ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return _save(fig, path)


def ragged_table(rows: list) -> np.ndarray:
    """Rows of different lengths (heads per layer) -> a ``(layers, max heads)`` float array padded with NaN."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = np.asarray(r, dtype=float)
    return out
