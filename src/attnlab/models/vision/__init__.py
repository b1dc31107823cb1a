"""Vision family: ViT (patch embedding + the shared Transformer body)."""

from . import presets  # noqa: F401  (registers the vision presets)
from .vit import ViT

__all__ = ["ViT"]
