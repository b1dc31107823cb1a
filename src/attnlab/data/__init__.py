"""Datasets and loaders. Text LM data (char/byte) lives here; embedded sources in :mod:`.sources`.

Other families (synthetic tasks, images, series) are imported from their own modules
(``attnlab.data.synthetic`` ...), so importing this package stays light.
"""

from .sources import SOURCES, describe_sources, list_sources, source_path
from .text import LMData, WindowSampler, build_lm_data, eval_batches, load_text, sequential_batches, split_tokens
from .tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer, save_tokenizer

__all__ = [
    "SOURCES", "ByteTokenizer", "CharTokenizer", "LMData", "WindowSampler", "build_lm_data", "describe_sources",
    "eval_batches", "list_sources", "load_text", "load_tokenizer", "save_tokenizer", "sequential_batches",
    "source_path", "split_tokens",
]
