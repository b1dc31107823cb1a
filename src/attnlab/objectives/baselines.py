"""Non-Transformer baselines for the suite's datasets: the floor (or, for regression, the optimum) every
attention variant is compared against. ``run_baselines(dataset)`` runs the ones that fit a dataset.

- majority class / per-position most frequent target (chance level for recall, copying, grokking);
- least squares and ridge regression fitted on each prefix of in-context examples (numpy; Akyürek
  et al. 2022 show trained Transformers track them: min-norm least squares without noise, ridge with
  ``lambda = noise_std**2``, the Bayes posterior mean under ``w ~ N(0, I)``, with noise);
- bag-of-tokens logistic regression (unigrams + hashed bigrams, fastText-style) for byte sentiment
  and ListOps; pixel logistic regression for Fashion-MNIST — both by full-batch L-BFGS in torch.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.base import IGNORE_INDEX, SuiteDataset, SuiteSplit
from .metrics import accuracy


def majority_class_accuracy(train_labels: Tensor, test_labels: Tensor) -> float:
    """Test accuracy of always predicting the most frequent training label."""
    majority = torch.bincount(train_labels).argmax()
    return (test_labels == majority).float().mean().item()


def position_frequency_predictions(train: SuiteSplit, test: SuiteSplit) -> Tensor:
    """``(N_test, T)`` predictions: at each position, the target most frequent there in ``train``.

    A chance-level reference for ``lm`` datasets (it ignores the input). Positions never scored in
    training predict ``IGNORE_INDEX``. Raises ``ValueError`` for a split without ``loss_mask``.
    """
    if train.loss_mask is None or train.targets.dim() != 2:
        raise ValueError("position_frequency_predictions needs an 'lm' dataset split (targets and loss_mask (N, T))")
    targets = train.targets.clone()
    targets[~train.loss_mask] = IGNORE_INDEX
    t = targets.shape[1]
    vocab = int(targets.max()) + 1
    counts = torch.zeros(t, vocab + 1, dtype=torch.long, device=targets.device)  # column 0 counts ignored positions
    counts.scatter_add_(1, (targets + 1).clamp(min=0).T.contiguous(), torch.ones_like(targets.T))
    counts[:, 0] = -1  # an ignored target never wins unless nothing else occurs
    best = counts.argmax(1) - 1  # (T,)
    best[counts[:, 1:].sum(1) == 0] = IGNORE_INDEX
    return best.expand(len(test), t)


def prefix_ridge_predictions(xs: np.ndarray, ys: np.ndarray, lams: tuple[float, ...] = (0.0,),
                             rcond: float = 1e-10) -> list[np.ndarray]:
    """For each ``lam`` in ``lams``, ``pred (N, K)`` where ``pred[:, k]`` predicts ``ys[:, k]`` from
    the ridge fit on the first ``k`` pairs (one SVD per prefix shared by every ``lam``).

    ``xs (N, K, D)``, ``ys (N, K)``. Fit ``w = V diag(s / (s^2 + lam)) U^T y``: ``lam = 0`` is
    minimum-norm least squares (defined for ``k < D`` too); ``pred[:, 0] = 0`` (no data yet).

    Raises:
        ValueError: a negative ``lam`` or mismatched shapes.
    """
    if any(lam < 0 for lam in lams):
        raise ValueError(f"ridge lambdas must be >= 0, got {lams}")
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"need xs (N, K, D) and ys (N, K), got {xs.shape} and {ys.shape}")
    n, k_max, _ = xs.shape
    preds = [np.zeros((n, k_max)) for _ in lams]
    for k in range(1, k_max):
        u, s, vt = np.linalg.svd(xs[:, :k], full_matrices=False)  # (N, k, r), (N, r), (N, r, D); r = min(k, D)
        keep = s > rcond * s[:, :1]
        uty = np.einsum("nkr,nk->nr", u, ys[:, :k])  # (N, r)
        for pred, lam in zip(preds, lams):
            gain = np.where(keep, s / np.where(keep, s * s + lam, 1.0), 0.0)  # (N, r)
            w = np.einsum("nrd,nr->nd", vt, gain * uty)  # (N, D)
            pred[:, k] = np.einsum("nd,nd->n", xs[:, k], w)
    return preds


def ridge_predictions(xs: np.ndarray, ys: np.ndarray, lam: float) -> np.ndarray:
    """Ridge regression on each prefix: ``pred (N, K)`` (see :func:`prefix_ridge_predictions`)."""
    return prefix_ridge_predictions(xs, ys, (lam,))[0]


def least_squares_predictions(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Minimum-norm least squares on each prefix: ``pred (N, K)`` (``lam = 0``)."""
    return prefix_ridge_predictions(xs, ys, (0.0,))[0]


