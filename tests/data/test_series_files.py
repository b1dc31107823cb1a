"""User CSV series: every bad input is one clear line; the fill policies; the embedded series' sizes and columns."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.data.series import SeriesDataError, load_series
from attnlab.data.series.embedded import EMBEDDED_SERIES

GOOD = "time,load,temp\n2024-01-01 00:00,1,10\n2024-01-01 01:00,2,11\n2024-01-01 02:00,3,12\n2024-01-01 03:00,4,13\n"


def write(tmp_path, text: str) -> str:
    p = tmp_path / "s.csv"
    p.write_text(text)
    return str(p)


def test_good_file_reads_targets_first(tmp_path):
    f = load_series(write(tmp_path, GOOD), "time", ["load"], ["temp"])
    assert f.columns == ("load", "temp") and f.values.shape == (4, 2)
    np.testing.assert_array_equal(f.values[:, 0], [1, 2, 3, 4])
    assert str(f.timestamps[1]) == "2024-01-01T01:00:00"


@pytest.mark.parametrize("text, args, match", [
    (GOOD, ("time", ["lod"], []), r"target column 'lod' not in the header; did you mean \['load'\]"),
    (GOOD, ("tme", ["load"], []), r"timestamp column 'tme'"),
    (GOOD, ("time", ["load"], ["tmp"]), r"exogenous column 'tmp'"),
    (GOOD.replace("2,11", "2,warm"), ("time", ["load"], ["temp"]), r"line 3: column 'temp' holds 'warm', not a number"),
    (GOOD.replace("01:00,2", "03:00,2").replace("03:00,4", "01:00,4"), ("time", ["load"], []), r"not increasing"),
    (GOOD.replace("02:00,3", "01:00,3"), ("time", ["load"], []), r"duplicated: row 2"),
    (GOOD.replace("2024-01-01 02:00,3,12\n", ""), ("time", ["load"], []), r"gap after row 2: .* data.fill=linear"),
    (GOOD + "2024-01-01 04:00,5,14\n2024-01-01 05:30,6,15\n", ("time", ["load"], []), r"irregular time step at row 5"),
    (GOOD.replace("2,11", ",11"), ("time", ["load"], []), r"column 'load' has a missing value at 2024-01-01T01:00"),
    (GOOD.replace("2024-01-01 01:00", "yesterday"), ("time", ["load"], []), r"line 3: timestamp 'yesterday'"),
    ("time,load\n", ("time", ["load"], []), r"0 data row\(s\)"),
])
def test_bad_csv_is_one_line(tmp_path, text, args, match):
    with pytest.raises(SeriesDataError, match=match) as e:
        load_series(write(tmp_path, text), *args)
    assert "\n" not in str(e.value)


def test_csv_needs_timestamp_and_target(tmp_path):
    with pytest.raises(SeriesDataError, match="needs data.timestamp"):
        load_series(write(tmp_path, GOOD), None, ["load"])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_series(str(tmp_path / "missing.csv"), "time", ["load"])


def test_fill_policies(tmp_path):
    gap = write(tmp_path, GOOD.replace("2024-01-01 01:00,2,11\n", "").replace("03:00,4", "03:00,7"))
    lin = load_series(gap, "time", ["load"], [], fill="linear")
    np.testing.assert_allclose(lin.values[:, 0], [1, 2, 3, 7])  # 00:00=1, 02:00=3: 01:00 interpolated
    prev = load_series(gap, "time", ["load"], [], fill="previous")
    np.testing.assert_allclose(prev.values[:, 0], [1, 1, 3, 7])
    assert len(lin.timestamps) == 4 and str(lin.timestamps[1]) == "2024-01-01T01:00:00"


def test_monthly_dates_are_a_regular_step(tmp_path):
    text = "m,v\n2020-01-01,1\n2020-02-01,2\n2020-03-01,3\n2020-05-01,5\n"
    with pytest.raises(SeriesDataError, match="gap after row 3"):
        load_series(write(tmp_path, text), "m", ["v"])
    f = load_series(write(tmp_path, text), "m", ["v"], fill="linear")
    np.testing.assert_allclose(f.values[:, 0], [1, 2, 3, 4, 5])


@pytest.mark.parametrize("name, rows, target, first", [
    ("taylor", 4032, ("demand",), 22262.0), ("weather", 8760, ("temp_air",), None), ("co2", 2284, ("co2",), 316.1),
    ("sunspots", 309, ("sunspots",), 5.0), ("elnino", 732, ("sst",), 23.11), ("macrodata", 203, ("infl",), 0.0),
    ("elec_equip", 257, ("elec_equip",), 66.19)])
def test_embedded_series(name, rows, target, first):
    f = load_series(name)
    assert len(f.values) == rows and f.target == target and not np.isnan(f.values).any()
    assert (np.diff(f.timestamps).astype(np.int64) > 0).all()
    if first is not None:
        assert f.values[0, 0] == pytest.approx(first)
    assert name in EMBEDDED_SERIES


def test_embedded_exogenous_defaults_and_override():
    w = load_series("weather")
    assert w.columns == ("temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed", "ghi")
    assert load_series("weather", target=["ghi"], exogenous=[]).columns == ("ghi",)
    with pytest.raises(SeriesDataError, match="did you mean"):
        load_series("weather", target=["temp_ar"])


@pytest.mark.parametrize("start, step, unit, period", [
    ("2024-01-01T00:00", 3600, "s", 24), ("2024-01-01T00:00", 1800, "s", 48), ("2024-01-01", 86400, "s", 7),
    ("2024-01-01", 7 * 86400, "s", 52), ("2024-01", 1, "M", 12), ("2024-01", 3, "M", 4), ("2024-01-01", 5400, "s", 16), ("2024-01-01", 25200, "s", None)])
def test_seasonal_period_from_the_time_step(start, step, unit, period):
    from attnlab.data.series.frame import infer_period

    ts = np.datetime64(start, unit) + np.arange(10) * np.timedelta64(step, unit)
    assert infer_period(ts) == period
    assert infer_period(np.arange(1990, 2000)) is None  # integer steps (years): no calendar to read
