"""``objective.name: forecast``: a series under the forecasting protocol as the Trainer's data, and its test report.

:class:`ForecastFeed` gives the Trainer random training windows (:class:`~attnlab.train.feeds.SplitSampler`, resumable
like every feed) and the validation windows; :func:`forecast_report` scores a trained model and the closed-form
baselines on every test window (:func:`attnlab.objectives.forecast.evaluate_forecast`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data.series import ForecastData, is_series, load_forecast_data
from ..models.series.baselines import default_baselines
from ..objectives.forecast import evaluate_forecast, model_predictor, uses_future_exog
from .feeds import SplitSampler, TokenIds

SERIES_KEYS = ("timestamp", "target", "exogenous", "calendar", "lookback", "horizon", "test_fraction", "fill")
SHAPE_KEYS = ("lookback", "horizon", "num_variates", "num_exogenous")


class ForecastFeed:
    """The windows of a :class:`~attnlab.data.series.ForecastData` as the Trainer's data source (``kind``
    ``forecast``). One training "position" is one window; validation covers the whole validation split (the
    Trainer's validation loss averages per-batch means; the test report of :func:`forecast_report` is exact)."""

    kind = "forecast"
    vocab_size = None

    def __init__(self, data: ForecastData, future_exog: bool = False):
        self.data = data
        self.future_exog = future_exog  # batches carry the horizon's exogenous values (model.future_exog)
        self.tokenizer = TokenIds(None, "window")
        self.seq_len = data.lookback

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> SplitSampler:
        split = _WithFuture(self.data.train) if self.future_exog else self.data.train
        return SplitSampler(split, batch_size, seed, rank, world_size, grad_accum)

    def eval_batches(self, batch_size: int, num_batches: int, rank: int = 0,
                     world_size: int = 1) -> list[dict[str, Tensor]]:
        n, per = len(self.data.val), batch_size * world_size
        out = []
        for start in range(0, n, per):
            rows = torch.arange(start, min(start + per, n))[rank::world_size]
            if len(rows):
                out.append(self.data.val.batch(rows, future_exog=self.future_exog))
        return out

    def model_shape(self) -> dict[str, int]:
        """The series fields of the model config this data fills in."""
        return {"lookback": self.data.lookback, "horizon": self.data.horizon,
                "num_variates": self.data.num_targets, "num_exogenous": self.data.num_exogenous}


class _WithFuture:
    """A :class:`~attnlab.data.series.WindowSplit` whose batches include the horizon's exogenous values."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        return self.split.batch(index, future_exog=True)


def forecast_feed(cfg: RunConfig) -> ForecastFeed:
    """The feed of a ``forecast`` run config.

    Raises:
        SeriesDataError (a ``ValueError``): bad data settings (one line each; see :mod:`attnlab.data.series`).
        FileNotFoundError: a missing CSV file or an embedded series that is not installed (names the install).
    """
    d = cfg.data
    if not is_series(d.dataset):
        from ..data.series import EMBEDDED_SERIES

        raise ValueError(f"objective forecast trains on a series: set data.dataset to a .csv file or one of "
                         f"{sorted(EMBEDDED_SERIES)}, not {d.dataset!r}")
    return ForecastFeed(load_forecast_data(d.dataset, d.timestamp, d.target or None, d.exogenous, d.fill, d.lookback,
                                           d.horizon, d.val_fraction, d.test_fraction, d.calendar),
                        cfg.model.future_exog)


def check_not_series(cfg: RunConfig) -> None:
    """Raise ``ValueError`` when a run that is not ``forecast`` sets series-only data keys or names a series."""
    fields = type(cfg.data).model_fields
    changed = [k for k in SERIES_KEYS if getattr(cfg.data, k) != fields[k].default]
    if changed:
        raise ValueError(f"data.{', data.'.join(changed)} apply to objective forecast, not {cfg.objective.name!r}; "
                         "set objective.name=forecast or remove them")
    from ..data.series import EMBEDDED_SERIES

    if cfg.data.dataset in EMBEDDED_SERIES:
        raise ValueError(f"{cfg.data.dataset!r} is a series: train it with objective.name=forecast and a series preset "
                         "(patchtst-small, itransformer-small, dlinear, ...)")


def forecast_report(model: nn.Module, data: ForecastData, batch_size: int = 256, device=None,
                    baselines: bool = True) -> dict:
    """Test metrics of ``model`` and, with ``baselines``, of the closed-form baselines fitted on the training split.

    Returns ``{"model": {...}, "baselines": {name: {...}}, "windows", "lookback", "horizon"}`` with each entry's
    ``mse``, ``mae`` (normalised) and ``mae_original``.
    """
    std = data.std[: data.num_targets]
    was = model.training
    out = {"model": evaluate_forecast(model_predictor(model), data.test, batch_size, std, device,
                                      future_exog=uses_future_exog(model))}
    model.train(was)
    if baselines:
        rows = {}
        for b in default_baselines(data.frame.period, data.num_exogenous > 0):
            try:
                b.fit(data)
            except ValueError as e:  # e.g. a period longer than the look-back: reported, not hidden
                rows[b.name] = {"skipped": str(e)}
                continue
            rows[b.name] = evaluate_forecast(lambda batch, b=b: b.predict(batch, data.num_targets, data.horizon),
                                             data.test, batch_size, std, device, future_exog=b.uses_future_exog)
        out["baselines"] = rows
    return {**out, "windows": len(data.test), "lookback": data.lookback, "horizon": data.horizon}


def report_lines(report: dict, name: str = "model") -> list[str]:
    """A small text table of :func:`forecast_report`'s result."""
    lines = [f"test: {report['windows']} windows, lookback {report['lookback']}, horizon {report['horizon']}",
             f"  {'forecaster':<22}{'MSE':>9}{'MAE':>9}{'MAE (units)':>14}"]
    rows = [(name, report["model"])] + list(report.get("baselines", {}).items())
    for n, r in rows:
        if "skipped" in r:
            lines.append(f"  {n:<22}skipped: {r['skipped']}")
        else:
            lines.append(f"  {n:<22}{r['mse']:>9.4f}{r['mae']:>9.4f}{r.get('mae_original', float('nan')):>14.4g}")
    return lines


TEST_REPORT = "test.json"


def write_test_report(model: nn.Module, feed, run_dir, device=None) -> dict:
    """The test report of the final weights (:func:`forecast_report` for a forecast feed, the accuracy of an
    irregular-series feed), printed and written atomically to ``RUN/test.json``."""
    from pathlib import Path

    from ..core.io import write_json

    if feed.kind == "irregular":
        from .irregular_feed import irregular_report

        report = irregular_report(model, feed, device=device)
        print(f"test: accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f} over {report['examples']} samples")
    else:
        report = forecast_report(model, feed.data, device=device)
        print("\n".join(report_lines(report)))
    try:
        write_json(Path(run_dir) / TEST_REPORT, report)
    except OSError as e:  # a read-only folder: the numbers were printed
        print(f"{TEST_REPORT} not written: {e}")
    return report
