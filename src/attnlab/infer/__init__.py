"""Inference: generation with the KV cache."""

from .generate import generate, sample_next

__all__ = ["generate", "sample_next"]
