"""Vision family: ViT (patch embedding + the shared Transformer body) Swin (hierarchical, window attention) and ConViT
(GPSA on the patch grid, then the class token)."""

from . import presets  # noqa: F401  (registers the vision presets)
from .convit import ConViT
from .swin import Swin
from .vit import ViT

__all__ = ["ConViT", "Swin", "ViT"]
