"""``attnlab forecast RUN --input FILE.csv --output FILE.csv [--plot FILE.png]``: forecast with a trained run.

The input CSV holds the recent history with the run's columns (targets and exogenous, plus a time column); its
last ``lookback`` rows are normalised with the run's training statistics (re-derived from the run's data, which is
deterministic), the model forecasts ``horizon`` steps, and the output CSV gets one row per forecast step in
original units. With ``holdout`` the input's last ``horizon`` rows are kept back as the truth, the forecast starts
before them and the output (and plot) include the truth and the errors.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..core.io import write_text
from ..data.series import add_calendar, read_csv_series
from ..data.series.calendar import calendar_columns
from .build import build_for_config
from .checkpoint import latest_checkpoint, load_weights
from .distributed import resolve_device
from .task_feeds import feed_for_config


def forecast_file(run_dir: str | Path, input_csv: str | Path, output_csv: str | Path, plot: str | Path | None = None,
                  timestamp: str | None = None, holdout: bool = False, device: str = "auto") -> dict:
    """Forecast the run's horizon after the input's history; returns ``{"rows", "horizon", ["mae"]}``.

    Raises:
        FileNotFoundError: no run / checkpoint / input file.
        ValueError: not a forecast run; the input lacks a column (did-you-mean), has fewer rows than the look-back
            (plus the horizon with ``holdout``), or fails the series checks (one line each).
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
    with torch.no_grad():
        y = data.denormalise_targets(model(x)[0].double().cpu().numpy())  # (T, C_t) original units
    ts = frame.timestamps
    step = ts[-1] - ts[-2]
    future = ts[end - 1] + step * np.arange(1, T + 1)
    truth = frame.values[end:end + T, : data.num_targets] if holdout else None
    write_text(output_csv, _forecast_csv(future, frame.target, y, truth))
    out = {"rows": T, "horizon": T}
    if truth is not None:
        out["mae"] = float(np.abs(y - truth).mean())
    if plot is not None:
        _plot(ts[end - L:end], history[:, : data.num_targets], future, y, truth, frame.target, plot)
    return out


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
