"""TimeXer with exogenous values known over the horizon (`model.future_exog`): trained through `attnlab train`, it
uses a schedule that the look-back alone cannot foresee; `attnlab forecast` takes the horizon's values from
`--future` (or the held-back rows) and says in one line what is missing."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.config import build_config
from attnlab.train import train

TRAIN = {"steps": 500, "lr": 1e-2, "warmup_steps": 20, "eval_every": 500, "checkpoint_every": 500,
         "precision": "fp32", "weight_decay": 0.0}


def _write(path, ts, columns: dict) -> None:
    with path.open("w") as f:
        f.write(",".join(["time", *columns]) + "\n")
        for i, t in enumerate(ts):
            f.write(",".join([str(t).replace("T", " "), *(f"{v[i]:.6f}" for v in columns.values())]) + "\n")


@pytest.fixture(scope="module")
def schedule(tmp_path_factory):
    """Hourly load that follows an on/off schedule (blocks of 3 to 20 hours, drawn at random: unforeseeable from the
    past), 1,500 rows; the schedule is the exogenous column."""
    rng = np.random.default_rng(0)
    on, blocks = [], 0
    while len(on) < 1500:
        on += [blocks % 2] * int(rng.integers(3, 21))
        blocks += 1
    on = np.array(on[:1500], dtype=float)
    t = np.arange(1500)
    load = 40 + 25 * on + 3 * np.sin(2 * np.pi * t / 24)
    ts = np.datetime64("2024-01-01T00:00") + t * np.timedelta64(1, "h")
    path = tmp_path_factory.mktemp("future") / "load.csv"
    _write(path, ts, {"load": load, "on": on})
    return path, ts, load, on


def _run(path, run_dir, future: bool):
    cfg = build_config({
        "model": {"name": "timexer-tiny", "dim": 32, "mlp_dim": 64, "future_exog": future},
        "data": {"dataset": str(path), "timestamp": "time", "target": ["load"], "exogenous": ["on"],
                 "lookback": 48, "horizon": 12, "batch_size": 32},
        "objective": {"name": "forecast"}, "train": {**TRAIN, "run_dir": str(run_dir)}})
    train(cfg, progress=False)
    return json.loads((run_dir / "test.json").read_text())["model"]


@pytest.fixture(scope="module")
def runs(schedule, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {f: (root / str(f), _run(schedule[0], root / str(f), f)) for f in (False, True)}


def test_the_known_schedule_is_used(runs):
    with_future, without = runs[True][1], runs[False][1]
    # The look-back cannot tell when the schedule switches inside the horizon; the known schedule tells exactly.
    assert with_future["mse"] < without["mse"] / 4, (with_future, without)


def test_forecast_command_reads_the_horizon_from_a_file(schedule, runs, tmp_path, capsys):
    path, ts, load, on = schedule
    run = str(runs[True][0])
    history, future = tmp_path / "history.csv", tmp_path / "future.csv"
    _write(history, ts[:1200], {"load": load[:1200], "on": on[:1200]})
    _write(future, ts[1200:1212], {"on": on[1200:1212]})
    out = tmp_path / "f.csv"
    assert main(["forecast", run, "--input", str(history), "--output", str(out), "--future", str(future)]) == 0
    got = np.array([float(r["load"]) for r in csv.DictReader(out.open())])
    flipped = tmp_path / "flipped.csv"
    _write(flipped, ts[1200:1212], {"on": 1 - on[1200:1212]})
    assert main(["forecast", run, "--input", str(history), "--output", str(out), "--future", str(flipped)]) == 0
    moved = np.array([float(r["load"]) for r in csv.DictReader(out.open())])
    truth = load[1200:1212]
    # The forecast follows the schedule it is given (switches are 25 units): the true one lands far nearer the truth.
    assert np.abs(got - truth).mean() < np.abs(moved - truth).mean() / 2
    both = tmp_path / "both.csv"
    _write(both, ts[:1212], {"load": load[:1212], "on": on[:1212]})
    assert main(["forecast", run, "--input", str(both), "--output", str(out), "--holdout"]) == 0
    held = np.array([float(r["load"]) for r in csv.DictReader(out.open())])
    np.testing.assert_allclose(held, got, rtol=1e-5)           # --holdout takes the schedule from the held-back rows
    capsys.readouterr()


def test_forecast_command_errors_are_one_line(schedule, runs, tmp_path, capsys):
    path, ts, load, on = schedule
    history, late = tmp_path / "history.csv", tmp_path / "late.csv"
    _write(history, ts[:1200], {"load": load[:1200], "on": on[:1200]})
    _write(late, ts[1201:1213], {"on": on[1201:1213]})
    out = str(tmp_path / "f.csv")
    cases = [
        ([str(runs[True][0]), "--input", str(history), "--output", out], "give --future FILE.csv with the next 12 "
                                                                           "steps of ['on']"),
        ([str(runs[True][0]), "--input", str(history), "--output", out, "--future", str(late)],
         "needs the 12 steps after the input's last row (2024-02-20 00:00"),
        ([str(runs[False][0]), "--input", str(history), "--output", out, "--future", str(late)],
         "reads the look-back only"),
    ]
    for argv, message in cases:
        assert main(["forecast", *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
