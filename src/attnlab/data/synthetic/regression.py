"""In-context linear regression: each sequence is a fresh linear problem the model solves in context.

Garg et al. 2022 ("What can Transformers learn in-context?"), Akyürek et al. 2022 ("What learning
algorithm is in-context learning? Investigations with linear models") and von Oswald et al. 2023
("Transformers learn in-context by gradient descent"). Baselines (least squares, ridge) are in
:mod:`attnlab.objectives.baselines`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import SuiteDataset, SuiteSplit, check_positive, split_rngs

FORMATS = ("interleaved", "concat")


def sample_linear_problems(rng: np.random.Generator, n: int, num_points: int, dim: int,
                           noise_std: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w ~ N(0, I_dim)``, ``x_i ~ N(0, I_dim)``, ``y_i = w . x_i + noise_std * eps``.

    Returns ``xs (N, num_points, dim)``, ``ys (N, num_points)``, ``w (N, dim)``, all float64.
    """
    w = rng.standard_normal((n, dim))
    xs = rng.standard_normal((n, num_points, dim))
    ys = np.einsum("nkd,nd->nk", xs, w)  # (N, K)
    if noise_std > 0:
        ys = ys + noise_std * rng.standard_normal(ys.shape)
    return xs, ys, w


def interleave(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Garg/Akyürek layout: tokens ``[x_1, 0], [0, y_1], [x_2, 0], ...`` of width ``dim + 1``.

    Returns ``inputs (N, 2K, dim + 1)``, ``targets (N, 2K)`` (``y_i`` at the position of ``x_i``, 0
    elsewhere) and ``loss_mask (N, 2K)`` (True at the ``x`` positions): a causal model reading ``x_i``
    has seen the ``i - 1`` earlier pairs, so position ``2i`` measures the error after ``i - 1`` examples.
    """
    n, k, d = xs.shape
    inputs = np.zeros((n, 2 * k, d + 1))
    inputs[:, 0::2, :d] = xs
    inputs[:, 1::2, d] = ys
    targets = np.zeros((n, 2 * k))
    targets[:, 0::2] = ys
    mask = np.zeros((n, 2 * k), dtype=bool)
    mask[:, 0::2] = True
    return inputs, targets, mask


def concatenate(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """von Oswald layout: tokens ``[x_i, y_i]`` for the ``K - 1`` context pairs, then the query ``[x_K, 0]``.

    Returns ``inputs (N, K, dim + 1)``, ``targets (N, K)`` and ``loss_mask (N, K)``: only the query
    position (the last) is scored, with target ``y_K``.
    """
    n, k, d = xs.shape
    inputs = np.concatenate([xs, ys[..., None]], axis=-1)  # (N, K, d + 1)
    inputs[:, -1, d] = 0.0  # the query's y is what the model must predict
    targets = np.zeros((n, k))
    targets[:, -1] = ys[:, -1]
    mask = np.zeros((n, k), dtype=bool)
    mask[:, -1] = True
    return inputs, targets, mask


def _split(rng: np.random.Generator, n: int, num_examples: int, dim: int, noise_std: float, fmt: str) -> SuiteSplit:
    num_points = num_examples if fmt == "interleaved" else num_examples + 1
    xs, ys, w = sample_linear_problems(rng, n, num_points, dim, noise_std)
    inputs, targets, mask = (interleave if fmt == "interleaved" else concatenate)(xs, ys)
    f32 = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return SuiteSplit(f32(inputs), f32(targets), loss_mask=torch.from_numpy(mask),
                     extras={"xs": f32(xs), "ys": f32(ys), "w": f32(w)})


def make_icl_regression(dim: int = 8, num_examples: int = 32, noise_std: float = 0.0, format: str = "interleaved",
                        num_train: int = 10_000, num_test: int = 1_000, seed: int = 0) -> SuiteDataset:
    """In-context linear regression with ``w ~ N(0, I)``, ``x ~ N(0, I)``, ``y = w.x + noise_std * eps``.

    ``format="interleaved"`` (Garg et al., Akyürek et al.): ``num_examples`` pairs as ``2 * num_examples``
    tokens; every ``x`` position is scored, so one sequence gives the squared error after
    ``0 .. num_examples - 1`` in-context examples. ``format="concat"`` (von Oswald et al.):
    ``num_examples`` context tokens ``[x_i, y_i]`` then one query ``[x_q, 0]``; only the query is scored.
    Inputs are float ``(N, T, dim + 1)``; a model needs a linear input embedding and a scalar head.
    ``extras``: ``xs (N, K, dim)``, ``ys (N, K)``, ``w (N, dim)`` (``K = num_examples``, +1 for concat).
    With ``noise_std = 0`` the zero predictor's expected squared error is ``dim``; least squares reaches
    0 from ``k >= dim`` examples on.

    Raises:
        ValueError: non-positive sizes, negative ``noise_std``, unknown ``format``.
    """
    check_positive(dim=dim, num_examples=num_examples, num_train=num_train, num_test=num_test)
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid: {list(FORMATS)}")
    r_train, r_test = split_rngs(seed)
    args = (num_examples, dim, float(noise_std), format)
    train, test = _split(r_train, num_train, *args), _split(r_test, num_test, *args)
    options = dict(dim=dim, num_examples=num_examples, noise_std=noise_std, format=format, num_train=num_train,
                   num_test=num_test, seed=seed)
    return SuiteDataset(name="icl_regression", kind="regression", train=train, test=test,
                       seq_len=train.inputs.shape[1], metric="mse", input_dim=dim + 1, options=options)
