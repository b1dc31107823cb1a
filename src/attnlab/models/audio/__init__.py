"""Audio family: AST (spectrogram patches + the shared Transformer body), PaSST's patchout, SSAST pretraining."""

from . import presets  # noqa: F401  (registers the audio presets)
from .ast import AST
from .ssast import SSAST, MaskedSpectrogramModel

__all__ = ["AST", "MaskedSpectrogramModel", "SSAST"]
