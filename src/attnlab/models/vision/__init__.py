"""Vision family: ViT (patch embedding + the shared Transformer body) and Swin (hierarchical, window attention)."""

from . import presets  # noqa: F401  (registers the vision presets)
from .swin import Swin
from .vit import ViT

__all__ = ["Swin", "ViT"]
