"""Image data of the comparison suite: Fashion-MNIST from Debian's package, as pixel sequences."""

from ..registry import register_dataset
from .images import make_fashion_mnist

__all__ = ["make_fashion_mnist"]

register_dataset("fashion_mnist", make_fashion_mnist, "Fashion-MNIST as a 784-pixel sequence (Debian)",
                 "accuracy", "classify", source="fashion_mnist")
