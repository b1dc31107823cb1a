"""Light training-time augmentation for image batches: random crop after zero padding, horizontal flip (the
standard CIFAR recipe, He et al. 2016) and random erasing (Zhong et al. 2017). Seeded by the caller, so a resumed
run sees the same augmented batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def augment_images(pixels: Tensor, crop_padding: int = 0, flip: bool = False,
                   generator: torch.Generator | None = None, fill: tuple[float, ...] | None = None,
                   erase: float = 0.0) -> Tensor:
    """``pixels (B, C, H, W)`` -> augmented ``(B, C, H, W)``.

    Each image is padded by ``crop_padding`` on every side with ``fill`` (one value per channel; zeros by default;
    normalised images pass the normalised value of a black pixel, ``-mean / std``, so the border looks like the
    background rather than a grey frame) and cropped back to ``H x W`` at a uniformly
    random offset; with ``flip`` each image is mirrored left-right with probability 1/2; then with probability
    ``erase`` a rectangle of each image is replaced by standard-normal noise (:func:`erase_rectangles`).

    Raises:
        ValueError: ``pixels`` not 4-D, a negative ``crop_padding``, ``erase`` outside [0, 1].
    """
    if pixels.dim() != 4:
        raise ValueError(f"expected images (batch, channels, height, width), got {tuple(pixels.shape)}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    if not 0.0 <= erase <= 1.0:
        raise ValueError(f"erase must be a probability in [0, 1], got {erase}")
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
    if erase:
        out = erase_rectangles(out, erase, generator)
    return out


def erase_rectangles(pixels: Tensor, prob: float, generator: torch.Generator | None = None,
                     area: tuple[float, float] = (0.02, 0.4), ratio: float = 0.3, attempts: int = 10) -> Tensor:
    """Random erasing (Zhong et al. 2017): each image of ``pixels (B, C, H, W)`` is, with probability ``prob``,
    given one rectangle of ``area`` (a fraction of the image, uniform in the range) and aspect ratio log-uniform in
    ``[ratio, 1 / ratio]``, filled with standard-normal values (images are normalised, so noise of the data's own
    scale, the paper's "random values" fill). A drawn rectangle that does not fit is drawn again, up to
    ``attempts`` times, then the image is left as it is. Returns a new tensor; ``pixels`` is not modified."""
    out = pixels.clone()
    B, C, H, W = pixels.shape
    chosen = (torch.rand(B, generator=generator) < prob).tolist()
    lo, hi = math.log(ratio), math.log(1.0 / ratio)
    for i in (i for i, c in enumerate(chosen) if c):
        for _ in range(attempts):
            a, r = torch.rand(2, generator=generator).tolist()
            target = H * W * (area[0] + (area[1] - area[0]) * a)
            aspect = math.exp(lo + (hi - lo) * r)
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < h < H and 0 < w < W:
                y = int(torch.randint(0, H - h + 1, (1,), generator=generator))
                x = int(torch.randint(0, W - w + 1, (1,), generator=generator))
                noise = torch.randn(C, h, w, generator=generator, dtype=pixels.dtype)
                out[i, :, y:y + h, x:x + w] = noise.to(pixels.device)
                break
    return out
