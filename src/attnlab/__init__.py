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
