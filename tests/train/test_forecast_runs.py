"""`attnlab train` with objective forecast: trains, writes the exact test table next to the baselines, `attnlab eval`
gives the same numbers, `attnlab forecast` writes a forecast CSV and plot; bad settings are one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.config import build_config
from attnlab.train import evaluate_run, train

TRAIN = {"steps": 150, "lr": 1e-2, "warmup_steps": 10, "eval_every": 75, "checkpoint_every": 150,
         "precision": "fp32", "weight_decay": 0.0}


@pytest.fixture
def series_csv(tmp_path):
    """Hourly load driven by temperature plus a daily cycle, 1,200 rows."""
    t = np.arange(1200)
    temp = 10 + 5 * np.sin(2 * np.pi * t / 24 - 1) + np.sin(2 * np.pi * t / 200)
    load = 50 + 3 * temp + 4 * np.sin(2 * np.pi * t / 24)
    ts = np.datetime64("2024-01-01T00:00") + t * np.timedelta64(1, "h")
    path = tmp_path / "load.csv"
    with path.open("w") as f:
        f.write("time,load,temp\n")
        for a, b, c in zip(ts, load, temp):
            f.write(f"{str(a).replace('T', ' ')},{b:.6f},{c:.6f}\n")
    return path


def config(csv_path, run_dir, **model):
    return build_config({
        "model": {"name": "patchtst-tiny", **model},
        "data": {"dataset": str(csv_path), "timestamp": "time", "target": ["load"], "exogenous": ["temp"],
                 "lookback": 48, "horizon": 12, "batch_size": 32},
        "objective": {"name": "forecast"}, "train": {**TRAIN, "run_dir": str(run_dir)}})


def test_train_eval_forecast(series_csv, tmp_path, capsys):
    run = tmp_path / "run"
    result = train(config(series_csv, run), progress=False)
    assert result.step == 150
    report = json.loads((run / "test.json").read_text())
    n = 1200
    assert report["windows"] == int(0.2 * n) - 12 + 1  # every test window, none dropped
    model = report["model"]
    assert model["mse"] < report["baselines"]["repeat"]["mse"] / 5  # learned the daily cycle
    assert set(report["baselines"]) == {"repeat", "seasonal_naive_24", "ridge", "binned"}
    assert report["baselines"]["binned"]["mse"] < 1e-3  # load is linear in temp per hour: the binned fit is exact
    resolved = (run / "config.yaml").read_text()
    assert "lookback: 48" in resolved and "num_variates: 1" in resolved and "num_exogenous: 1" in resolved
    r = evaluate_run(run, progress=False, save=False)
    for k in ("mse", "mae", "mae_original"):
        assert r["model"][k] == pytest.approx(model[k], rel=1e-6)
    assert r["objective"] == "forecast" and r["split"] == "test"
    out, png = tmp_path / "f.csv", tmp_path / "f.png"
    assert main(["forecast", str(run), "--input", str(series_csv), "--output", str(out), "--plot", str(png),
                 "--holdout"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and rows[0]["timestamp"] == "2024-02-19 12:00:00"  # the held-out last 12 hours
    errors = [abs(float(r["load"]) - float(r["load_truth"])) for r in rows]
    assert np.mean(errors) < 3.0 and png.stat().st_size > 1000
    assert main(["eval", str(run), "--no-progress"]) == 0
    assert "seasonal_naive_24" in capsys.readouterr().out


@pytest.mark.parametrize("change, match", [
    ({"model": {"name": "gpt-tiny"}}, r"trains a series forecaster: set model.name to a series preset"),
    ({"model": {"lookback": 96}}, r"model.lookback=96 but data.lookback gives 48"),
    ({"data": {"target": ["lod"]}}, r"target column 'lod' not in the header; did you mean \['load'\]"),
    ({"objective": {"name": "lm"}}, r"data.timestamp, data.target, data.exogenous, data.lookback, data.horizon apply "
                                    r"to objective forecast"),
    ({"data": {"dataset": "kjv"}}, r"objective forecast trains on a series"),
])
def test_bad_forecast_settings_are_one_line(series_csv, tmp_path, change, match):
    cfg = config(series_csv, tmp_path / "bad").model_dump()
    for section, values in change.items():
        cfg[section].update(values)
    with pytest.raises(ValueError, match=match) as e:
        train(build_config(cfg), progress=False)
    assert "\n" not in str(e.value)


def test_resumed_forecast_run_equals_an_uninterrupted_one(series_csv, tmp_path):
    def cfg(run, steps):
        c = config(series_csv, run).model_dump()
        c["train"].update(steps=steps, eval_every=10, checkpoint_every=10)
        c["model"]["dropout"] = 0.1  # dropout draws from the RNG the checkpoint restores
        return build_config(c)

    whole = train(cfg(tmp_path / "a", 20), progress=False)
    train(cfg(tmp_path / "b", 10), progress=False)
    resumed = train(cfg(tmp_path / "b", 20), resume=True, progress=False)
    assert resumed.losses == whole.losses[10:]
    a = json.loads((tmp_path / "a" / "test.json").read_text())["model"]
    b = json.loads((tmp_path / "b" / "test.json").read_text())["model"]
    assert a == b


def test_irregular_classifier_trains_through_attnlab_train(tmp_path):
    def cfg(**data):
        return build_config({"model": {"name": "irregular-tiny"},
                             "data": {"dataset": "irregular", "options": {"num_train": 200, "num_test": 50}, **data},
                             "objective": {"name": "irregular"},
                             "train": {"steps": 10, "eval_every": 10, "checkpoint_every": 10, "precision": "fp32",
                                       "warmup_steps": 2, "run_dir": str(tmp_path / "irr")}})

    train(cfg(), progress=False)
    report = json.loads((tmp_path / "irr" / "test.json").read_text())
    assert report["examples"] == 50 and 0.0 <= report["accuracy"] <= 1.0 and report["loss"] > 0
    r = evaluate_run(tmp_path / "irr", progress=False, save=False)
    assert r["accuracy"] == pytest.approx(report["accuracy"]) and r["objective"] == "irregular"
    with pytest.raises(ValueError, match=r"unknown data.options \['num_trian'\]"):
        train(cfg(options={"num_trian": 5}), progress=False)
