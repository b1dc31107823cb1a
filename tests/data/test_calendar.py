"""Calendar features of dated series (``data.calendar``): the phases against hand-computed dates, the sin/cos
columns appended as exogenous inputs, the errors, and a forecast run and `attnlab forecast` that use them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.config import build_config
from attnlab.data.series import SeriesDataError, SeriesFrame, add_calendar
from attnlab.data.series.calendar import phases
from attnlab.train import train


def _frame(stamps, integer=False):
    ts = np.arange(len(stamps)) if integer else np.array(stamps, dtype="datetime64[s]")
    return SeriesFrame("t", ts, np.arange(len(stamps), dtype=float)[:, None], ("y",), ("y",))


def test_phases_of_known_dates():
    ts = np.array(["2024-01-01T06:00", "2024-01-03T18:00", "2024-07-01T00:00", "2023-12-31T12:00"],
                  dtype="datetime64[s]")  # a Monday, a Wednesday, a Monday, a Sunday
    np.testing.assert_allclose(phases(ts, "hour"), [0.25, 0.75, 0.0, 0.5])
    np.testing.assert_allclose(phases(ts, "weekday"), [0.25 / 7, 2.75 / 7, 0.0, 6.5 / 7])
    np.testing.assert_allclose(phases(ts, "month"), [0.0, 0.0, 6 / 12, 11 / 12])
    np.testing.assert_allclose(phases(ts, "dayofyear"), [0, 2, 182, 364] / np.float64(365.25))


def test_calendar_columns_are_appended_as_exogenous():
    f = add_calendar(_frame(["2024-01-01T00:00", "2024-01-01T06:00", "2024-01-01T12:00"]), ["hour", "weekday"])
    assert f.columns == ("y", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos")
    assert f.target == ("y",) and f.exogenous == ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")
    np.testing.assert_allclose(f.values[:, 1], [0.0, 1.0, 0.0], atol=1e-12)  # sin of 0, pi/2, pi
    np.testing.assert_allclose(f.values[:, 2], [1.0, 0.0, -1.0], atol=1e-12)
    assert add_calendar(f, []) is f


@pytest.mark.parametrize("features, integer, match", [
    (["hours"], False, r"unknown \['hours'\]"),
    (["hour", "hour"], False, "at most once"),
    (["hour"], True, "needs date/time stamps"),
])
def test_bad_calendar_settings_are_one_line(features, integer, match):
    with pytest.raises(SeriesDataError, match=match):
        add_calendar(_frame(["2024-01-01T00:00", "2024-01-01T01:00"], integer), features)


def test_a_forecast_run_reads_the_hour_and_forecasts_from_a_csv(tmp_path):
    """Load that depends on the hour only: the run sees it through calendar columns; `attnlab forecast` recomputes
    them from the input file's timestamps."""
    t = np.arange(600)
    ts = np.datetime64("2024-03-04T00:00") + t * np.timedelta64(1, "h")
    load = 20 + 5 * np.sin(2 * np.pi * t / 24) + 2 * (t % 24 == 18)
    path = tmp_path / "load.csv"
    with path.open("w") as fh:
        fh.write("time,load\n")
        fh.writelines(f"{str(a).replace('T', ' ')},{b:.6f}\n" for a, b in zip(ts, load))
    run = tmp_path / "run"
    cfg = build_config({"model": {"name": "patchtst-tiny"},
                        "data": {"dataset": str(path), "timestamp": "time", "target": ["load"], "calendar": ["hour"],
                                 "lookback": 48, "horizon": 12, "batch_size": 32},
                        "objective": {"name": "forecast"},
                        "train": {"steps": 60, "lr": 1e-2, "warmup_steps": 5, "eval_every": 60, "checkpoint_every": 60,
                                  "precision": "fp32", "run_dir": str(run)}})
    train(cfg, progress=False)
    assert "num_exogenous: 2" in (run / "config.yaml").read_text()
    report = json.loads((run / "test.json").read_text())
    assert report["baselines"]["binned"]["mse"] < 1e-6  # hour slots fit this series exactly
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), "--input", str(path), "--output", str(out), "--holdout"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and set(rows[0]) == {"timestamp", "load", "load_truth"}
