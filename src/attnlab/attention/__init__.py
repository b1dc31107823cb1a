"""The attention contract: registry, shell, context, masks, reference formula and the kernels."""

from . import kernels  # noqa: F401  (registers the built-in kernels)
from .base import AttentionKernel, MixingMapKernel, pop_aux_loss
from .cache import CrossKVCache, DenseKVCache, RollingKVCache
from .capabilities import Capabilities, CapabilityError
from .context import AttentionContext
from .masks import causal_mask, combine_masks, context_mask, document_mask, padding_mask
from .reference import reference_attention
from .registry import (
    attention_options,
    build_attention,
    describe_attention,
    get_attention_class,
    list_attention,
    register_attention,
)
from .shell import MultiHeadAttention

__all__ = [
    "AttentionContext", "AttentionKernel", "MixingMapKernel", "Capabilities", "CapabilityError", "CrossKVCache",
    "DenseKVCache",
    "MultiHeadAttention", "RollingKVCache", "attention_options", "build_attention", "causal_mask",
    "combine_masks", "context_mask", "describe_attention", "document_mask", "get_attention_class",
    "list_attention", "padding_mask", "pop_aux_loss", "reference_attention", "register_attention",
]
