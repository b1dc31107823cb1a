"""The embedded series (:mod:`attnlab.data.sources`, kind ``series``), read from the files their packages ship.

No package is imported: the files are parsed here, so nothing else of those packages (or the network) is touched.

==========  =====================================================================  ==================  ======
name        contents                                                               default target      period
==========  =====================================================================  ==================  ======
taylor      electricity demand of England and Wales (MW), half-hourly, 2000-06-05   demand              48
            to 2000-08-27, 4,032 values (Taylor 2003; pmdarima)
weather     NREL TMY3 Greensboro NC, hourly, 8,760 rows (pvlib); exogenous:         temp_air            24
            temp_dew, relative_humidity, pressure, wind_speed, ghi
co2         Mauna Loa CO2 (ppmv), weekly 1958-2001; 59 missing values are           co2                 52
            interpolated linearly (statsmodels)
sunspots    yearly sunspot activity 1700-2008 (statsmodels)                          sunspots            11
elnino      Nino 1+2 SST, monthly 1950-2010, melted from the wide table             sst                 12
macrodata   US quarterly macro data 1959Q1-2009Q3; target inflation, the other      infl                4
            11 series exogenous (statsmodels)
elec_equip  euro-area electrical equipment orders index, monthly 1995-2016         elec_equip          12
==========  =====================================================================  ==================  ======

TMY3 months come from different years (Jan 1988, Feb 1996, ...): the year is set to 1990 for every row so the 8,760
hours form one regular grid, and the series jumps at month boundaries (windows straddling them are kept).
"""

from __future__ import annotations

import ast
import csv
import re
from datetime import datetime, timedelta

import numpy as np

from ..sources import source_path
from .frame import SeriesFrame, clean_frame

# TMY3 header prefix -> pvlib's read_tmy3(map_variables=True) name
TMY3_COLUMNS = {"ETR": "ghi_extra", "ETRN": "dni_extra", "GHI": "ghi", "DNI": "dni", "DHI": "dhi",
                "TotCld": "total_cloud", "OpqCld": "opaque_cloud", "Dry-bulb": "temp_air", "Dew-point": "temp_dew",
                "RHum": "relative_humidity", "Pressure": "pressure", "Wdir": "wind_direction", "Wspd": "wind_speed",
                "Hvis": "visibility", "CeilHgt": "ceiling_height", "Pwat": "precipitable_water", "AOD": "aod",
                "Alb": "albedo"}
MACRO_EXOGENOUS = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
                   "realint")


def load_taylor() -> SeriesFrame:
    """4,032 half-hourly demand values from the literal array in ``pmdarima/datasets/taylor.py``."""
    text = source_path("taylor").read_text()
    match = re.search(r"np\.array\(\s*(\[.*?\])", text, re.S)
    if match is None:
        raise ValueError("pmdarima's taylor.py no longer holds a literal array; pin pmdarima==2.1.1")
    values = np.array(ast.literal_eval(match.group(1)), dtype=np.float64)
    ts = np.datetime64("2000-06-05T00:00", "s") + np.arange(len(values)) * np.timedelta64(1800, "s")
    return SeriesFrame("taylor", ts, values[:, None], ("demand",), ("demand",), (), period=48)


def load_weather() -> SeriesFrame:
    """The TMY3 file of pvlib (line 1: site metadata, line 2: header), numeric columns under pvlib's names."""
    with source_path("weather").open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    header = rows[0]
    keep = [(i, TMY3_COLUMNS[h.split(" (")[0]]) for i, h in enumerate(header) if h.split(" (")[0] in TMY3_COLUMNS]
    stamps, values = [], np.empty((len(rows) - 1, len(keep)))
    for r, row in enumerate(rows[1:]):
        day = datetime.strptime(row[0], "%m/%d/%Y").replace(year=1990)  # see the module docstring
        stamps.append(day + timedelta(hours=int(row[1].split(":")[0])))  # 01:00..24:00 end the hour they label
        values[r] = [float(row[i]) for i, _ in keep]
    ts = np.array(stamps, dtype="datetime64[s]")
    names = tuple(n for _, n in keep)
    frame = SeriesFrame("weather", ts, values, names, ("temp_air",),
                        ("temp_dew", "relative_humidity", "pressure", "wind_speed", "ghi"), period=24,
                        notes=("TMY3 months come from different years; all rows are placed in 1990",))
    return clean_frame(frame, "error")


def _statsmodels_csv(name: str) -> tuple[list[str], list[list[str]]]:
    with source_path(name).open(newline="") as f:
        rows = list(csv.reader(f))
    return [h.strip() for h in rows[0]], [r for r in rows[1:] if r]


def _num(cell: str) -> float:
    return float(cell) if cell.strip() else np.nan


def load_co2() -> SeriesFrame:
    """Weekly CO2; the 59 missing weeks are filled by linear interpolation (stated in ``notes``)."""
    _, rows = _statsmodels_csv("co2")
    ts = np.array([f"{r[0][:4]}-{r[0][4:6]}-{r[0][6:]}" for r in rows], dtype="datetime64[s]")
    values = np.array([[_num(r[1])] for r in rows])
    frame = SeriesFrame("co2", ts, values, ("co2",), ("co2",), (), period=52,
                        notes=(f"{int(np.isnan(values).sum())} missing weeks interpolated linearly",))
    return clean_frame(frame, "linear")


def load_sunspots() -> SeriesFrame:
    _, rows = _statsmodels_csv("sunspots")
    ts = np.array([int(float(r[0])) for r in rows], dtype=np.int64)
    return clean_frame(SeriesFrame("sunspots", ts, np.array([[_num(r[1])] for r in rows]), ("sunspots",),
                                   ("sunspots",), (), period=11))


def load_elnino() -> SeriesFrame:
    """The wide table (one row per year, one column per month) melted into one monthly series."""
    _, rows = _statsmodels_csv("elnino")
    ts = np.array([f"{int(float(r[0]))}-{m:02d}" for r in rows for m in range(1, 13)], dtype="datetime64[M]")
    values = np.array([[_num(c)] for r in rows for c in r[1:13]])
    return clean_frame(SeriesFrame("elnino", ts, values, ("sst",), ("sst",), (), period=12))


def load_macrodata() -> SeriesFrame:
    header, rows = _statsmodels_csv("macrodata")
    ts = np.array([f"{int(float(r[0]))}-{3 * (int(float(r[1])) - 1) + 1:02d}" for r in rows], dtype="datetime64[M]")
    names = tuple(header[2:])
    values = np.array([[_num(c) for c in r[2:]] for r in rows])
    return clean_frame(SeriesFrame("macrodata", ts, values, names, ("infl",), MACRO_EXOGENOUS, period=4))


def load_elec_equip() -> SeriesFrame:
    _, rows = _statsmodels_csv("elec_equip")
    ts = np.array([datetime.strptime(r[0], "%b-%d-%Y").strftime("%Y-%m") for r in rows], dtype="datetime64[M]")
    return clean_frame(SeriesFrame("elec_equip", ts, np.array([[_num(r[1])] for r in rows]), ("elec_equip",),
                                   ("elec_equip",), (), period=12))


EMBEDDED_SERIES = {"taylor": load_taylor, "weather": load_weather, "co2": load_co2, "sunspots": load_sunspots,
                   "elnino": load_elnino, "macrodata": load_macrodata, "elec_equip": load_elec_equip}
