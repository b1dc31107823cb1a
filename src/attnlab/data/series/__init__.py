"""The series modality: embedded series and user CSV files under one forecasting protocol.

- :mod:`.frame`: :class:`SeriesFrame`, the CSV reader and the timestamp/missing-value checks (fill policy).
- :mod:`.embedded`: the embedded series (``taylor``, ``weather``, ``co2``, ``sunspots``, ``elnino``, ``macrodata``,
  ``elec_equip``; `attnlab list datasets` shows them as sources of kind ``series``).
- :mod:`.windows`: the protocol (chronological 0.7/0.1/0.2 split, train-only z-scores, every window once).

``load_forecast_data("taylor", lookback=96, horizon=24)`` or
``load_forecast_data("load.csv", timestamp="time", target=["load"], exogenous=["temp"])``.
"""

from __future__ import annotations

from pathlib import Path

from .calendar import CALENDAR, add_calendar
from .embedded import EMBEDDED_SERIES
from .frame import FILL_POLICIES, SeriesDataError, SeriesFrame, clean_frame, read_csv_series, select
from .windows import ForecastData, WindowSplit, make_forecast_data, split_borders


def is_series(dataset: str) -> bool:
    """``dataset`` names an embedded series or a ``.csv`` file."""
    return dataset in EMBEDDED_SERIES or str(dataset).lower().endswith(".csv")


def load_series(dataset: str, timestamp: str | None = None, target: list[str] | None = None,
                exogenous: list[str] | None = None, fill: str = "error") -> SeriesFrame:
    """The cleaned frame of ``target + exogenous`` columns of an embedded series or a CSV file.

    ``target``/``exogenous`` ``None`` (or empty target) take an embedded series' defaults; a CSV file needs
    ``timestamp`` and ``target``.

    Raises:
        SeriesDataError: see :func:`~attnlab.data.series.frame.read_csv_series` and
            :func:`~attnlab.data.series.frame.select`; a CSV without ``timestamp``/``target``; ``timestamp`` given for
            an embedded series; an unknown name that is no CSV file (lists the embedded series).
        FileNotFoundError: a missing CSV file or an embedded series whose package is not installed.
    """
    if dataset in EMBEDDED_SERIES:
        if timestamp is not None:
            raise SeriesDataError(f"data.timestamp applies to CSV files; the embedded series {dataset!r} has its own "
                                  "timestamps: remove it")
        return select(EMBEDDED_SERIES[dataset](), target or None, exogenous)
    if not str(dataset).lower().endswith(".csv"):
        raise SeriesDataError(f"unknown series {dataset!r}: give a .csv file or one of {sorted(EMBEDDED_SERIES)}")
    if timestamp is None or not target:
        raise SeriesDataError(f"{dataset}: a CSV series needs data.timestamp (the time column) and data.target (the "
                              "columns to forecast), e.g. data: {dataset: load.csv, timestamp: time, target: [load]}")
    if not Path(dataset).is_file():
        raise FileNotFoundError(f"series file {dataset!r} not found")
    return read_csv_series(dataset, timestamp, target, exogenous or [], fill)


def load_forecast_data(dataset: str, timestamp: str | None = None, target: list[str] | None = None,
                       exogenous: list[str] | None = None, fill: str = "error", lookback: int = 96, horizon: int = 24,
                       val_fraction: float = 0.1, test_fraction: float = 0.2,
                       calendar: list[str] | None = None) -> ForecastData:
    """:func:`load_series` (plus the ``calendar`` features of :mod:`.calendar` as exogenous columns) under the
    protocol of :mod:`.windows` (same errors, plus splits too short and calendar features of plain-number
    timestamps)."""
    frame = add_calendar(load_series(dataset, timestamp, target, exogenous, fill), list(calendar or []))
    return make_forecast_data(frame, lookback, horizon, val_fraction, test_fraction)


__all__ = ["CALENDAR", "EMBEDDED_SERIES", "add_calendar", "FILL_POLICIES", "ForecastData", "SeriesDataError", "SeriesFrame", "WindowSplit",
           "clean_frame", "is_series", "load_forecast_data", "load_series", "make_forecast_data", "read_csv_series",
           "select", "split_borders"]
