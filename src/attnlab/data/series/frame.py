"""A time series as a table: sorted timestamps, numeric columns, and the checks every source goes through.

:class:`SeriesFrame` is what every series loader returns (embedded datasets and user CSV files alike), and
:func:`clean_frame` is the one place where timestamps are checked (strictly increasing, no duplicates, a regular
step) and missing values are handled by the stated fill policy:

- ``fill="error"`` (the default for user files): a gap in the timestamp grid or an empty/NaN cell is a one-line
  error naming the first one and the fix.
- ``fill="linear"``: missing steps are inserted and every missing value is interpolated linearly in time between
  its neighbours in the same column (the first/last values are carried outward).
- ``fill="previous"``: the last observed value is carried forward (the first observed one backward).

Timestamps are ``datetime64[s]`` (calendar features available) or plain integers (years, indices).
"""

from __future__ import annotations

import csv
import difflib
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

FILL_POLICIES = ("error", "linear", "previous")


class SeriesDataError(ValueError):
    """A series file or selection that cannot be used as given (one line: what is wrong and how to fix it)."""


@dataclass(frozen=True)
class SeriesFrame:
    """Rows of a regularly sampled multivariate series.

    Attributes:
        name: dataset name or file path, for messages.
        timestamps: ``(N,)`` ``datetime64[s]`` or ``int64``, strictly increasing after :func:`clean_frame`.
        values: ``(N, C)`` float64, one column per name of ``columns`` (NaN = missing before cleaning).
        columns: column names.
        target: default target columns; exogenous: default exogenous columns (both names of ``columns``).
        period: the main seasonal period in steps (seasonal naive, the binned regression's slots), if known.
        notes: how the source was read (reported, never silently applied).
    """

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    columns: tuple[str, ...]
    target: tuple[str, ...] = ()
    exogenous: tuple[str, ...] = ()
    period: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_datetime(self) -> bool:
        return np.issubdtype(self.timestamps.dtype, np.datetime64)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def check_columns(frame: SeriesFrame, names: list[str] | tuple[str, ...], role: str) -> None:
    """Raise :class:`SeriesDataError` for the first of ``names`` (``role``: "target"/"exogenous") not in ``frame``."""
    for n in names:
        if n not in frame.columns:
            close = difflib.get_close_matches(str(n), frame.columns, n=2)
            raise SeriesDataError(f"{frame.name}: {role} column {n!r} not found" + (f"; did you mean {close}?" if close
                                  else "") + f" Columns: {list(frame.columns)}")


def select(frame: SeriesFrame, target: list[str] | None, exogenous: list[str] | None) -> SeriesFrame:
    """``frame`` reduced to ``target + exogenous`` columns, targets first (``None``: the frame's defaults).

    Raises:
        SeriesDataError: an unknown column (did-you-mean), no target, or a column named twice.
    """
    target = list(frame.target if target is None else target)
    exogenous = list(frame.exogenous if exogenous is None else exogenous)
    if not target:
        raise SeriesDataError(f"{frame.name}: no target column; set data.target to one or more of {list(frame.columns)}")
    check_columns(frame, target, "target")
    check_columns(frame, exogenous, "exogenous")
    both = sorted(set(target) & set(exogenous))
    if both or len(set(target)) < len(target) or len(set(exogenous)) < len(exogenous):
        raise SeriesDataError(f"{frame.name}: a column is named twice in data.target/data.exogenous ({both or 'repeat'});"
                              " name each column once")
    idx = [frame.columns.index(n) for n in target + exogenous]
    return replace(frame, values=frame.values[:, idx], columns=tuple(target + exogenous), target=tuple(target),
                   exogenous=tuple(exogenous))


def parse_timestamp(text: str) -> np.datetime64 | int:
    """``"2020-01-01 13:00"`` (ISO 8601) -> ``datetime64[s]``; ``"1959"`` -> ``1959``.

    Raises:
        ValueError: neither an integer nor an ISO date/time.
    """
    s = text.strip()
    if s.lstrip("-").isdigit() and len(s) != 8:  # YYYYMMDD is a date, other integers are steps (years, indices)
        return int(s)
    if len(s) == 8 and s.isdigit():
        s = f"{s[:4]}-{s[4:6]}-{s[6:]}"
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is not None:
        dt = dt.replace(tzinfo=None) - dt.utcoffset()  # UTC: one clock, no DST repeats
    return np.datetime64(dt.replace(microsecond=0), "s")


