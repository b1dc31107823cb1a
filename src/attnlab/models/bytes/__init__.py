"""Bytes family: ByteFormer (classification of raw file bytes)."""

from . import presets  # noqa: F401  (registers the bytes presets)
from .byteformer import ByteFormer

__all__ = ["ByteFormer"]
