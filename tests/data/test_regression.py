"""In-context linear regression: targets recomputed with numpy, least squares and ridge checked
against independent per-row solvers (np.linalg.lstsq, np.linalg.solve)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.data.synthetic.regression import make_icl_regression
from attnlab.objectives.baselines import (
    least_squares_predictions, prefix_ridge_predictions, regression_baselines, ridge_predictions, run_baselines,
)
from attnlab.objectives.metrics import score, squared_error_by_position


def test_interleaved_layout_and_numpy_targets():
    d, k = 5, 12
    task = make_icl_regression(dim=d, num_examples=k, num_train=64, num_test=16, seed=0)
    s = task.train
    xs, ys, w = (s.extras[n].double().numpy() for n in ("xs", "ys", "w"))
    assert s.inputs.shape == (64, 2 * k, d + 1) and s.inputs.dtype == torch.float32
    assert task.kind == "regression" and task.input_dim == d + 1 and task.seq_len == 2 * k
    np.testing.assert_allclose(ys, np.einsum("nkd,nd->nk", xs, w), atol=1e-5)
    inp = s.inputs.double().numpy()
    np.testing.assert_array_equal(inp[:, 0::2, :d], xs)
    np.testing.assert_array_equal(inp[:, 0::2, d], 0.0)
    np.testing.assert_array_equal(inp[:, 1::2, :d], 0.0)
    np.testing.assert_array_equal(inp[:, 1::2, d], ys)
    np.testing.assert_array_equal(s.targets[:, 0::2].double().numpy(), ys)
    assert s.loss_mask[:, 0::2].all() and not s.loss_mask[:, 1::2].any()


def test_noise_level_and_determinism():
    a = make_icl_regression(dim=4, num_examples=50, noise_std=0.3, num_train=400, num_test=10, seed=7)
    xs, ys, w = (a.train.extras[n].double().numpy() for n in ("xs", "ys", "w"))
    resid = ys - np.einsum("nkd,nd->nk", xs, w)
    assert abs(resid.std() - 0.3) < 0.01
    b = make_icl_regression(dim=4, num_examples=50, noise_std=0.3, num_train=400, num_test=10, seed=7)
    c = make_icl_regression(dim=4, num_examples=50, noise_std=0.3, num_train=400, num_test=10, seed=8)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.extras["w"], b.test.extras["w"])
    assert not torch.equal(a.train.inputs, c.train.inputs)


def test_least_squares_is_exact_from_dim_examples_on_without_noise():
    d, k = 6, 16
    task = make_icl_regression(dim=d, num_examples=k, num_train=10, num_test=200, seed=1)
    xs, ys = task.test.extras["xs"].numpy(), task.test.extras["ys"].numpy()
    pred = least_squares_predictions(xs, ys)
    assert pred.shape == (200, k)
    err = ((pred - ys) ** 2).mean(0)
    assert err[d:].max() < 1e-8  # k >= dim examples determine w exactly
    assert err[1:d].min() > 0.1 and err[0] == pytest.approx((ys[:, 0] ** 2).mean())
    for row in range(3):  # independent min-norm solver per row and prefix
        for j in (1, 3, d, k - 1):
            w_hat = np.linalg.lstsq(xs[row, :j].astype(np.float64), ys[row, :j].astype(np.float64), rcond=None)[0]
            assert pred[row, j] == pytest.approx(xs[row, j] @ w_hat, abs=1e-6)


def test_ridge_matches_the_closed_form():
    task = make_icl_regression(dim=4, num_examples=10, noise_std=0.5, num_train=10, num_test=30, seed=2)
    xs, ys = task.test.extras["xs"].numpy().astype(np.float64), task.test.extras["ys"].numpy().astype(np.float64)
    lam = 0.25
    pred = ridge_predictions(xs, ys, lam)
    assert pred.shape == (30, 10)
    for row in range(5):
        for j in (1, 2, 4, 9):
            x, y = xs[row, :j], ys[row, :j]
            w_hat = np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ y)
            assert pred[row, j] == pytest.approx(xs[row, j] @ w_hat, abs=1e-9)
    ls, r2 = prefix_ridge_predictions(xs, ys, (0.0, lam))
    np.testing.assert_allclose(r2, pred)
    np.testing.assert_allclose(ls, least_squares_predictions(xs, ys))
    with pytest.raises(ValueError, match=">= 0"):
        ridge_predictions(xs, ys, -1.0)


def test_baseline_curves_and_metric_by_number_of_examples():
    d, k = 4, 20
    task = make_icl_regression(dim=d, num_examples=k, noise_std=0.1, num_train=10, num_test=500, seed=3)
    curves = regression_baselines(task)
    assert set(curves) == {"num_examples", "zero", "least_squares", "ridge"}
    assert all(v.shape == (k,) for v in curves.values())
    assert abs(curves["zero"].mean() - (d + 0.01)) < 0.5  # E[y^2] = dim + noise variance
    assert curves["ridge"][-1] < 0.02 and curves["least_squares"][-1] < 0.02  # near the noise floor 0.01
    # ridge (lambda = noise variance, the Bayes posterior mean) avoids least squares' spike at k = dim
    assert curves["ridge"][d] < curves["least_squares"][d] / 10
    assert curves["ridge"][1:].mean() < curves["least_squares"][1:].mean()
    # the same curve through the model-facing path: predictions at scored positions -> metric per k
    xs, ys = task.test.extras["xs"].numpy(), task.test.extras["ys"].numpy()
    pred = torch.zeros(task.test.targets.shape)
    pred[:, 0::2] = torch.from_numpy(least_squares_predictions(xs, ys)).float()
    by_k = squared_error_by_position(pred, task.test.targets, task.test.loss_mask)
    np.testing.assert_allclose(by_k.numpy(), curves["least_squares"], rtol=1e-4, atol=1e-5)
    assert score(task, pred) == pytest.approx(curves["least_squares"].mean(), rel=1e-4)
    assert set(run_baselines(task)["least_squares_ridge"]) == {"zero_mse", "least_squares_mse", "ridge_mse"}


def test_concat_format_scores_only_the_query():
    d, k = 3, 8
    task = make_icl_regression(dim=d, num_examples=k, format="concat", num_train=20, num_test=100, seed=4)
    s = task.test
    assert s.inputs.shape == (100, k + 1, d + 1) and s.extras["xs"].shape == (100, k + 1, d)
    assert torch.equal(s.inputs[:, :, :d], s.extras["xs"])
    assert torch.equal(s.inputs[:, :-1, d], s.extras["ys"][:, :-1]) and (s.inputs[:, -1, d] == 0).all()
    assert s.loss_mask[:, -1].all() and s.loss_mask.sum() == 100
    assert torch.equal(s.targets[:, -1], s.extras["ys"][:, -1])
    curves = regression_baselines(task)
    assert curves["num_examples"].tolist() == [k] and curves["least_squares"][0] < 1e-8


def test_bad_options_raise():
    with pytest.raises(ValueError, match="unknown format 'pairs'"):
        make_icl_regression(format="pairs")
    with pytest.raises(ValueError, match="noise_std"):
        make_icl_regression(noise_std=-0.1)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        make_icl_regression(dim=0)
