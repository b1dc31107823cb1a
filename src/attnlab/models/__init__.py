"""Model families on the shared Transformer body, one folder each, and presets by name.

``transformer.py`` is the body every family shares (embeddings, blocks, the stack); ``config.py`` the typed
config; ``registry.py`` the presets; ``heads.py`` and ``pooling.py`` the heads of the comparison suite.
Families: ``text/`` (GPT, Encoder), ``vision/`` (ViT), ``seq2seq/`` (EncoderDecoder). A family imports only these shared modules.
"""

from .config import ModelConfig
from .pooling import pool
from .seq2seq import EncoderDecoder
from .text import GPT, Encoder
from .vision import ViT
from .registry import build_model, create_model, describe_models, list_models, model_config, register_model
from .transformer import Block, PostNormBlock

__all__ = [
    "Block", "Encoder", "EncoderDecoder", "GPT", "ModelConfig", "PostNormBlock", "ViT", "build_model", "create_model", "describe_models",
    "list_models", "model_config", "pool", "register_model",
]
