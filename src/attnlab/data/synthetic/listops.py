"""ListOps: nested MAX/MIN/MED/SUM_MOD expressions over digits, classified by their value (0-9).

Nangia & Bowman 2018 ("ListOps: a diagnostic dataset for latent tree learning"), used at long lengths
by Long Range Arena (Tay et al. 2021). Same operators, token spelling and median rule as the LRA
generator (``[MAX 2 9 [MIN 4 7 ] 0 ]`` -> 9; ``[MED`` of an even count is the floor of the mean of the
two middle values; ``[SM`` is the sum mod 10), drawn from an explicit numpy Generator.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import SuiteDataset, SuiteSplit, check_positive, long_tensor, split_rngs

PAD, CLS = 0, 1
DIGIT0 = 2  # token of digit v is DIGIT0 + v
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
OP0 = DIGIT0 + 10  # token of OPERATORS[i] is OP0 + i
CLOSE = OP0 + len(OPERATORS)
VOCAB = {"<pad>": PAD, "<cls>": CLS, **{str(v): DIGIT0 + v for v in range(10)},
         **{op: OP0 + i for i, op in enumerate(OPERATORS)}, "]": CLOSE}
ID_TO_TOKEN = {i: t for t, i in VOCAB.items()}
VOCAB_SIZE = len(VOCAB)  # 17


def apply_operator(op: str, values: list[int]) -> int:
    """Value of ``op`` over ``values`` (LRA semantics)."""
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[SM":
        return sum(values) % 10
    if op == "[MED":
        s, m = sorted(values), len(values) // 2
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2
    raise ValueError(f"unknown ListOps operator {op!r}; valid: {list(OPERATORS)}")


class _TooLong(Exception):
    pass


def _expression(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, branch_prob: float,
                out: list[int], budget: int) -> tuple[int, int]:
    """Append one operator expression's tokens to ``out``; return ``(value, depth reached)``."""
    op = int(rng.integers(len(OPERATORS)))
    out.append(OP0 + op)
    values, deepest = [], depth
    for _ in range(int(rng.integers(2, max_args + 1))):
        if depth < max_depth and rng.random() < branch_prob:
            v, d = _expression(rng, depth + 1, max_depth, max_args, branch_prob, out, budget)
            deepest = max(deepest, d)
        else:
            v = int(rng.integers(10))
            out.append(DIGIT0 + v)
        values.append(v)
        if len(out) >= budget:  # a closing bracket is still to come: stop early, the caller redraws
            raise _TooLong
    out.append(CLOSE)
    return apply_operator(OPERATORS[op], values), deepest


def sample_expression(rng: np.random.Generator, max_depth: int, max_args: int, max_length: int,
                      min_length: int = 1, branch_prob: float = 0.25,
                      max_tries: int = 10_000) -> tuple[list[int], int, int]:
    """One expression with ``min_length <= len <= max_length`` tokens, by rejection.

    The root is always an operator; every argument is itself an expression with probability
    ``branch_prob`` (while ``depth < max_depth``), else a digit; each operator takes 2..``max_args``
    arguments. Returns ``(token ids, value, depth)``.

    Raises:
        ValueError: no expression of an admissible length after ``max_tries`` draws.
    """
    for _ in range(max_tries):
        out: list[int] = []
        try:
            value, depth = _expression(rng, 1, max_depth, max_args, branch_prob, out, max_length)
        except _TooLong:
            continue
        if min_length <= len(out) <= max_length:
            return out, value, depth
    raise ValueError(f"no ListOps expression with {min_length} <= length <= {max_length} in {max_tries} draws "
                     f"(max_depth={max_depth}, max_args={max_args}, branch_prob={branch_prob}); "
                     "widen the length range or change branch_prob/max_args")


