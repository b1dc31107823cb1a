"""Hugging Face interop: local checkpoints in and out (BERT family incl. MiniLM, GPT-2, ViT), tokenizers,
and attention swapping on load. Conversion is data (:mod:`.keymaps`); loading is strict."""

from .minilm import minilm_path
from .pretrained import load_pretrained, save_pretrained
from .tokenizer import TextTokenizer

__all__ = ["TextTokenizer", "load_pretrained", "minilm_path", "save_pretrained"]
