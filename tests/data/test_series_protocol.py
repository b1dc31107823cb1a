"""The forecasting protocol: split borders, window counts, train-only scaling (poisoning), every test window once
whatever the batch size, and the deterministic baselines against a direct NumPy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnlab.data.series import SeriesDataError, SeriesFrame, load_forecast_data, make_forecast_data
from attnlab.models.series.baselines import RidgeLags, SeasonalNaive
from attnlab.objectives.forecast import evaluate_forecast


def frame(values: np.ndarray, period: int = 24) -> SeriesFrame:
    ts = np.datetime64("2024-01-01T00:00", "s") + np.arange(len(values)) * np.timedelta64(3600, "s")
    cols = tuple(f"c{i}" for i in range(values.shape[1]))
    return SeriesFrame("synthetic", ts, values.astype(np.float64), cols, cols[:1], cols[1:], period=period)


def test_borders_and_window_counts():
    d = load_forecast_data("taylor", lookback=336, horizon=48)
    n = 4032
    n_tr, n_te = int(0.7 * n), int(0.2 * n)
    assert d.borders == (n_tr, n - n_tr - n_te, n_te)
    assert (len(d.train), len(d.val), len(d.test)) == (2439, 357, 759)  # the counts the spec gives for 336 -> 48
    assert d.test.first_row == n - n_te - 336 and d.val.first_row == n_tr - 336
    # no validation or test target before the end of the training rows
    assert d.val.first_row + d.lookback == n_tr and d.test.first_row + d.lookback == n - n_te


def test_split_without_window_is_one_line():
    with pytest.raises(SeriesDataError, match=r"validation split \(21 of 203 rows\) holds no window .*lower data"):
        load_forecast_data("macrodata", lookback=96, horizon=24)


def test_scaler_never_sees_validation_or_test_rows():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(1000, 2))
    poisoned = clean.copy()
    n_tr = 700
    poisoned[n_tr:] = 1e6  # validation and test rows poisoned
    a, b = make_forecast_data(frame(clean), 24, 12), make_forecast_data(frame(poisoned), 24, 12)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_allclose(a.mean, clean[:n_tr].mean(0))
    np.testing.assert_allclose(a.std, clean[:n_tr].std(0))
    assert torch.equal(a.train.values, b.train.values)  # training windows identical


@pytest.mark.parametrize("batch_sizes", [(1, 7, 64)])
def test_every_test_window_once_for_any_batch_size(batch_sizes):
    d = load_forecast_data("elnino", lookback=48, horizon=12)
    seen: list[list[int]] = []

    def predict(batch):
        seen[-1].extend(batch["index"].tolist())
        return batch["inputs"][:, -1:, :1].expand(-1, 12, -1) * 0.9  # any forecast

    results = []
    for bs in batch_sizes:
        seen.append([])
        results.append(evaluate_forecast(predict, d.test, bs, d.std[:1]))
    expected = list(range(d.test.first_row, d.test.first_row + len(d.test)))
    for s in seen:
        assert s == expected  # each window exactly once, in order, none dropped
    n_te = d.borders[2]
    assert len(d.test) == n_te - 12 + 1
    for r in results[1:]:
        for k in ("mse", "mae", "mae_original"):
            assert r[k] == pytest.approx(results[0][k], rel=1e-12)
        assert r["values"] == len(d.test) * 12


def test_seasonal_naive_and_repeat_match_numpy():
    d = load_forecast_data("taylor", lookback=96, horizon=60)
    z = d.test.values.numpy().astype(np.float64)[:, 0]
    L, T = 96, 60
    for m in (1, 48):
        b = SeasonalNaive(m).fit(d)
        got = evaluate_forecast(lambda batch: b.predict(batch, 1, T), d.test, 50)
        sq, ab = [], []
        for w in range(len(d.test)):
            for h in range(1, T + 1):
                pred = z[w + L + h - 1 - m * math.ceil(h / m)]
                sq.append((pred - z[w + L + h - 1]) ** 2)
                ab.append(abs(pred - z[w + L + h - 1]))
        assert got["mse"] == pytest.approx(np.mean(sq), rel=1e-6)
        assert got["mae"] == pytest.approx(np.mean(ab), rel=1e-6)
    with pytest.raises(ValueError, match="needs lookback >= 336"):
        SeasonalNaive(336).fit(d)


def test_ridge_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    d = load_forecast_data("elnino", lookback=36, horizon=12)
    b = RidgeLags(lags=24, alpha=2.0).fit(d)
    w = d.train.batch(torch.arange(len(d.train)))
    X = w["inputs"][:, -24:, 0].double().numpy()
    Y = w["targets"][..., 0].double().numpy()
    ref = sklearn.Ridge(alpha=2.0, fit_intercept=True).fit(X, Y)  # intercept unpenalised, as ours
    t = d.test.batch(torch.arange(len(d.test)))
    ours = b.predict(t, 1, 12)[..., 0].double().numpy()
    np.testing.assert_allclose(ours, ref.predict(t["inputs"][:, -24:, 0].double().numpy()), atol=1e-5)