def to_string(ids: list[int] | torch.Tensor) -> str:
    """Token ids -> LRA text (``"[MAX 2 9 [MIN 4 7 ] 0 ]"``); padding and CLS are dropped."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return " ".join(ID_TO_TOKEN[i] for i in ids if i not in (PAD, CLS))


def tokenize(text: str) -> list[int]:
    """LRA text -> token ids. Raises ``ValueError`` naming an unknown token."""
    ids = []
    for tok in text.replace("(", " ").replace(")", " ").split():
        if tok not in VOCAB or tok in ("<pad>", "<cls>"):
            raise ValueError(f"unknown ListOps token {tok!r}; valid: digits 0-9, {list(OPERATORS)}, ']'")
        ids.append(VOCAB[tok])
    return ids


def _split(rng: np.random.Generator, n: int, max_depth: int, max_args: int, max_length: int, min_length: int,
           branch_prob: float, add_cls: bool) -> SuiteSplit:
    off = int(add_cls)
    inputs = np.full((n, max_length + off), PAD, dtype=np.int64)
    inputs[:, 0] = CLS if add_cls else PAD
    labels, depths, lengths = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        ids, labels[i], depths[i] = sample_expression(rng, max_depth, max_args, max_length, min_length, branch_prob)
        inputs[i, off:off + len(ids)] = ids
        lengths[i] = len(ids)
    real = np.arange(max_length + off)[None, :] < (lengths + off)[:, None]  # (N, T) True = token
    return SuiteSplit(long_tensor(inputs), long_tensor(labels), key_padding_mask=torch.from_numpy(real),
                     extras={"depth": long_tensor(depths), "length": long_tensor(lengths)})


def make_listops(max_depth: int = 4, max_args: int = 5, max_length: int = 128, min_length: int = 8,
                 branch_prob: float = 0.25, add_cls: bool = False, num_train: int = 10_000, num_test: int = 1_000,
                 seed: int = 0) -> SuiteDataset:
    """Seeded ListOps classification (labels 0-9; LRA used max_depth=10, max_args=10, lengths 500-2000).

    Vocabulary layout (``VOCAB``, 17 tokens): 0 ``<pad>``, 1 ``<cls>``, 2-11 digits 0-9, 12-15 ``[MIN
    [MAX [MED [SM``, 16 ``]``. ``inputs`` ``(N, max_length + add_cls)`` are right-padded with 0 and
    start with ``<cls>`` when ``add_cls``; ``key_padding_mask`` is True on real tokens; ``targets``
    ``(N,)`` are the values. ``extras``: ``depth`` (operator nesting reached) and ``length`` (tokens
    without CLS). Metric: accuracy. Generation is a Python loop (~10k short expressions per second).

    Raises:
        ValueError: bad sizes (``max_args < 2``, ``min_length > max_length``, ``branch_prob`` outside [0, 1]).
    """
    check_positive(max_depth=max_depth, max_args=max_args, max_length=max_length, min_length=min_length,
                   num_train=num_train, num_test=num_test)
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2 (every operator takes 2..max_args arguments), got {max_args}")
    if min_length > max_length or max_length < 4:
        raise ValueError(f"need 4 <= max_length and min_length <= max_length, got {min_length=}, {max_length=}")
    if not 0.0 <= branch_prob <= 1.0:
        raise ValueError(f"branch_prob must be in [0, 1], got {branch_prob}")
    r_train, r_test = split_rngs(seed)
    args = (max_depth, max_args, max_length, min_length, branch_prob, bool(add_cls))
    options = dict(max_depth=max_depth, max_args=max_args, max_length=max_length, min_length=min_length,
                   branch_prob=branch_prob, add_cls=add_cls, num_train=num_train, num_test=num_test, seed=seed)
    return SuiteDataset(
        name="listops", kind="classify", train=_split(r_train, num_train, *args), test=_split(r_test, num_test, *args),
        seq_len=max_length + int(add_cls), metric="accuracy", vocab_size=VOCAB_SIZE, num_classes=10,
        vocab=dict(VOCAB), options=options,
    )