def regression_baselines(dataset: SuiteDataset, ridge_lambda: float | None = None) -> dict[str, np.ndarray]:
    """Squared-error curves on ``dataset.test`` of an in-context regression dataset.

    Returns ``{"num_examples": (K,), "zero": (K,), "least_squares": (K,), "ridge": (K,)}``: mean over
    test rows of the squared error after ``num_examples`` in-context pairs (interleaved format: every
    ``k``; concat format: only the query's ``k``). ``ridge_lambda`` defaults to ``noise_std**2``, or
    0.01 without noise. Least squares spikes at ``k = dim`` with noise (interpolation threshold).
    """
    noise = float(dataset.options.get("noise_std", 0.0))
    lam = (noise ** 2 if noise > 0 else 0.01) if ridge_lambda is None else ridge_lambda
    xs, ys = dataset.test.extras["xs"].numpy(), dataset.test.extras["ys"].numpy()
    interleaved = dataset.options.get("format", "interleaved") == "interleaved"
    ks = np.arange(xs.shape[1]) if interleaved else np.array([xs.shape[1] - 1])
    ls, ridge = prefix_ridge_predictions(xs, ys, (0.0, lam))
    curves = {"num_examples": ks, "zero": (ys ** 2).mean(0)[ks]}
    curves["least_squares"] = ((ls - ys) ** 2).mean(0)[ks]
    curves["ridge"] = ((ridge - ys) ** 2).mean(0)[ks]
    return curves


def ngram_features(split: SuiteSplit, vocab_size: int, ngram: int = 2, num_buckets: int = 1 << 16) -> Tensor:
    """Sparse COO ``(N, vocab_size [+ num_buckets])``: n-gram counts of each row's real tokens, each row
    scaled to unit L2 norm. Unigram ``a`` -> column ``a``; with ``ngram=2`` also bigram ``(a, b)`` ->
    column ``vocab_size + (a * vocab_size + b) % num_buckets`` (hashing trick).

    Raises:
        ValueError: ``ngram`` not 1 or 2.
    """
    if ngram not in (1, 2):
        raise ValueError(f"ngram must be 1 or 2, got {ngram!r}")
    ids, dev = split.inputs, split.inputs.device
    real = split.key_padding_mask if split.key_padding_mask is not None else torch.ones_like(ids, dtype=torch.bool)
    cols, keeps = [ids], [real]
    if ngram >= 2:
        cols.append(vocab_size + (ids[:, :-1] * vocab_size + ids[:, 1:]) % num_buckets)  # (N, T - 1)
        keeps.append(real[:, :-1] & real[:, 1:])
    col, keep = torch.cat(cols, dim=1), torch.cat(keeps, dim=1)  # (N, F)
    rows = torch.arange(ids.shape[0], device=dev)[:, None].expand_as(col)
    nfeat = vocab_size + (num_buckets if ngram >= 2 else 0)
    x = torch.sparse_coo_tensor(torch.stack([rows[keep], col[keep]]), torch.ones(int(keep.sum()), device=dev),
                                (ids.shape[0], nfeat), check_invariants=False).coalesce()  # (N, F) counts
    idx, counts = x.indices(), x.values()
    norms = torch.zeros(ids.shape[0], device=dev).index_add_(0, idx[0], counts * counts).sqrt().clamp(min=1e-12)
    return torch.sparse_coo_tensor(idx, counts / norms[idx[0]], x.shape, check_invariants=False).coalesce()


def _csr(x: Tensor) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": we only use CSR @ dense
        warnings.simplefilter("ignore", UserWarning)
        return x.to_sparse_csr()


