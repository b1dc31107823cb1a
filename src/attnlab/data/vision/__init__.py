"""Image data of the comparison suite: Fashion-MNIST from Debian's package, as pixel sequences."""

from ..registry import register_task_dataset
from .images import make_fashion_mnist

__all__ = ["make_fashion_mnist"]

register_task_dataset("fashion_mnist", make_fashion_mnist, "Fashion-MNIST as a 784-pixel sequence (Debian)",
                      "accuracy")
