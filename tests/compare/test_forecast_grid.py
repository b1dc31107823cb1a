"""Forecasting tasks in `attnlab compare`: cells train with objective forecast, are scored by the exact test MSE,
and the report lists the closed-form baselines as rows; a model without attention trains once."""

from __future__ import annotations

import json

import pytest

from attnlab.compare.config import compare_config_from_dict
from attnlab.compare.grid import read_skipped, run_grid
from attnlab.compare.report import write_report
from attnlab.data.series import load_forecast_data
from attnlab.models.series.baselines import SeasonalNaive
from attnlab.objectives.forecast import evaluate_forecast


def test_forecast_grid_with_baseline_rows(tmp_path):
    out = tmp_path / "grid"
    cfg = compare_config_from_dict({
        "compare": {"out_dir": str(out), "seeds": [0], "workers": 1, "threads": 1,
                    "variants": [{"name": "softmax"}, {"name": "sliding_window", "options": {"window": 2}}],
                    "tasks": [{"name": "elnino", "label": "elnino-patchtst", "options": {"lookback": 24, "horizon": 6}},
                              {"name": "elnino", "label": "elnino-dlinear", "options": {"lookback": 24, "horizon": 6},
                               "overrides": {"model": {"name": "dlinear"}}}]},
        "base": {"model": {"name": "patchtst-tiny"}, "data": {"batch_size": 16},
                 "train": {"steps": 5, "eval_every": 5, "checkpoint_every": 100, "precision": "fp32",
                           "warmup_steps": 1}}})
    records = run_grid(cfg, progress=False, report=False)
    assert sorted(r["key"] for r in records) == ["elnino-dlinear/softmax/seed0", "elnino-patchtst/sliding_window/seed0",
                                                 "elnino-patchtst/softmax/seed0"]
    data = load_forecast_data("elnino", lookback=24, horizon=6)
    naive = evaluate_forecast(lambda b: SeasonalNaive(12).fit(data).predict(b, 1, 6), data.test, 64)
    for r in records:
        assert r["metric"] == "mse" and r["test_windows"] == len(data.test) and r["quality"] > 0
        assert r["forecast_baselines"]["seasonal_naive_12"]["mse"] == pytest.approx(naive["mse"], rel=1e-9)
    [skip] = read_skipped(out)
    assert skip["key"] == "elnino-dlinear/sliding_window/seed0" and "no attention" in skip["reason"]
    md = write_report(out)
    table = md.split("### elnino-patchtst")[1].split("###")[0]
    assert "| baseline: seasonal_naive_12 |" in table and "| baseline: ridge |" in table and "| softmax |" in table
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["task_kind"] == "forecast"