def read_csv_series(path: str | Path, timestamp: str, target: list[str], exogenous: list[str] | None = None,
                    fill: str = "error") -> SeriesFrame:
    """A user CSV file (header row, one row per time step) as a cleaned :class:`SeriesFrame` of ``target +
    exogenous`` columns (targets first).

    Raises:
        FileNotFoundError: no such file.
        SeriesDataError: no header, a missing column (did-you-mean), a non-numeric cell (names row, column, value),
            an unparsable, unsorted or duplicated timestamp, an irregular step, or a gap/missing value with
            ``fill="error"`` (see :func:`clean_frame`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"series file {str(path)!r} not found; give data.dataset as a CSV path or an embedded "
                                "series name (attnlab list datasets)")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SeriesDataError(f"{path}: empty file; a series CSV needs a header row and one row per time step")
    header = [h.strip() for h in rows[0]]
    wanted = [timestamp, *target, *(exogenous or [])]
    for role, names in (("timestamp", [timestamp]), ("target", target), ("exogenous", exogenous or [])):
        for n in names:
            if n not in header:
                close = difflib.get_close_matches(str(n), header, n=2)
                raise SeriesDataError(f"{path}: {role} column {n!r} not in the header" + (f"; did you mean {close}?"
                                      if close else "") + f" Columns: {header}")
    idx = [header.index(n) for n in wanted]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if len(body) < 2:
        raise SeriesDataError(f"{path}: {len(body)} data row(s); a series needs at least 2")
    stamps, values = [], np.empty((len(body), len(wanted) - 1))
    for i, r in enumerate(body):
        line = i + 2  # 1-based, after the header
        if len(r) < len(header):
            raise SeriesDataError(f"{path}: line {line} has {len(r)} fields but the header has {len(header)}")
        try:
            stamps.append(parse_timestamp(r[idx[0]]))
        except ValueError:
            raise SeriesDataError(f"{path}: line {line}: timestamp {r[idx[0]]!r} in column {timestamp!r} is neither an "
                                  "ISO date/time (2020-01-31 13:00) nor an integer step") from None
        for j, k in enumerate(idx[1:]):
            cell = r[k].strip()
            try:
                values[i, j] = float(cell) if cell and cell.lower() not in ("na", "nan", "null") else math.nan
            except ValueError:
                raise SeriesDataError(f"{path}: line {line}: column {header[k]!r} holds {cell!r}, not a number; "
                                      "series columns must be numeric (leave a cell empty for a missing value)") from None
    kinds = {type(s) for s in stamps}
    if len(kinds) > 1:
        raise SeriesDataError(f"{path}: column {timestamp!r} mixes dates and integers; use one format")
    ts = np.array(stamps, dtype="datetime64[s]" if kinds == {np.datetime64} else np.int64)
    if kinds == {np.datetime64} and (ts.astype("datetime64[M]").astype("datetime64[s]") == ts).all():
        ts = ts.astype("datetime64[M]")  # monthly/quarterly data: a regular step in months, not in seconds
    frame = SeriesFrame(str(path), ts, values, tuple(wanted[1:]), tuple(target), tuple(exogenous or ()))
    frame = clean_frame(frame, fill, f"the timestamps of column {timestamp!r}")
    return replace(frame, period=infer_period(frame.timestamps))


def infer_period(ts: np.ndarray) -> int | None:
    """The natural seasonal period of a regular time grid: steps per day for sub-daily steps that divide a day, 7 for
    daily, 52 for weekly, 12 for monthly, 4 for quarterly data; ``None`` otherwise (integer steps included)."""
    if len(ts) < 2 or not np.issubdtype(ts.dtype, np.datetime64):
        return None
    unit = np.datetime_data(ts.dtype)[0]
    step = int((ts[1] - ts[0]).astype(np.int64))
    if unit == "M":
        return {1: 12, 3: 4}.get(step)
    secs = int(np.timedelta64(step, unit).astype("timedelta64[s]").astype(np.int64))
    if secs < 86400 and 86400 % secs == 0:
        return 86400 // secs
    return {86400: 7, 7 * 86400: 52}.get(secs)


def clean_frame(frame: SeriesFrame, fill: str = "error", where: str = "the timestamps") -> SeriesFrame:
    """Check that timestamps increase by one regular step and apply the fill policy (module docstring).

    The step is the most common difference between consecutive timestamps; a difference that is a whole multiple of
    it is a gap (missing steps), any other is an irregular step.

    Raises:
        SeriesDataError: unsorted or duplicated timestamps (names the first pair), an irregular step, a gap or a
            missing value under ``fill="error"``, an unknown policy, or a column with no value at all.
    """
    if fill not in FILL_POLICIES:
        raise SeriesDataError(f"unknown fill policy {fill!r}; valid: {list(FILL_POLICIES)}")
    ts, name = frame.timestamps, frame.name
    d = np.diff(ts).astype(np.int64)
    for bad, what in ((d == 0, "duplicated"), (d < 0, "not increasing")):
        if bad.any():
            i = int(np.argmax(bad))
            raise SeriesDataError(f"{name}: {where} are {what}: row {i + 1} ({ts[i]}) is followed by {ts[i + 1]}; "
                                  "sort the rows by time and keep one row per time step")
    values, ts_new = frame.values, ts
    if len(d):
        steps, counts = np.unique(d, return_counts=True)
        step = int(steps[np.argmax(counts)])
        if (d % step).any():
            i = int(np.argmax(d % step != 0))
            raise SeriesDataError(f"{name}: irregular time step at row {i + 1}: {ts[i]} -> {ts[i + 1]} is not a multiple "
                                  f"of the usual step ({_step_text(step, frame.is_datetime, ts)}); resample the file to a "
                                  "regular grid")
        if (d > step).any():
            i = int(np.argmax(d > step))
            if fill == "error":
                raise SeriesDataError(f"{name}: gap after row {i + 1}: {ts[i]} is followed by {ts[i + 1]} (step "
                                      f"{_step_text(step, frame.is_datetime, ts)}); set data.fill=linear (interpolate) or "
                                      "data.fill=previous (carry forward), or fill the rows yourself")
            pos = (d // step).cumsum()
            grid = np.full((int(pos[-1]) + 1, values.shape[1]), np.nan)
            grid[np.concatenate([[0], pos])] = values
            values, ts_new = grid, ts[0] + np.arange(int(pos[-1]) + 1) * _delta(ts, step)
    missing = np.isnan(values)
    if missing.all(axis=0).any():
        col = frame.columns[int(np.argmax(missing.all(axis=0)))]
        raise SeriesDataError(f"{name}: column {col!r} has no value at all; drop it from data.target/data.exogenous")
    if missing.any():
        if fill == "error":
            r, c = map(int, np.argwhere(missing)[0])
            raise SeriesDataError(f"{name}: column {frame.columns[c]!r} has a missing value at {ts_new[r]} (and "
                                  f"{int(missing.sum()) - 1} more); set data.fill=linear or data.fill=previous")
        values = _fill(values, fill)
    return replace(frame, timestamps=ts_new, values=values)


def _fill(values: np.ndarray, fill: str) -> np.ndarray:
    out = values.copy()
    t = np.arange(len(out))
    for c in range(out.shape[1]):
        ok = ~np.isnan(out[:, c])
        if fill == "linear":
            out[:, c] = np.interp(t, t[ok], out[ok, c])  # constant beyond the first/last observation
        else:
            last = np.where(ok, t, 0)
            np.maximum.accumulate(last, out=last)
            col = out[last, c]
            col[: int(np.argmax(ok))] = out[int(np.argmax(ok)), c]  # leading gap: the first observed value
            out[:, c] = col
    return out


def _delta(ts: np.ndarray, step: int):
    """``step`` units of the timestamps' own unit (seconds, months, ...; a plain int for integer steps)."""
    return np.timedelta64(step, np.datetime_data(ts.dtype)[0]) if np.issubdtype(ts.dtype, np.datetime64) else step


def _step_text(step: int, is_datetime: bool, ts: np.ndarray | None = None) -> str:
    if not is_datetime:
        return str(step)
    unit = np.datetime_data(ts.dtype)[0] if ts is not None else "s"
    if unit == "s" and step % 60 == 0:
        return str(np.timedelta64(step, "s").astype("timedelta64[m]"))
    return str(np.timedelta64(step, unit))
