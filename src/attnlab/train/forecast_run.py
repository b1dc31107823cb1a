"""``attnlab forecast RUN --input FILE.csv --output FILE.csv [--plot FILE.png]``: forecast with a trained run.

The input CSV holds the recent history with the run's columns (targets and exogenous, plus a time column); its
last ``lookback`` rows are normalised with the run's training statistics (re-derived from the run's data, which is
deterministic), the model forecasts ``horizon`` steps, and the output CSV gets one row per forecast step in
original units. With ``holdout`` the input's last ``horizon`` rows are kept back as the truth, the forecast starts
before them and the output (and plot) include the truth and the errors.

A model that reads exogenous values over the horizon (TimeXer with ``model.future_exog``) gets them from the held-back
rows with ``holdout``, else from ``future``: a CSV of the next ``horizon`` steps with the time column and the
exogenous columns (the calendar columns of ``data.calendar`` are computed from the steps' times; with only calendar
columns no file is needed).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..core.io import write_text
from ..data.series import SeriesFrame, add_calendar, read_csv_series
from ..data.series.calendar import calendar_columns
from ..objectives.forecast import forecast_of, uses_future_exog
from .build import build_for_config
from .checkpoint import latest_checkpoint, load_weights
from .distributed import resolve_device
from .task_feeds import feed_for_config


def forecast_file(run_dir: str | Path, input_csv: str | Path, output_csv: str | Path, plot: str | Path | None = None,
                  timestamp: str | None = None, holdout: bool = False, device: str = "auto",
                  future: str | Path | None = None) -> dict:
    """Forecast the run's horizon after the input's history; returns ``{"rows", "horizon", ["mae"]}``.

    Raises:
        FileNotFoundError: no run / checkpoint / input file.
        ValueError: not a forecast run; the input lacks a column (did-you-mean), has fewer rows than the look-back
            (plus the horizon with ``holdout``), or fails the series checks (one line each); a model that reads the
            horizon's exogenous values and no ``future`` file (or one with other steps), or a ``future`` file for a
            model that does not.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); train one with `attnlab train`")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.objective.name != "forecast":
        raise ValueError(f"{run_dir} is a {cfg.objective.name!r} run; `attnlab forecast` needs a forecast run")
    feed = feed_for_config(cfg)
    data = feed.data
    dev = resolve_device(device)
    _, model, _ = build_for_config(cfg, dev, feed)
    load_weights(model, latest_checkpoint(run_dir))
    model.eval()
    generated = set(calendar_columns(cfg.data.calendar))  # made from the input's timestamps below
    frame = read_csv_series(input_csv, timestamp or cfg.data.timestamp or "timestamp", list(data.frame.target),
                            [c for c in data.frame.exogenous if c not in generated], cfg.data.fill)
    frame = add_calendar(frame, list(cfg.data.calendar))
    L, T = data.lookback, data.horizon
    need = L + (T if holdout else 0)
    if len(frame.values) < need:
        raise ValueError(f"{input_csv}: {len(frame.values)} rows, but the run looks back {L} steps"
                         + (f" and --holdout keeps {T} back" if holdout else "") + f": give at least {need} rows")
    end = len(frame.values) - (T if holdout else 0)
    history = frame.values[end - L:end]
    x = torch.from_numpy(data.normalise(history).astype(np.float32))[None].to(dev)
    ts = frame.timestamps
    times = ts[end - 1] + (ts[-1] - ts[-2]) * np.arange(1, T + 1)
    batch = {"inputs": x}
    if uses_future_exog(model):
        exo = frame.values[end:end + T, data.num_targets:] if holdout else _future_exog(
            future, times, cfg, data, timestamp or cfg.data.timestamp or "timestamp")
        c = data.num_targets
        batch["future_exog"] = torch.from_numpy(((exo - data.mean[c:]) / data.std[c:]).astype(np.float32))[None].to(dev)
    elif future is not None:
        raise ValueError(f"--future: {run_dir}'s model reads the look-back only (model.future_exog is off); drop it")
    with torch.no_grad():
        y = data.denormalise_targets(forecast_of(model, batch)[0].double().cpu().numpy())  # (T, C_t) original units
    truth = frame.values[end:end + T, : data.num_targets] if holdout else None
    write_text(output_csv, _forecast_csv(times, frame.target, y, truth))
    out = {"rows": T, "horizon": T}
    if truth is not None:
        out["mae"] = float(np.abs(y - truth).mean())
    if plot is not None:
        _plot(ts[end - L:end], history[:, : data.num_targets], times, y, truth, frame.target, plot)
    return out


def _future_exog(path, times: np.ndarray, cfg, data, timestamp: str) -> np.ndarray:
    """``(T, C_x)`` exogenous values (original units) at the forecast steps ``times``: the ``path`` CSV's columns
    plus the calendar columns computed from ``times``."""
    generated = set(calendar_columns(cfg.data.calendar))
    given = [c for c in data.frame.exogenous if c not in generated]
    T = len(times)
    if given and path is None:
        raise ValueError(f"this run's model reads exogenous values over the horizon (model.future_exog): give --future "
                         f"FILE.csv with the next {T} steps of {given} and the time column {timestamp!r}, or "
                         "--holdout")
    values = np.zeros((T, 0))
    if given:
        fut = read_csv_series(path, timestamp, [], given, cfg.data.fill)
        if len(fut.timestamps) < T or not np.array_equal(fut.timestamps[:T], times):
            first = str(times[0]).replace("T", " ")
            raise ValueError(f"--future {path}: needs the {T} steps after the input's last row ({first}, then every "
                             f"{times[1] - times[0] if T > 1 else 'step'}), got {len(fut.timestamps)} rows from "
                             f"{str(fut.timestamps[0]).replace('T', ' ')}")
        values = fut.values[:T]
    frame = SeriesFrame(str(path or "the forecast steps"), times, values, tuple(given), exogenous=tuple(given))
    return add_calendar(frame, list(cfg.data.calendar)).values


def _forecast_csv(times, names, forecast: np.ndarray, truth: np.ndarray | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timestamp", *names, *([f"{n}_truth" for n in names] if truth is not None else [])])
    for i, t in enumerate(times):
        w.writerow([str(t).replace("T", " "), *(f"{v:.6g}" for v in forecast[i]),
                    *((f"{v:.6g}" for v in truth[i]) if truth is not None else ())])
    return buf.getvalue()


def _plot(hist_t, history, future, forecast, truth, names, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.io import write_with

    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.6 * len(names)), squeeze=False)
    for c, ax in enumerate(axes[:, 0]):
        ax.plot(hist_t, history[:, c], color="0.3", label="history")
        if truth is not None:
            ax.plot(future, truth[:, c], color="tab:green", label="truth")
        ax.plot(future, forecast[:, c], color="tab:orange", label="forecast")
        ax.set_title(names[c])
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    try:
        write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
