"""Audio family: AST (spectrogram patches + the shared Transformer body)."""

from . import presets  # noqa: F401  (registers the audio presets)
from .ast import AST

__all__ = ["AST"]
