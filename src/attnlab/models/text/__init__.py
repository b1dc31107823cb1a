"""Text family: GPT (causal decoder) and Encoder (BERT-style), on the shared Transformer body."""

from . import presets  # noqa: F401  (registers the text presets)
from .encoder import Encoder
from .gpt import GPT

__all__ = ["Encoder", "GPT"]
