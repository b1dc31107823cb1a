"""Light training-time augmentation for image batches: random crop after zero padding, horizontal flip (the
standard CIFAR recipe, He et al. 2016). Seeded by the caller, so a resumed run sees the same augmented batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def augment_images(pixels: Tensor, crop_padding: int = 0, flip: bool = False,
                   generator: torch.Generator | None = None, fill: tuple[float, ...] | None = None) -> Tensor:
    """``pixels (B, C, H, W)`` -> augmented ``(B, C, H, W)``.

    Each image is padded by ``crop_padding`` on every side with ``fill`` (one value per channel; zeros by default;
    normalised images pass the normalised value of a black pixel, ``-mean / std``, so the border looks like the
    background rather than a grey frame) and cropped back to ``H x W`` at a uniformly
    random offset; with ``flip`` each image is mirrored left-right with probability 1/2.

    Raises:
        ValueError: ``pixels`` not 4-D, or a negative ``crop_padding``.
    """
    if pixels.dim() != 4:
        raise ValueError(f"expected images (batch, channels, height, width), got {tuple(pixels.shape)}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    B, _, H, W = pixels.shape
    out = pixels
    if crop_padding:
        p = crop_padding
        padded = F.pad(pixels, (p, p, p, p))
        if fill is not None:  # the border takes the fill value: pad the difference, then add it back
            value = torch.as_tensor(fill, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
            padded = F.pad(pixels - value, (p, p, p, p)) + value
        dy, dx = (torch.randint(0, 2 * p + 1, (B,), generator=generator).tolist() for _ in range(2))
        out = torch.stack([padded[i, :, y:y + H, x:x + W] for i, (y, x) in enumerate(zip(dy, dx))])
    if flip:
        mirror = torch.rand(B, generator=generator) < 0.5
        out = torch.where(mirror[:, None, None, None].to(out.device), out.flip(-1), out)
    return out
