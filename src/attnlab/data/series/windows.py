"""The forecasting protocol: chronological splits, train-only scaling, sliding windows, every window scored once.

One protocol for every model and baseline (the custom-dataset split of Wu et al. 2021, Autoformer, as kept by
Time-Series-Library):

- rows ``[0, n_tr)`` train, ``[n_tr, n_tr + n_va)`` validation, ``[n - n_te, n)`` test, with ``n_tr = int(0.7 n)``,
  ``n_te = int(0.2 n)`` (fractions configurable); the validation and test slices start ``lookback`` rows early, so
  the first window's *inputs* reach into the previous split but no *target* does.
- z-score statistics (mean, population std; a constant column gets std 1) are fitted on the training rows only and
  applied to every row.
- windows have stride 1: a slice of ``R`` rows holds ``R - L - T + 1`` windows, each of them scored exactly once
  (no ``drop_last``; metrics are sums over windows divided by the element count, so they do not depend on the
  batch size).

Column layout everywhere: the target columns first, then the exogenous ones. A batch is
``{"inputs": (B, L, C), "targets": (B, T, C_t), "index": (B,) first row of the window in the frame}``; exogenous
values over the horizon (``(B, T, C_x)``, ``"future_exog"``) are given only to baselines that declare they use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .frame import SeriesDataError, SeriesFrame


@dataclass(frozen=True)
class WindowSplit:
    """The windows of one split: rows ``[first_row, first_row + len(values))`` of the frame, normalised.

    ``len(split)`` is the number of windows; :meth:`batch` gathers windows by index (the trainer's sampler draws
    indices, evaluation walks them in order).
    """

    values: Tensor  # (R, C) float32, normalised
    first_row: int
    lookback: int
    horizon: int
    num_targets: int

    def __len__(self) -> int:
        return self.values.shape[0] - self.lookback - self.horizon + 1

    def batch(self, index: Tensor, future_exog: bool = False) -> dict[str, Tensor]:
        """Windows ``index (B,)``: ``inputs (B, L, C)``, ``targets (B, T, C_t)``, ``index (B,)`` (frame row of the
        first input), and with ``future_exog`` the exogenous columns over the horizon ``(B, T, C_x)``."""
        index = torch.as_tensor(index, dtype=torch.long)
        L, T = self.lookback, self.horizon
        rows = index[:, None] + torch.arange(L + T)  # (B, L + T)
        w = self.values[rows]  # (B, L + T, C)
        out = {"inputs": w[:, :L], "targets": w[:, L:, : self.num_targets], "index": index + self.first_row}
        if future_exog:
            out["future_exog"] = w[:, L:, self.num_targets:]
        return out


@dataclass(frozen=True)
class ForecastData:
    """A series under the protocol (module docstring).

    Attributes:
        frame: the cleaned frame of ``target + exogenous`` columns (original units).
        mean, std: ``(C,)`` training-row statistics of every column.
        borders: ``(n_tr, n_va, n_te)`` row counts of the three splits.
        train, val, test: :class:`WindowSplit` s.
    """

    frame: SeriesFrame
    mean: np.ndarray
    std: np.ndarray
    borders: tuple[int, int, int]
    train: WindowSplit
    val: WindowSplit
    test: WindowSplit

    @property
    def lookback(self) -> int:
        return self.train.lookback

    @property
    def horizon(self) -> int:
        return self.train.horizon

    @property
    def num_targets(self) -> int:
        return len(self.frame.target)

    @property
    def num_exogenous(self) -> int:
        return len(self.frame.exogenous)

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """``(..., C)`` original units -> z-scores with the training statistics."""
        return (values - self.mean) / self.std

    def denormalise_targets(self, values: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """``(..., C_t)`` z-scores of the target columns -> original units."""
        m, s = self.mean[: self.num_targets], self.std[: self.num_targets]
        if isinstance(values, Tensor):
            return values * torch.as_tensor(s, dtype=values.dtype, device=values.device) + \
                torch.as_tensor(m, dtype=values.dtype, device=values.device)
        return values * s + m

    def slots(self, rows: np.ndarray, period: int, weekday: bool = False) -> np.ndarray:
        """The slot of frame rows ``rows`` in a cycle of ``period`` steps: the hour (or half hour ...) of the day for
        sub-daily datetime series, else ``row mod period``; with ``weekday``, ``slot + period * day of week``.

        Raises:
            SeriesDataError: ``weekday`` on a series without datetime timestamps.
        """
        ts = self.frame.timestamps[rows]
        if self.frame.is_datetime and np.datetime_data(ts.dtype)[0] in ("s", "m", "h"):
            secs = ts.astype("datetime64[s]").astype(np.int64)
            slot = (secs % 86400) * period // 86400  # period slots per day (48 for half-hourly data)
        else:
            slot = rows % period
        if weekday:
            if not self.frame.is_datetime:
                raise SeriesDataError(f"{self.frame.name}: per-weekday slots need datetime timestamps")
            days = ts.astype("datetime64[D]").astype(np.int64)
            slot = slot + period * ((days + 3) % 7)  # 1970-01-01 was a Thursday: Monday = 0
        return slot


def split_borders(n: int, lookback: int, horizon: int, val_fraction: float, test_fraction: float,
                  name: str = "series") -> tuple[int, int, int]:
    """``(n_tr, n_va, n_te)`` for ``n`` rows, each split holding at least one window.

    Raises:
        SeriesDataError: bad fractions, or a split too short for ``lookback + horizon`` (names sizes and the fix).
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SeriesDataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                              "and sum to less than 1")
    n_tr, n_te = int(n * (1 - val_fraction - test_fraction)), int(n * test_fraction)
    n_va = n - n_tr - n_te
    L, T = lookback, horizon
    counts = {"train": n_tr - L - T + 1, "validation": n_va - T + 1, "test": n_te - T + 1}
    for split, c in counts.items():
        if c < 1:
            rows = {"train": n_tr, "validation": n_va, "test": n_te}[split]
            raise SeriesDataError(f"{name}: the {split} split ({rows} of {n} rows) holds no window of lookback {L} + "
                                  f"horizon {T}; lower data.lookback / data.horizon or use a longer series")
    return n_tr, n_va, n_te


def make_forecast_data(frame: SeriesFrame, lookback: int = 96, horizon: int = 24, val_fraction: float = 0.1,
                       test_fraction: float = 0.2) -> ForecastData:
    """``frame`` (targets first, then exogenous columns; see :func:`~attnlab.data.series.frame.select`) under the
    protocol of the module docstring.

    Raises:
        SeriesDataError: non-positive lookback/horizon, bad fractions, or a split without a window.
    """
    if lookback < 1 or horizon < 1:
        raise SeriesDataError(f"lookback and horizon must be >= 1, got {lookback} and {horizon}")
    n = len(frame.values)
    n_tr, n_va, n_te = split_borders(n, lookback, horizon, val_fraction, test_fraction, frame.name)
    train_rows = frame.values[:n_tr]
    mean, std = train_rows.mean(0), train_rows.std(0)  # the scaler sees training rows only
    std = np.where(std > 0, std, 1.0)
    z = torch.from_numpy(((frame.values - mean) / std).astype(np.float32))
    c_t = len(frame.target)

    def split(start: int, stop: int) -> WindowSplit:
        return WindowSplit(z[start:stop], start, lookback, horizon, c_t)

    return ForecastData(frame, mean, std, (n_tr, n_va, n_te), split(0, n_tr),
                        split(n_tr - lookback, n_tr + n_va), split(n - n_te - lookback, n))
