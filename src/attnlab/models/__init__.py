"""Model families (GPT, Encoder) built from the shared Transformer body, and presets by name."""

from .config import ModelConfig
from .encoder import Encoder, pool
from .gpt import GPT
from .registry import build_model, create_model, describe_models, list_models, model_config, register_model
from .transformer import Block, PostNormBlock

__all__ = [
    "Block", "Encoder", "GPT", "ModelConfig", "PostNormBlock", "build_model", "create_model", "describe_models",
    "list_models", "model_config", "pool", "register_model",
]
