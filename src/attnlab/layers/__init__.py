"""Building blocks shared by every model family: norms, MLPs, positional encodings, embeddings,
stochastic depth."""

from .droppath import DropPath
from .embeddings import ByteEmbedding, TokenEmbedding
from .mlp import MLP, SwiGLU, build_mlp
from .norms import RMSNorm, build_norm
from .positional import (
    ALiBi,
    LearnedPositionalEmbedding,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
)

__all__ = [
    "ALiBi", "ByteEmbedding", "DropPath", "LearnedPositionalEmbedding", "MLP", "RMSNorm", "RelativePositionBias",
    "RotaryEmbedding", "SinusoidalPositionalEmbedding", "SwiGLU", "TokenEmbedding", "build_mlp", "build_norm",
]
