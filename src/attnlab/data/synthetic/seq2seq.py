"""Seeded sequence-to-sequence problems for encoder-decoder models: sequence reversal and multi-digit
addition (Sutskever et al. 2014 reverse source sentences; Vaswani et al. 2017; digit addition as in
Zaremba & Sutskever 2014, "Learning to Execute").

Vocabulary: ``PAD = 0``, ``BOS = 1`` (the decoder's start), ``EOS = 2``, ``PLUS = 3`` (addition only),
symbols from ``FIRST = 4`` on (digit ``d`` is ``FIRST + d``). The splits are
:class:`~attnlab.data.base.Seq2SeqSplit` s (``src``, ``src_key_padding_mask``, ``tgt_in`` = ``BOS`` + target,
``tgt_out`` = target + ``EOS``). Train and test come from independent child streams of ``seed``.
"""

from __future__ import annotations

import numpy as np

from ..base import BOS, EOS, PAD, Seq2SeqDataset, Seq2SeqSplit, check_positive, pack_pairs, split_rngs

PLUS, FIRST = 3, 4
Seq2SeqData = Seq2SeqDataset  # the name these generators returned before seq2seq datasets joined the suite


def _symbols(ids: list[int]) -> str:
    """Decode: digits/symbols ``0-9a-z...`` for ids from ``FIRST``, ``+`` for ``PLUS``; specials dropped."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join("+" if i == PLUS else alphabet[i - FIRST] if FIRST <= i < FIRST + len(alphabet) else ""
                   for i in ids)


def make_reversal(num_train: int = 4000, num_test: int = 500, min_len: int = 2, max_len: int = 8,
                  num_symbols: int = 10, seed: int = 0) -> Seq2SeqDataset:
    """Reverse a random sequence of ``min_len..max_len`` symbols drawn from ``num_symbols``.

    Raises:
        ValueError: non-positive sizes, or ``min_len > max_len``.
    """
    check_positive(num_train=num_train, num_test=num_test, min_len=min_len, max_len=max_len, num_symbols=num_symbols)
    if min_len > max_len:
        raise ValueError(f"min_len={min_len} is larger than max_len={max_len}")

    def split(rng: np.random.Generator, n: int) -> Seq2SeqSplit:
        seqs = [list(FIRST + rng.integers(0, num_symbols, rng.integers(min_len, max_len + 1))) for _ in range(n)]
        return pack_pairs([(s, s[::-1]) for s in seqs])

    train_rng, test_rng = split_rngs(seed)
    options = dict(num_train=num_train, num_test=num_test, min_len=min_len, max_len=max_len,
                   num_symbols=num_symbols, seed=seed)
    return Seq2SeqDataset("reversal", split(train_rng, num_train), split(test_rng, num_test), FIRST + num_symbols,
                          _symbols, options=options)


def make_addition(num_train: int = 8000, num_test: int = 500, max_digits: int = 3, seed: int = 0) -> Seq2SeqDataset:
    """``a + b`` in decimal digits (most significant first) -> the sum's digits; ``a, b < 10 ** max_digits``.

    Raises:
        ValueError: non-positive sizes.
    """
    check_positive(num_train=num_train, num_test=num_test, max_digits=max_digits)

    def digits(x: int) -> list[int]:
        return [FIRST + int(c) for c in str(x)]

    def split(rng: np.random.Generator, n: int) -> Seq2SeqSplit:
        a, b = rng.integers(0, 10 ** max_digits, n), rng.integers(0, 10 ** max_digits, n)
        return pack_pairs([(digits(x) + [PLUS] + digits(y), digits(x + y)) for x, y in zip(a.tolist(), b.tolist())])

    train_rng, test_rng = split_rngs(seed)
    options = dict(num_train=num_train, num_test=num_test, max_digits=max_digits, seed=seed)
    return Seq2SeqDataset("addition", split(train_rng, num_train), split(test_rng, num_test), FIRST + 10, _symbols,
                          options=options)


__all__ = ["BOS", "EOS", "PAD", "PLUS", "FIRST", "Seq2SeqData", "Seq2SeqSplit", "make_addition", "make_reversal"]
