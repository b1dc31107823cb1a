"""What every vision model shares: the input check (images of the shape it was built for, or one line saying what to
change) and ``classify`` (its head on its pooled representation)."""

from __future__ import annotations

from torch import Tensor


def check_pixels(pixels: Tensor, channels: int, size: int) -> None:
    """Raise ``ValueError`` unless ``pixels`` is ``(B, channels, size, size)``."""
    if pixels.dim() != 4 or pixels.shape[1] != channels or tuple(pixels.shape[2:]) != (size, size):
        raise ValueError(f"expected images of shape (batch, {channels}, {size}, {size}), got {tuple(pixels.shape)}; "
                         "resize the images or build the model with matching image_size / num_channels")


class Classifies:
    """Mixin: ``classify(pixels) -> (B, num_classes)`` logits, the model's ``head`` on its ``pooled(pixels)``."""

    def classify(self, pixels: Tensor) -> Tensor:
        """``(B, num_classes)`` logits.

        Raises:
            ValueError: the model was built without a head (``num_classes=0``).
        """
        if self.head is None:
            raise ValueError(f"this {type(self).__name__} has no classification head: build it with "
                             "num_classes=<number of labels>")
        return self.head(self.pooled(pixels))