def fit_linear_softmax(x_train: Tensor, y_train: Tensor, num_classes: int, l2: float = 1e-4,
                       max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression ``softmax(x @ w + b)`` by full-batch L-BFGS from zero.

    ``x_train (N, F)`` dense or sparse COO, ``y_train (N,)``; penalty ``l2 * |w|^2``. The gradient is
    written out, ``X^T (P - Y) / N + 2 l2 w``, with ``X`` and ``X^T`` as CSR for sparse inputs: ~10x
    faster than autograd through ``torch.sparse.mm``. Deterministic. Returns ``w (F, C)``, ``b (C,)``.
    """
    if x_train.is_sparse:
        x, xt = _csr(x_train), _csr(x_train.t().coalesce())  # (N, F), (F, N)
    else:
        x, xt = x_train, x_train.T
    n = x_train.shape[0]
    onehot = F.one_hot(y_train, num_classes).to(torch.float32)  # (N, C)
    w = torch.zeros(x_train.shape[1], num_classes, device=x_train.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x_train.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure():
        logits = x @ w + b  # (N, C)
        logp = torch.log_softmax(logits, dim=1)
        loss = -(logp * onehot).sum() / n + l2 * w.pow(2).sum()
        g = (logp.exp() - onehot) / n  # (N, C): d loss / d logits
        w.grad = xt @ g + 2 * l2 * w
        b.grad = g.sum(0)
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _linear_accuracies(dataset: SuiteDataset, x: dict[str, Tensor], l2: float, max_iter: int) -> dict[str, float]:
    labels = dataset.train.targets.to(x["train"].device)
    w, b = fit_linear_softmax(x["train"], labels, dataset.num_classes, l2, max_iter)
    out = {}
    for s in ("train", "test"):
        xs = _csr(x[s]) if x[s].is_sparse else x[s]
        out[f"{s}_accuracy"] = accuracy(xs @ w + b, getattr(dataset, s).targets.to(w.device))
    return out


def _check_classify(dataset: SuiteDataset, who: str) -> None:
    if dataset.kind != "classify" or dataset.num_classes is None:
        raise ValueError(f"{who} needs a classification dataset, got {dataset.name!r} ({dataset.kind})")


def bag_of_tokens_logistic(dataset: SuiteDataset, ngram: int = 2, num_buckets: int = 1 << 14, l2: float = 1e-5,
                           max_iter: int = 50, device: str | torch.device = "cpu") -> dict[str, float]:
    """Logistic regression on bag-of-n-gram features (:func:`ngram_features`; linear, fastText-like).

    For classification over tokens (byte sentiment: "bag of bytes"; ListOps). Returns
    ``{"train_accuracy", "test_accuracy"}``. Raises ``ValueError`` for a dataset that is not ``classify``.
    """
    _check_classify(dataset, "bag_of_tokens_logistic")
    x = {s: ngram_features(getattr(dataset, s), dataset.vocab_size, ngram, num_buckets).to(device)
         for s in ("train", "test")}
    return _linear_accuracies(dataset, x, l2, max_iter)


def pixel_logistic_regression(dataset: SuiteDataset, l2: float = 1e-4, max_iter: int = 100,
                              device: str | torch.device = "cpu") -> dict[str, float]:
    """Multinomial logistic regression on pixel intensities (token / (vocab_size - 1)).

    The linear baseline of Fashion-MNIST (Xiao et al. 2017 report ~84% for logistic regression).
    Returns ``{"train_accuracy", "test_accuracy"}``.
    """
    _check_classify(dataset, "pixel_logistic_regression")
    scale = float(max(dataset.vocab_size - 1, 1))
    x = {s: getattr(dataset, s).inputs.to(device, torch.float32) / scale for s in ("train", "test")}
    return _linear_accuracies(dataset, x, l2, max_iter)


def _lm_frequency(dataset: SuiteDataset) -> dict[str, float]:
    pred = position_frequency_predictions(dataset.train, dataset.test)
    return {"test_accuracy": accuracy(pred, dataset.test.targets, dataset.test.loss_mask)}


def _majority(dataset: SuiteDataset) -> dict[str, float]:
    return {"test_accuracy": majority_class_accuracy(dataset.train.targets, dataset.test.targets)}


def _regression(dataset: SuiteDataset) -> dict[str, float]:
    curves = regression_baselines(dataset)
    return {f"{name}_mse": float(curves[name].mean()) for name in ("zero", "least_squares", "ridge")}


BASELINES: dict[str, dict[str, Callable[[SuiteDataset], dict[str, float]]]] = {
    "mqar": {"position_frequency": _lm_frequency},
    "selective_copy": {"position_frequency": _lm_frequency},
    "modular_addition": {"position_frequency": _lm_frequency},
    "icl_regression": {"least_squares_ridge": _regression},
    "listops": {"majority": _majority, "bag_of_tokens": bag_of_tokens_logistic},
    "sentiment": {"majority": _majority, "bag_of_bytes": bag_of_tokens_logistic},
    "fashion_mnist": {"majority": _majority, "pixel_logistic": pixel_logistic_regression},
}


def run_baselines(dataset: SuiteDataset) -> dict[str, dict[str, float]]:
    """Every baseline registered for ``dataset.name``: ``{baseline: {metric: value}}`` (empty if none)."""
    return {name: fn(dataset) for name, fn in BASELINES.get(dataset.name, {}).items()}
