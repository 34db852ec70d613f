"""Sample ingest: file formats, LUCAS column fallbacks, dates, CRS, duplicates, unit warning, clear errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from socmap.config import load_config
from socmap.data import load_samples
from socmap.errors import InputError


def lucas(n: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "POINTID": 43000000 + np.arange(n),
            "GPS_LAT": rng.uniform(47.5, 50.0, n),
            "GPS_LONG": rng.uniform(9.5, 13.0, n),
            "year": rng.choice([2009, 2015, 2018], n),
            "OC": rng.lognormal(3.0, 0.5, n).round(1),
        }
    )


def load(path: Path, **overrides: object):
    return load_samples(load_config(None, {"samples.path": str(path), **overrides}))


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".parquet", ".gpkg"])
def test_formats_give_the_same_samples(tmp_path: Path, suffix: str) -> None:
    frame = lucas()
    path = tmp_path / f"s{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".xlsx":
        frame.to_excel(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        gdf = gpd.GeoDataFrame(
            frame.drop(columns=["GPS_LAT", "GPS_LONG"]),
            geometry=gpd.points_from_xy(frame["GPS_LONG"], frame["GPS_LAT"]),
            crs=4326,
        ).to_crs(25832)  # stored projected: must come back as lon/lat
        gdf.to_file(path)
    table = load(path)
    np.testing.assert_allclose(table.frame["lat"], frame["GPS_LAT"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table.frame["lon"], frame["GPS_LONG"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table.frame["target"], frame["OC"])
    assert list(table.frame["time"]) == [str(y) for y in frame["year"]]
    assert table.frame["sample_id"].tolist() == frame["POINTID"].astype(str).tolist()


def test_th_lat_fallback_and_survey_date(tmp_path: Path) -> None:
    frame = lucas().rename(columns={"GPS_LAT": "TH_LAT", "GPS_LONG": "TH_LONG"}).drop(columns="year")
    frame["SURVEY_DATE"] = ["2015-06-0" + str(1 + i % 9) for i in range(len(frame))]
    frame.loc[3, "SURVEY_DATE"] = "not a date"
    frame.to_csv(tmp_path / "s.csv", index=False)
    table = load(tmp_path / "s.csv")
    assert table.drops == {"invalid_time": 1}
    assert set(table.frame["time"]) == {"2015"}


def test_projected_coordinates(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "east": [691_000.0, 700_000.0],
            "north": [5_335_000.0, 5_340_000.0],
            "OC": [10.0, 20.0],
            "year": [2015, 2016],
        }
    )
    frame.to_csv(tmp_path / "s.csv", index=False)
    table = load(
        tmp_path / "s.csv",
        **{"samples.id": "id", "samples.x": "east", "samples.y": "north", "samples.crs": "EPSG:25832"},
    )
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(25832, 4326, always_xy=True).transform(frame["east"], frame["north"])
    np.testing.assert_allclose(table.frame["lon"], lon)
    np.testing.assert_allclose(table.frame["lat"], lat)


def test_missing_columns_name_what_was_looked_for(tmp_path: Path) -> None:
    lucas().drop(columns="OC").to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(
        InputError, match=r"no target column \(looked for OC\); columns are: POINTID, GPS_LAT"
    ):
        load(tmp_path / "s.csv")
    lucas().drop(columns="GPS_LAT").to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        InputError, match=r"no latitude column \(looked for GPS_LAT, TH_LAT\).*set samples.lat"
    ):
        load(tmp_path / "t.csv")
    lucas().drop(columns="year").to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(InputError, match=r"no year column \(looked for year, YEAR\) and no date column"):
        load(tmp_path / "u.csv")


def test_duplicates_policies(tmp_path: Path) -> None:
    frame = lucas(5)
    frame = pd.concat([frame, frame.iloc[[0]], frame.iloc[[1]].assign(OC=99.0)], ignore_index=True)
    frame.to_csv(tmp_path / "s.csv", index=False)
    pid = frame.loc[1, "POINTID"]
    with pytest.raises(InputError, match=rf"id {pid} at time \d+ appears 2 times with different targets"):
        load(tmp_path / "s.csv")
    mean = load(tmp_path / "s.csv", **{"samples.duplicates": "mean"})
    assert len(mean.frame) == 5 and mean.drops["duplicate"] == 2
    assert mean.frame.loc[mean.frame["sample_id"] == str(pid), "target"].item() == pytest.approx(
        (frame.loc[1, "OC"] + 99.0) / 2
    )
    dropped = load(tmp_path / "s.csv", **{"samples.duplicates": "drop"})
    assert len(dropped.frame) == 4 and dropped.drops["duplicate"] == 3
    first = load(tmp_path / "s.csv", **{"samples.duplicates": "first"})
    assert first.frame.loc[first.frame["sample_id"] == str(pid), "target"].item() == frame.loc[1, "OC"]


def test_percent_units_warn_and_scale(tmp_path: Path) -> None:
    frame = lucas()
    frame["OC"] = frame["OC"] / 10  # % instead of g/kg
    frame.to_csv(tmp_path / "s.csv", index=False)
    table = load(tmp_path / "s.csv")
    assert any("if they are in %, set samples.target_scale: 10" in w for w in table.warnings)
    scaled = load(tmp_path / "s.csv", **{"samples.target_scale": 10})
    assert not scaled.warnings
    np.testing.assert_allclose(scaled.frame["target"], frame["OC"] * 10)


def test_bad_targets_are_counted(tmp_path: Path) -> None:
    frame = lucas(8).astype({"OC": object})
    frame.loc[0, "OC"] = "n.d."
    frame.loc[1, "OC"] = None
    frame.loc[2, "OC"] = -1.0
    frame.loc[3, "OC"] = 500.0
    frame.loc[4, "year"] = 2030
    frame.to_csv(tmp_path / "s.csv", index=False)
    table = load(tmp_path / "s.csv")
    assert dict(table.drops) == {
        "invalid_target": 1,
        "missing_target": 1,
        "below_min_target": 1,
        "above_max_target": 1,
        "outside_year_range": 1,
    }
    assert len(table.frame) == 3


def test_empty_after_filters_is_an_error(tmp_path: Path) -> None:
    lucas().assign(year=2000).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputError, match=r"no samples left after filters \(outside_year_range: 20\)"):
        load(tmp_path / "s.csv")


def test_region_filter(tmp_path: Path) -> None:
    frame = lucas(30)
    frame.loc[0, ["GPS_LAT", "GPS_LONG"]] = [52.5, 13.4]  # Berlin: outside Bavaria
    frame.to_csv(tmp_path / "s.csv", index=False)
    from socmap.region import default_region_path

    table = load(tmp_path / "s.csv", **{"filters.region": str(default_region_path())})
    assert table.drops["outside_region"] >= 1
    assert "0" not in set(table.frame["source_row"].astype(str))


def test_projected_numbers_given_as_lat_lon_say_where_they_fell(tmp_path: Path) -> None:
    """UTM metres in the lat/lon columns: one line with the value ranges and the keys to set."""
    frame = lucas()
    frame["GPS_LONG"] = np.linspace(300_000, 310_000, len(frame))
    frame["GPS_LAT"] = np.linspace(6_200_000, 6_210_000, len(frame))
    frame.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputError) as info:
        load(tmp_path / "s.csv")
    text = str(info.value)
    assert "20 of 20 rows have coordinates outside longitude -180..180 / latitude -90..90" in text
    assert "longitude 'GPS_LONG' 300000..310000, latitude 'GPS_LAT' 6200000..6210000" in text
    assert "set samples.x and samples.y to these columns and samples.crs to their CRS" in text
    # the same numbers as x/y but with the default samples.crs (EPSG:4326): the CRS is what is wrong
    frame.rename(columns={"GPS_LONG": "E", "GPS_LAT": "N"}).to_csv(tmp_path / "xy.csv", index=False)
    with pytest.raises(InputError, match=r"samples.x 'E' 300000..310000.*set samples.crs to the CRS of"):
        load(tmp_path / "xy.csv", **{"samples.x": "E", "samples.y": "N"})
    # a few bad rows are dropped and reported with where they fell
    few = lucas()
    few.loc[0, "GPS_LAT"] = 95.0
    few.to_csv(tmp_path / "few.csv", index=False)
    table = load(tmp_path / "few.csv")
    assert table.drops["invalid_coordinates"] == 1
    assert any("latitude 'GPS_LAT' 95..95" in w and "invalid_coordinates" in w for w in table.warnings)


def test_ambiguous_day_month_dates_ask_for_date_format(tmp_path: Path) -> None:
    frame = lucas(4).drop(columns="year")
    frame["SURVEY_DATE"] = ["25-06-15", "04-03-15", "13-07-18", "02-05-09"]  # dd-mm-yy (LUCAS 2009 style)
    frame.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputError) as info:
        load(tmp_path / "s.csv", **{"filters.year_min": None})
    text = str(info.value)
    assert "date column 'SURVEY_DATE' reads ambiguously: '04-03-15' is 2015-03-04 day-first" in text
    assert "set samples.date_format, e.g. '%d-%m-%y' (day first)" in text and "\n" not in text
    table = load(tmp_path / "s.csv", **{"samples.date_format": "%d-%m-%y", "filters.year_min": None})
    assert list(table.frame["time"]) == ["2015", "2015", "2018", "2009"]
    # values that read one way only (day > 12, ISO, year first) need no format
    frame["SURVEY_DATE"] = ["25-06-2015", "2015-03-04", "2018/07/13", "13.05.2009"]
    frame.to_csv(tmp_path / "ok.csv", index=False)
    assert list(load(tmp_path / "ok.csv", **{"filters.year_min": None}).frame["time"]) == [
        "2015",
        "2015",
        "2018",
        "2009",
    ]


@pytest.mark.parametrize(
    ("target", "warns"), [("OC", True), ("SOC_gkg", True), ("organic_carbon", True), ("pH", False)]
)
def test_percent_warning_only_for_organic_carbon(tmp_path: Path, target: str, warns: bool) -> None:
    frame = lucas().rename(columns={"OC": target})
    frame[target] = np.linspace(4.5, 7.5, len(frame))  # pH-like (or OC in %) values
    frame.to_csv(tmp_path / "s.csv", index=False)
    table = load(tmp_path / "s.csv", **{"samples.target": target})
    assert any("if they are in %" in w for w in table.warnings) == warns
