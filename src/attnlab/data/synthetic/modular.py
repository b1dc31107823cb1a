"""Modular arithmetic with a small training fraction: the grokking dataset (Power et al. 2022)."""

from __future__ import annotations

import numpy as np
import torch

from ..base import IGNORE_INDEX, SuiteDataset, SuiteSplit, check_positive, long_tensor, split_rngs

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
}


def _split(a: np.ndarray, b: np.ndarray, c: np.ndarray, eq: int) -> SuiteSplit:
    n = a.shape[0]
    inputs = np.stack([a, b, np.full(n, eq)], axis=1)  # (N, 3): "a b ="
    targets = np.full((n, 3), IGNORE_INDEX, dtype=np.int64)
    targets[:, 2] = c  # read the answer at "="
    mask = np.zeros((n, 3), dtype=bool)
    mask[:, 2] = True
    return SuiteSplit(long_tensor(inputs), long_tensor(targets), loss_mask=torch.from_numpy(mask))


def make_modular_addition(modulus: int = 97, train_fraction: float = 0.3, operation: str = "add",
                          seed: int = 0) -> SuiteDataset:
    """All pairs ``(a, b)`` of ``[0, modulus)^2`` with answer ``a op b mod modulus``, split at random.

    Power et al. 2022, "Grokking: generalization beyond overfitting on small algorithmic datasets":
    with a small ``train_fraction`` a Transformer first memorises the training pairs and, much later,
    generalises; plot train and test (= validation) accuracy over steps.

    Vocabulary layout: ``0 .. modulus-1`` = numbers, ``modulus`` = "=" (``vocab_size = modulus + 1``).
    ``inputs`` ``(N, 3)`` = ``a b =``; the only scored target is at position 2 (``loss_mask``).
    The ``modulus**2`` pairs are permuted with ``seed``; the first ``round(train_fraction * modulus**2)``
    form ``train``, the rest ``test``.

    Raises:
        ValueError: ``modulus < 2``, ``train_fraction`` outside ``(0, 1)``, unknown ``operation``.
    """
    check_positive(modulus=modulus)
    if modulus < 2:
        raise ValueError(f"modulus must be >= 2, got {modulus}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; valid: {sorted(OPERATIONS)}")
    a, b = np.divmod(np.arange(modulus * modulus), modulus)  # every pair once, row-major
    c = OPERATIONS[operation](a, b, modulus)
    (rng,) = split_rngs(seed, 1)
    perm = rng.permutation(modulus * modulus)
    n_train = min(max(int(round(train_fraction * modulus * modulus)), 1), modulus * modulus - 1)
    tr, te = perm[:n_train], perm[n_train:]
    options = dict(modulus=modulus, train_fraction=train_fraction, operation=operation, seed=seed)
    return SuiteDataset(
        name="modular_addition", kind="lm", train=_split(a[tr], b[tr], c[tr], modulus),
        test=_split(a[te], b[te], c[te], modulus), seq_len=3, metric="accuracy", vocab_size=modulus + 1,
        vocab={"first_number": 0, "=": modulus}, options=options,
    )
