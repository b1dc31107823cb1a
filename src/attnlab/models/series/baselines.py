"""Closed-form forecasting baselines, fitted on the training split of a :class:`~attnlab.data.series.ForecastData`
and scored by the same evaluation as every model (:func:`attnlab.objectives.forecast.evaluate_forecast`).

- :class:`SeasonalNaive`: ``ŷ_{L+h} = x_{L+h-m⌈h/m⌉}`` (period ``m``; ``m = 1`` repeats the last value).
- :class:`RidgeLags`: one ridge regression from the last ``lags`` values to the ``T`` next ones, shared by the target
  variates (the closed-form counterpart of Zeng et al. 2023's Linear), intercept unpenalised.
- :class:`HourlyBinned`: a separate ridge regression per slot of the day (hour; half hour for half-hourly data), and
  optionally per weekday, from the exogenous values at the forecast step to the target (Roy, Pyltsov & Hu 2025,
  arXiv 2505.11390, where this beats Transformers at load forecasting). It reads the exogenous columns over the
  horizon (``future_exog``): they must be known in advance (forecasts, calendar) or the result is an oracle. Without
  exogenous columns it is the per-slot mean profile.

Every ``predict(batch)`` returns ``(B, T, C_t)`` on the normalised scale. All fits are float64 closed forms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...data.series.windows import ForecastData


def ridge(X: Tensor, Y: Tensor, alpha: float) -> Tensor:
    """``W (D + 1, K)`` minimising ``|[X, 1] W - Y|² + alpha |W[:-1]|²`` (the intercept row unpenalised), float64.

    Raises:
        ValueError: ``alpha < 0`` or no rows.
    """
    if alpha < 0 or X.shape[0] == 0:
        raise ValueError(f"ridge needs alpha >= 0 and at least one row, got alpha={alpha}, {X.shape[0]} rows")
    Xb = torch.cat([X.double(), torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
    reg = torch.eye(Xb.shape[1], dtype=torch.float64) * alpha
    reg[-1, -1] = 0.0
    return torch.linalg.lstsq(Xb.T @ Xb + reg, Xb.T @ Y.double()).solution


def _all_windows(data: ForecastData) -> dict[str, Tensor]:
    return data.train.batch(torch.arange(len(data.train)), future_exog=True)


class SeasonalNaive:
    """Seasonal naive forecast with period ``period`` (needs ``lookback >= period``)."""

    uses_future_exog = False

    def __init__(self, period: int = 1):
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self.name = "repeat" if period == 1 else f"seasonal_naive_{period}"

    def fit(self, data: ForecastData) -> "SeasonalNaive":
        if data.lookback < self.period:
            raise ValueError(f"seasonal naive with period {self.period} needs lookback >= {self.period}, got "
                             f"{data.lookback}")
        return self

    def predict(self, batch: dict[str, Tensor], num_targets: int, horizon: int) -> Tensor:
        x = batch["inputs"][..., :num_targets]
        L, m = x.shape[1], self.period
        h = torch.arange(1, horizon + 1)
        src = L - 1 + h - m * torch.div(h + m - 1, m, rounding_mode="floor")  # L + h - 1 - m ceil(h / m)
        return x[:, src.to(x.device)]


class RidgeLags:
    """Ridge regression on the last ``lags`` values (default: the whole look-back), shared by target variates."""

    uses_future_exog = False

    def __init__(self, lags: int | None = None, alpha: float = 1.0):
        self.lags, self.alpha, self.name = lags, alpha, "ridge"
        self.weight: Tensor | None = None

    def fit(self, data: ForecastData) -> "RidgeLags":
        self.lags = self.lags or data.lookback
        if not 1 <= self.lags <= data.lookback:
            raise ValueError(f"lags must be in [1, lookback={data.lookback}], got {self.lags}")
        w = _all_windows(data)
        c = data.num_targets
        X = w["inputs"][:, -self.lags:, :c].transpose(1, 2).reshape(-1, self.lags)  # (N*C, lags)
        Y = w["targets"].transpose(1, 2).reshape(-1, data.horizon)  # (N*C, T)
        self.weight = ridge(X, Y, self.alpha)
        return self

    def predict(self, batch: dict[str, Tensor], num_targets: int, horizon: int) -> Tensor:
        x = batch["inputs"][:, -self.lags:, :num_targets].transpose(1, 2).double()  # (B, C, lags)
        W = self.weight.to(x.device)
        return (x @ W[:-1] + W[-1]).transpose(1, 2).float()


class HourlyBinned:
    """One ridge regression per slot of the day (and weekday): target at row ``r`` from exogenous values at ``r``.

    ``period`` slots per day (24 hourly, 48 half-hourly; for series without sub-daily timestamps, slots are
    ``row mod period``).
    """

    uses_future_exog = True

    def __init__(self, period: int = 24, weekday: bool = False, alpha: float = 1e-3):
        self.period, self.weekday, self.alpha = period, weekday, alpha
        self.name = "binned_weekday" if weekday else "binned"
        self.weight: Tensor | None = None  # (slots, C_x + 1, C_t)
        self.data: ForecastData | None = None

    def fit(self, data: ForecastData) -> "HourlyBinned":
        n_tr = data.borders[0]
        z = torch.from_numpy(data.normalise(data.frame.values[:n_tr]))  # training rows only
        slots = torch.from_numpy(data.slots(torch.arange(n_tr).numpy(), self.period, self.weekday))
        c = data.num_targets
        self.weight = fit_binned(z[:, :c], z[:, c:], slots, self.period * (7 if self.weekday else 1), self.alpha)
        self.data = data
        return self

    def predict(self, batch: dict[str, Tensor], num_targets: int, horizon: int) -> Tensor:
        L = batch["inputs"].shape[1]
        rows = batch["index"].cpu()[:, None] + L + torch.arange(horizon)  # (B, T) frame rows of the horizon
        slots = torch.from_numpy(self.data.slots(rows.numpy(), self.period, self.weekday))
        W = self.weight.to(batch["inputs"].device)[slots.to(batch["inputs"].device)]  # (B, T, C_x + 1, C_t)
        z = batch["future_exog"].double()
        return (torch.einsum("btx,btxc->btc", z, W[:, :, :-1]) + W[:, :, -1]).float()


def fit_binned(y: Tensor, z: Tensor, slots: Tensor, num_slots: int, alpha: float) -> Tensor:
    """Per-slot ridge fits: ``W[s] (C_x + 1, C_t)`` from rows with ``slots == s`` of ``z (N, C_x)`` to ``y (N, C_t)``
    (last row the intercept). A slot without training rows gets the overall fit.

    Raises:
        ValueError: no rows at all.
    """
    overall = ridge(z, y, alpha)
    W = overall.expand(num_slots, *overall.shape).clone()
    for s in torch.unique(slots).tolist():
        rows = slots == s
        W[s] = ridge(z[rows], y[rows], alpha)
    return W


def default_baselines(period: int | None, exogenous: bool) -> list:
    """The baselines of a report: repeat, seasonal naive (when the series has a period), ridge on lags and, with a
    period, the hourly-binned regression (per slot; on the exogenous columns when there are any)."""
    out = [SeasonalNaive(1), RidgeLags()]
    if period and period > 1:
        out.insert(1, SeasonalNaive(period))
        out.append(HourlyBinned(period))
    return out
