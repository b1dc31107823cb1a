"""Seeded sequence-to-sequence problems for encoder-decoder models: sequence reversal and multi-digit
addition (Sutskever et al. 2014 reverse source sentences; Vaswani et al. 2017; digit addition as in
Zaremba & Sutskever 2014, "Learning to Execute").

Vocabulary: ``PAD = 0``, ``BOS = 1`` (the decoder's start), ``EOS = 2``, ``PLUS = 3`` (addition only),
symbols from ``FIRST = 4`` on (digit ``d`` is ``FIRST + d``). Each split holds ``src (N, S)`` padded with
``PAD`` and ``src_key_padding_mask (N, S)`` (True = real token), ``tgt_in (N, T)`` = ``BOS`` + target and
``tgt_out (N, T)`` = target + ``EOS``, unscored positions ``IGNORE_INDEX`` (-100) in ``tgt_out`` and
``PAD`` in ``tgt_in``. Train and test come from independent child streams of ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..base import IGNORE_INDEX, check_positive, long_tensor, split_rngs

PAD, BOS, EOS, PLUS, FIRST = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Seq2SeqSplit:
    """One split: ``src``, ``src_key_padding_mask``, ``tgt_in``, ``tgt_out`` (see the module docstring)."""

    src: Tensor
    src_key_padding_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    def batch(self, index: Tensor | slice) -> dict[str, Tensor]:
        """Rows ``index`` as the batch dict the seq2seq objective takes."""
        return {"src": self.src[index], "src_key_padding_mask": self.src_key_padding_mask[index],
                "tgt_in": self.tgt_in[index], "tgt_out": self.tgt_out[index]}

    def __len__(self) -> int:
        return self.src.shape[0]


@dataclass(frozen=True)
class Seq2SeqData:
    """Train and test splits plus the vocabulary size and the special ids."""

    train: Seq2SeqSplit
    test: Seq2SeqSplit
    vocab_size: int
    bos_id: int = BOS
    eos_id: int = EOS


def _pack(pairs: list[tuple[list[int], list[int]]]) -> Seq2SeqSplit:
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = np.full((len(pairs), S), PAD)
    tgt_in = np.full((len(pairs), T), PAD)
    tgt_out = np.full((len(pairs), T), IGNORE_INDEX)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = s
        tgt_in[i, : len(t) + 1] = [BOS, *t]
        tgt_out[i, : len(t) + 1] = [*t, EOS]
    src_t = long_tensor(src)
    return Seq2SeqSplit(src_t, src_t != PAD, long_tensor(tgt_in), long_tensor(tgt_out))


def make_reversal(num_train: int = 4000, num_test: int = 500, min_len: int = 2, max_len: int = 8,
                  num_symbols: int = 10, seed: int = 0) -> Seq2SeqData:
    """Reverse a random sequence of ``min_len..max_len`` symbols drawn from ``num_symbols``.

    Raises:
        ValueError: non-positive sizes, or ``min_len > max_len``.
    """
    check_positive(num_train=num_train, num_test=num_test, min_len=min_len, max_len=max_len, num_symbols=num_symbols)
    if min_len > max_len:
        raise ValueError(f"min_len={min_len} is larger than max_len={max_len}")

    def split(rng: np.random.Generator, n: int) -> Seq2SeqSplit:
        seqs = [list(FIRST + rng.integers(0, num_symbols, rng.integers(min_len, max_len + 1))) for _ in range(n)]
        return _pack([(s, s[::-1]) for s in seqs])

    train_rng, test_rng = split_rngs(seed)
    return Seq2SeqData(split(train_rng, num_train), split(test_rng, num_test), FIRST + num_symbols)


def make_addition(num_train: int = 8000, num_test: int = 500, max_digits: int = 3, seed: int = 0) -> Seq2SeqData:
    """``a + b`` in decimal digits (most significant first) -> the sum's digits; ``a, b < 10 ** max_digits``.

    Raises:
        ValueError: non-positive sizes.
    """
    check_positive(num_train=num_train, num_test=num_test, max_digits=max_digits)

    def digits(x: int) -> list[int]:
        return [FIRST + int(c) for c in str(x)]

    def split(rng: np.random.Generator, n: int) -> Seq2SeqSplit:
        a, b = rng.integers(0, 10 ** max_digits, n), rng.integers(0, 10 ** max_digits, n)
        return _pack([(digits(x) + [PLUS] + digits(y), digits(x + y)) for x, y in zip(a.tolist(), b.tolist())])

    train_rng, test_rng = split_rngs(seed)
    return Seq2SeqData(split(train_rng, num_train), split(test_rng, num_test), FIRST + 10)


__all__ = ["BOS", "EOS", "PAD", "PLUS", "FIRST", "Seq2SeqData", "Seq2SeqSplit", "make_addition", "make_reversal"]
