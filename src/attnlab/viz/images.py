"""Image grids as PNG files: e.g. masked inputs, reconstructions and originals of a masked autoencoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.io import write_with


def save_image_grid(rows: dict[str, torch.Tensor], path: str | Path, max_images: int = 8) -> Path:
    """Write one row per entry of ``rows`` (``name -> images (B, C, H, W)``, C = 1 or 3) to a PNG at ``path``.

    Each image is min-max scaled on its own, so normalised and raw pixels both show. Written atomically.

    Raises:
        ValueError: no rows, rows of different batch sizes, or images that are not ``(B, 1|3, H, W)``.
    """
    if not rows:
        raise ValueError("save_image_grid needs at least one row of images")
    sizes = {name: t.shape for name, t in rows.items()}
    if any(len(s) != 4 or s[1] not in (1, 3) for s in sizes.values()) or len({s[0] for s in sizes.values()}) != 1:
        raise ValueError(f"rows must all be images (B, 1 or 3, H, W) with one B, got {sizes}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(next(iter(sizes.values()))[0], max_images)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            img = images[c].detach().float().cpu()
            img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8)
            ax = axes[r][c]
            ax.imshow(np.asarray(img.permute(1, 2, 0).squeeze(-1)), cmap="gray" if img.shape[0] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name)
    fig.tight_layout()
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
