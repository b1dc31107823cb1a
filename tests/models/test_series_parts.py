"""Series building blocks and baselines against their definitions: RevIN round trip, patching = unfold with end
padding, decomposition of a pure trend, DLinear against its closed-form least-squares fit, the binned regression
recovering per-hour coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.data.series import SeriesFrame, make_forecast_data
from attnlab.models import create_model
from attnlab.models.series import RevIN, decompose, patchify
from attnlab.models.series.baselines import HourlyBinned, fit_binned
from attnlab.objectives.forecast import evaluate_forecast


@pytest.mark.parametrize("affine", [False, True])
def test_revin_round_trip_and_statistics(affine):
    x = torch.randn(4, 50, 3, dtype=torch.float64) * 5 + 7
    r = RevIN(3, affine=affine).double()
    if affine:
        with torch.no_grad():
            r.weight.uniform_(0.5, 2.0)
            r.bias.normal_()
    z = r.norm(x)
    # exact up to float64 rounding; with affine the reference's guard (gamma + eps^2) shifts it by ~1e-10 relative
    torch.testing.assert_close(r.denorm(z), x, rtol=0, atol=1e-8 if affine else 1e-12)
    if not affine:
        v = x.var(1, unbiased=False)
        torch.testing.assert_close(z.mean(1), torch.zeros(4, 3, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(z.var(1, unbiased=False), v / (v + 1e-5), atol=1e-12, rtol=0)


@pytest.mark.parametrize("L, P, S", [(96, 16, 8), (336, 16, 8), (512, 16, 8), (50, 12, 5), (20, 20, 3)])
def test_patching_is_unfold_with_end_padding(L, P, S):
    x = torch.randn(3, L)
    p = patchify(x, P, S)
    assert p.shape == (3, (L - P) // S + 2, P)
    padded = torch.nn.functional.pad(x[:, None], (0, S), mode="replicate")[:, 0]  # ReplicationPad1d((0, S))
    torch.testing.assert_close(p, padded.unfold(-1, P, S), rtol=0, atol=0)
    torch.testing.assert_close(p[:, 0], x[:, :P])
    if (L - P) % S == 0:
        torch.testing.assert_close(p[:, -1, -S:], x[:, -1:].expand(-1, S))
    if (L, P, S) in ((336, 16, 8), (512, 16, 8)):
        assert p.shape[1] == {336: 42, 512: 64}[L]  # PatchTST/42 and /64
    with pytest.raises(ValueError, match="shorter than patch_size"):
        patchify(torch.randn(1, 10), 16, 8)


def test_decomposition_of_a_pure_trend():
    L, k = 60, 25
    x = (torch.arange(L, dtype=torch.float64) * 0.3 - 2)[None, :, None]
    seasonal, trend = decompose(x, k)
    torch.testing.assert_close(seasonal + trend, x, rtol=0, atol=1e-12)
    h = (k - 1) // 2
    torch.testing.assert_close(trend[:, h:L - h], x[:, h:L - h], rtol=0, atol=1e-12)  # interior: the trend itself
    # at the ends the edge padding repeats x_1 / x_L (Autoformer's reference): the first trend value is
    # the mean of h copies of x_1 and x_1..x_{h+1}
    assert float(trend[0, 0, 0]) == pytest.approx(float((h * x[0, 0, 0] + x[0, : h + 1, 0].sum()) / k))
    const = torch.full((2, 30, 3), 4.0, dtype=torch.float64)
    s, t = decompose(const, k)
    torch.testing.assert_close(t, const, rtol=0, atol=1e-12)
    assert float(s.abs().max()) < 1e-12
    with pytest.raises(ValueError, match="must be odd"):
        decompose(x, 24)


def _frame(values, period=24):
    ts = np.datetime64("2024-01-01T00:00", "s") + np.arange(len(values)) * np.timedelta64(3600, "s")
    cols = tuple(f"c{i}" for i in range(values.shape[1]))
    return SeriesFrame("synthetic", ts, values, cols, cols[:1], cols[1:], period=period)


def test_dlinear_reaches_its_closed_form_fit():
    rng = np.random.default_rng(1)
    t = np.arange(700)
    y = np.sin(2 * np.pi * t / 24) + 0.01 * t + 0.3 * rng.normal(size=700)
    d = make_forecast_data(_frame(y[:, None]), lookback=48, horizon=6)
    w = d.train.batch(torch.arange(len(d.train)))
    x, target = w["inputs"].double(), w["targets"].double()
    s, tr = decompose(x, 25)
    feats = torch.cat([s[..., 0], tr[..., 0], torch.ones(len(x), 1, dtype=torch.float64)], 1)  # (N, 2L + 1)
    sol = torch.linalg.lstsq(feats, target[..., 0], driver="gelsd").solution  # SVD: the features are near-collinear
    best = float((feats @ sol - target[..., 0]).pow(2).mean())
    model = create_model("dlinear", lookback=48, horizon=6, num_variates=1, num_exogenous=0).double()
    L = 48
    with torch.no_grad():  # the closed-form least-squares solution, written into DLinear's two maps
        model.seasonal.weight.copy_(sol[:L].T)
        model.trend.weight.copy_(sol[L:2 * L].T)
        model.seasonal.bias.copy_(sol[2 * L])
        model.trend.bias.zero_()
    pred = model(x)
    torch.testing.assert_close(pred[..., 0], feats @ sol, atol=1e-10, rtol=0)  # DLinear = linear map of [s, t]
    loss = (pred - target).pow(2).mean()
    assert float(loss.detach()) == pytest.approx(best, rel=1e-12)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(grad.abs().max()) < 1e-9  # the closed form is DLinear's optimum: the training gradient vanishes
    # and a model trained by the objective approaches it from its default initialisation
    fresh = create_model("dlinear", lookback=48, horizon=6, num_variates=1, num_exogenous=0).double()
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (fresh(x) - target).pow(2).mean().backward()
        opt.step()
    assert float((fresh(x) - target).pow(2).mean().detach()) < best * 1.1


def test_binned_regression_recovers_per_hour_coefficients():
    rng = np.random.default_rng(0)
    n = 24 * 60
    z = rng.normal(size=(n, 2))
    a = rng.normal(size=(24, 2))
    b = rng.normal(size=24)
    hour = np.arange(n) % 24
    y = (z * a[hour]).sum(1) + b[hour]  # noiseless, one linear model per hour
    W = fit_binned(torch.from_numpy(y[:, None]), torch.from_numpy(z), torch.from_numpy(hour), 24, alpha=0.0)
    np.testing.assert_allclose(W[:, :2, 0].numpy(), a, atol=1e-8)
    np.testing.assert_allclose(W[:, 2, 0].numpy(), b, atol=1e-8)
    # through the protocol (normalised scale) the forecast of every test window is exact
    d = make_forecast_data(_frame(np.column_stack([y, z])), lookback=24, horizon=24)
    m = HourlyBinned(24, alpha=0.0).fit(d)
    r = evaluate_forecast(lambda batch: m.predict(batch, 1, 24), d.test, 17, future_exog=True)
    assert r["mse"] < 1e-12
    # a slot's prediction ignores every other slot's training rows
    y2 = y.copy()
    y2[hour != 5] += rng.normal(size=(hour != 5).sum())
    W2 = fit_binned(torch.from_numpy(y2[:, None]), torch.from_numpy(z), torch.from_numpy(hour), 24, alpha=0.0)
    torch.testing.assert_close(W2[5], W[5], rtol=0, atol=1e-10)


def test_binned_regression_per_weekday_slots():
    rng = np.random.default_rng(2)
    n = 24 * 7 * 12
    z = rng.normal(size=(n, 1))
    hour, day = np.arange(n) % 24, (np.arange(n) // 24) % 7
    a = rng.normal(size=(24, 7))
    y = z[:, 0] * a[hour, day]  # the coefficient depends on hour and weekday
    d = make_forecast_data(_frame(np.column_stack([y, z])), lookback=24, horizon=24)
    slots = d.slots(np.arange(48), 24, weekday=True)
    assert slots[0] == 24 * 0 and slots[25] == 1 + 24 * 1  # 2024-01-01 is a Monday: slot = hour + 24 * weekday
    exact = HourlyBinned(24, weekday=True, alpha=0.0).fit(d)
    pooled = HourlyBinned(24, alpha=0.0).fit(d)
    score = lambda m: evaluate_forecast(lambda b: m.predict(b, 1, 24), d.test, 64, future_exog=True)["mse"]  # noqa: E731
    assert score(exact) < 1e-12 < 0.05 < score(pooled)  # only the per-weekday model is exact
