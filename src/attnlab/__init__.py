"""attnlab: every attention mechanism behind one interface, in every model family."""

from .attention import (
    AttentionContext,
    MultiHeadAttention,
    build_attention,
    list_attention,
    register_attention,
)

__version__ = "0.1.0"

__all__ = ["AttentionContext", "MultiHeadAttention", "build_attention", "list_attention", "register_attention"]

# Hugging Face checkpoints in and out, and sentence embeddings
from .infer.embed import embed  # noqa: E402
from .interop import load_pretrained, save_pretrained  # noqa: E402

__all__ += ["embed", "load_pretrained", "save_pretrained"]
