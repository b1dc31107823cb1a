"""Recall datasets: multi-query associative recall (Zoology) and selective copying (Mamba).

Both are ``kind="lm"`` datasets (see :mod:`attnlab.data.base`): a causal model reads
``inputs[:, :t + 1]`` and is scored on ``targets[:, t]`` where ``loss_mask`` is True.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import (
    IGNORE_INDEX, SuiteDataset, SuiteSplit, check_positive, long_tensor, sample_without_replacement, split_rngs,
)


def _mqar_split(rng: np.random.Generator, n: int, vocab_size: int, seq_len: int, num_kv_pairs: int,
                num_queries: int, power_a: float, random_non_queries: bool) -> SuiteSplit:
    half = vocab_size // 2
    keys = 1 + sample_without_replacement(rng, n, half - 1, num_kv_pairs)  # (N, P) in [1, V/2)
    values = half + sample_without_replacement(rng, n, vocab_size - half, num_kv_pairs)  # (N, P) in [V/2, V)
    ctx = 2 * num_kv_pairs
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values  # k1 v1 k2 v2 ...
    # Query slots are the even offsets of the region after the context; Zoology biases them towards
    # the start with p(slot i) ~ i^(a-1). Weighted sampling without replacement by Gumbel-top-k.
    slots = (seq_len - ctx + 1) // 2
    logp = (power_a - 1.0) * np.log(np.arange(1, slots + 1))
    gumbel = -np.log(-np.log(rng.random((n, slots))))
    chosen = np.argsort(-(logp + gumbel), axis=1)[:, :num_queries]  # (N, Q) slot ids
    which = sample_without_replacement(rng, n, num_kv_pairs, num_queries)  # (N, Q) pair ids queried
    pos = ctx + 2 * chosen  # (N, Q) query positions
    rows = np.arange(n)[:, None]
    if random_non_queries:  # filler drawn before queries are written, so queries are never overwritten
        inputs[:, ctx:] = rng.integers(0, vocab_size, size=(n, seq_len - ctx))
    inputs[rows, pos] = keys[rows, which]
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[rows, pos] = values[rows, which]
    return SuiteSplit(long_tensor(inputs), long_tensor(targets), loss_mask=torch.from_numpy(targets != IGNORE_INDEX))


def make_mqar(vocab_size: int = 64, seq_len: int = 64, num_kv_pairs: int = 8, num_queries: int | None = None,
              power_a: float = 0.01, random_non_queries: bool = True, num_train: int = 10_000,
              num_test: int = 1_000, seed: int = 0) -> SuiteDataset:
    """Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology", also used by "Based").

    Vocabulary layout (``vocab_size`` ``V``): keys are ``[1, V // 2)``, values ``[V // 2, V)``, token 0
    is filler. Each sequence starts with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` (distinct
    keys, distinct values); in the rest, ``num_queries`` of those keys reappear at even offsets chosen
    with the Zoology power law ``p(slot i) ~ i^(power_a - 1)``. At a query position the target is the
    key's value (``loss_mask`` True there only). Other positions hold random tokens when
    ``random_non_queries`` (as in Zoology), else 0. Metric: accuracy on query positions.

    Returns:
        ``SuiteDataset`` with ``inputs/targets/loss_mask`` of shape ``(N, seq_len)``.

    Raises:
        ValueError: too few keys or values for ``num_kv_pairs``, or too few query slots.
    """
    num_queries = num_kv_pairs if num_queries is None else num_queries
    check_positive(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs, num_queries=num_queries,
                   num_train=num_train, num_test=num_test)
    if vocab_size // 2 - 1 < num_kv_pairs:
        raise ValueError(f"vocab_size={vocab_size} has {vocab_size // 2 - 1} keys < num_kv_pairs={num_kv_pairs}; "
                         f"use vocab_size >= {2 * num_kv_pairs + 2}")
    if num_queries > num_kv_pairs:
        raise ValueError(f"num_queries={num_queries} exceeds num_kv_pairs={num_kv_pairs}")
    slots = (seq_len - 2 * num_kv_pairs + 1) // 2
    if slots < num_queries:
        raise ValueError(f"seq_len={seq_len} leaves {max(slots, 0)} query slots for {num_queries} queries; "
                         f"use seq_len >= {2 * num_kv_pairs + 2 * num_queries}")
    if not 0.0 < power_a <= 1.0:
        raise ValueError(f"power_a must be in (0, 1] (1 = uniform query positions), got {power_a}")
    args = (vocab_size, seq_len, num_kv_pairs, num_queries, power_a, random_non_queries)
    r_train, r_test = split_rngs(seed)
    options = dict(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs, num_queries=num_queries,
                   power_a=power_a, random_non_queries=random_non_queries, num_train=num_train,
                   num_test=num_test, seed=seed)
    return SuiteDataset(
        name="mqar", kind="lm", train=_mqar_split(r_train, num_train, *args), test=_mqar_split(r_test, num_test, *args),
        seq_len=seq_len, metric="accuracy", vocab_size=vocab_size,
        vocab={"filler": 0, "first_key": 1, "first_value": vocab_size // 2}, options=options,
    )


def _copy_split(rng: np.random.Generator, n: int, context_len: int, num_tokens: int, num_symbols: int) -> SuiteSplit:
    data = 2 + rng.integers(0, num_symbols, size=(n, num_tokens))  # (N, M) tokens to copy
    pos = np.sort(sample_without_replacement(rng, n, context_len, num_tokens), axis=1)  # (N, M) ascending
    seq_len = context_len + num_tokens
    inputs = np.zeros((n, seq_len), dtype=np.int64)  # 0 = noise everywhere in the context
    rows = np.arange(n)[:, None]
    inputs[rows, pos] = data
    inputs[:, context_len:] = 1  # copy markers
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, context_len:] = data  # marker j asks for the j-th data token in order
    mask = np.zeros((n, seq_len), dtype=bool)
    mask[:, context_len:] = True
    return SuiteSplit(long_tensor(inputs), long_tensor(targets), loss_mask=torch.from_numpy(mask),
                     extras={"positions": long_tensor(pos)})


def make_selective_copy(context_len: int = 64, num_tokens: int = 8, num_symbols: int = 8, num_train: int = 10_000,
                        num_test: int = 1_000, seed: int = 0) -> SuiteDataset:
    """Selective copying (Gu & Dao 2023, "Mamba", Sec. 3.1; after the copying problem of Arjovsky et al.).

    Vocabulary layout: 0 = noise, 1 = copy marker, ``2 .. num_symbols + 1`` = data symbols
    (``vocab_size = num_symbols + 2``). A sequence is a context of ``context_len`` tokens holding
    ``num_tokens`` data symbols at random (distinct, sorted) positions among noise, followed by
    ``num_tokens`` copy markers; at the ``j``-th marker the target is the ``j``-th data symbol in order.
    ``seq_len = context_len + num_tokens``. Metric: accuracy on the marker positions.
    ``extras["positions"]`` ``(N, num_tokens)`` holds where the data symbols sit.

    Raises:
        ValueError: ``num_tokens > context_len`` or a non-positive size.
    """
    check_positive(context_len=context_len, num_tokens=num_tokens, num_symbols=num_symbols,
                   num_train=num_train, num_test=num_test)
    if num_tokens > context_len:
        raise ValueError(f"num_tokens={num_tokens} does not fit in context_len={context_len}")
    r_train, r_test = split_rngs(seed)
    args = (context_len, num_tokens, num_symbols)
    options = dict(context_len=context_len, num_tokens=num_tokens, num_symbols=num_symbols, num_train=num_train,
                   num_test=num_test, seed=seed)
    return SuiteDataset(
        name="selective_copy", kind="lm", train=_copy_split(r_train, num_train, *args),
        test=_copy_split(r_test, num_test, *args), seq_len=context_len + num_tokens, metric="accuracy",
        vocab_size=num_symbols + 2, vocab={"noise": 0, "copy": 1, "first_symbol": 2}, options=options,
    )
