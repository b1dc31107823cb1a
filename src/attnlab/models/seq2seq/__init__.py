"""Encoder-decoder family: the original Transformer layout on the shared body, with cross-attention."""

from . import presets  # noqa: F401  (registers the encoder-decoder presets)
from .model import DecoderBlock, EncoderDecoder, reorder_cache

__all__ = ["DecoderBlock", "EncoderDecoder", "reorder_cache"]
