"""Calendar features: where in the day, week and year each step falls, as exogenous columns (``data.calendar``).

Load forecasting leans on them (the hourly-binned regression of the baselines uses the hour as slots; a Transformer
sees it only through such columns). Each feature is a pair of columns ``<name>_sin``, ``<name>_cos`` of the phase
``2 pi u / P`` (continuous across the wrap: 23:00 sits next to 00:00):

=========  ===========================  ===
feature    ``u``                        P
=========  ===========================  ===
hour       hours since midnight (+ min)  24
weekday    days since Monday (+ hours)   7
month      months since January          12
dayofyear  days since 1 January          365.25
=========  ===========================  ===

They are known in advance, so they are the exogenous inputs a model may also read over the horizon. They are
appended after the frame's exogenous columns and scaled with them (training rows only).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .frame import SeriesDataError, SeriesFrame

CALENDAR = ("hour", "weekday", "month", "dayofyear")


def phases(timestamps: np.ndarray, feature: str) -> np.ndarray:
    """``(N,)`` phase in ``[0, 1)`` of ``feature`` at each ``datetime64`` timestamp."""
    ts = timestamps.astype("datetime64[s]")
    day = ts.astype("datetime64[D]")
    seconds = (ts - day).astype(np.int64)  # since midnight
    if feature == "hour":
        return seconds / 86400.0
    if feature == "weekday":  # 1970-01-01 was a Thursday: +3 makes Monday 0
        return ((day.astype(np.int64) + 3) % 7 + seconds / 86400.0) / 7.0
    if feature == "month":
        return (ts.astype("datetime64[M]").astype(np.int64) % 12) / 12.0
    year = ts.astype("datetime64[Y]")
    return (day - year.astype("datetime64[D]")).astype(np.int64) / 365.25


def calendar_columns(features: list[str]) -> list[str]:
    """The column names :func:`add_calendar` appends for ``features``: ``<feature>_sin``, ``<feature>_cos`` each."""
    return [f"{f}_{part}" for f in features for part in ("sin", "cos")]


def add_calendar(frame: SeriesFrame, features: list[str]) -> SeriesFrame:
    """``frame`` with ``<feature>_sin`` / ``<feature>_cos`` exogenous columns appended for each of ``features``.

    Raises:
        SeriesDataError: an unknown feature (lists them), a feature named twice, or timestamps that are not dates.
    """
    if not features:
        return frame
    unknown = [f for f in features if f not in CALENDAR]
    if unknown or len(set(features)) < len(features):
        raise SeriesDataError(f"data.calendar {list(features)}: each of {list(CALENDAR)} at most once"
                              + (f"; unknown {unknown}" if unknown else ""))
    if not frame.is_datetime:
        raise SeriesDataError(f"{frame.name}: data.calendar needs date/time stamps, but its timestamps are plain "
                              "numbers (years or indices); remove data.calendar")
    names, columns = calendar_columns(features), []
    for f in features:
        angle = 2 * np.pi * phases(frame.timestamps, f)
        columns += [np.sin(angle), np.cos(angle)]
    clash = sorted(set(names) & set(frame.columns))
    if clash:
        raise SeriesDataError(f"{frame.name}: columns {clash} already exist; rename them or remove data.calendar")
    return replace(frame, values=np.column_stack([frame.values, *columns]), columns=frame.columns + tuple(names),
                   exogenous=frame.exogenous + tuple(names))
