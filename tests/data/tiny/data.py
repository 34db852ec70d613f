#!/usr/bin/env python3
"""Generate the tiny ingest fixture (run: python tests/data/tiny/data.py OUT; tests call make()).

Two CRSs, nodata, a missing year, a "lake" that is nodata in two of three bands, and one sample for every
drop reason. Pixel values encode their position and year, so tests can compute expected values independently.

- Elevation (static), EPSG:32632, 40 x 30 px at 100 m: value = 400 + 2 * row + col; nodata -9999 in the lake.
- NDVI (yearly 2018..2021, no 2020 file), same grid: value = (year - 2000) + col / 100 + row / 1000;
  nodata in the lake, and in 2019 also in rows 0-4 x cols 0-4.
- LST (yearly 2018..2021), EPSG:4326 at 0.001 deg: smooth, no nodata; must be warped onto the UTM grid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine

X0, Y_TOP, RES, WIDTH, HEIGHT = 600_000.0, 5_400_000.0, 100.0, 40, 30
UTM = "EPSG:32632"
YEARS = [2018, 2019, 2020, 2021]
MISSING = {("NDVI", 2020)}
LAKE = (slice(20, 30), slice(30, 40))  # rows, cols: nodata in Elevation and NDVI
NODATA = -9999.0


def elevation_value(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    return 400.0 + 2.0 * row + col


def ndvi_value(year: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    return (year - 2000) + col / 100.0 + row / 1000.0


def _write(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": 1,
        "width": data.shape[1],
        "height": data.shape[0],
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.float32), 1)


def pixel_centre_lonlat(row: int | np.ndarray, col: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = X0 + (np.asarray(col) + 0.5) * RES
    y = Y_TOP - (np.asarray(row) + 0.5) * RES
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def make(root: str | Path) -> Path:
    root = Path(root)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    utm = Affine(RES, 0, X0, 0, -RES, Y_TOP)
    elev = elevation_value(rows, cols)
    elev[LAKE] = NODATA
    _write(root / "covariates" / "static" / "Elevation.tif", elev, UTM, utm, NODATA)
    for year in YEARS:
        if ("NDVI", year) not in MISSING:
            ndvi = ndvi_value(year, rows, cols)
            ndvi[LAKE] = NODATA
            if year == 2019:
                ndvi[0:5, 0:5] = NODATA
            _write(root / "covariates" / "yearly" / "NDVI" / f"{year}.tif", ndvi, UTM, utm, NODATA)
    # LST on a lon/lat grid with margin around the UTM grid
    lon, lat = pixel_centre_lonlat(np.array([-10, HEIGHT + 10]), np.array([-10, WIDTH + 10]))
    west, east, south, north = lon.min(), lon.max(), lat.min(), lat.max()
    step = 0.001
    nx, ny = int(np.ceil((east - west) / step)), int(np.ceil((north - south) / step))
    geo = Affine(step, 0, west, 0, -step, north)
    glon = west + (np.arange(nx) + 0.5) * step
    glat = north - (np.arange(ny) + 0.5) * step
    for year in YEARS:
        lst = 280.0 + (year - 2018) + 50.0 * (glon[None, :] - west) + 30.0 * (north - glat[:, None])
        _write(root / "covariates" / "yearly" / "LST" / f"{year}.tif", lst, "EPSG:4326", geo, None)

    good = [
        (2, 2, 2021),
        (0, 15, 2021),
        (15, 20, 2020),
        (29, 15, 2021),
        (10, 5, 2021),
        (5, 35, 2019),
        (12, 12, 2018),
        (27, 3, 2021),
        (19, 29, 2021),
        (22, 8, 2019),
    ]
    records = []
    for i, (r, c, year) in enumerate(good):
        lon_i, lat_i = pixel_centre_lonlat(r, c)
        records.append(
            {
                "POINTID": 1000 + i,
                "GPS_LAT": float(lat_i),
                "GPS_LONG": float(lon_i),
                "year": year,
                "OC": 10.0 + i,
            }
        )
    lon_l, lat_l = pixel_centre_lonlat(25, 35)  # in the lake: 2 of 3 bands nodata
    lon_c, lat_c = pixel_centre_lonlat(5, 5)
    records += [
        {
            "POINTID": 2001,
            "GPS_LAT": float(lat_l),
            "GPS_LONG": float(lon_l),
            "year": 2021,
            "OC": 30.0,
        },  # mostly_nodata
        {"POINTID": 2002, "GPS_LAT": 48.0, "GPS_LONG": 5.0, "year": 2021, "OC": 20.0},  # outside_rasters
        {
            "POINTID": 2003,
            "GPS_LAT": float(lat_c),
            "GPS_LONG": float(lon_c),
            "year": 2021,
            "OC": None,
        },  # missing
        {
            "POINTID": 2004,
            "GPS_LAT": float(lat_c),
            "GPS_LONG": float(lon_c),
            "year": 2021,
            "OC": 400.0,
        },  # > cap
        {
            "POINTID": 2005,
            "GPS_LAT": float(lat_c),
            "GPS_LONG": float(lon_c),
            "year": 2015,
            "OC": 20.0,
        },  # time
        {
            "POINTID": 2006,
            "GPS_LAT": float(lat_c),
            "GPS_LONG": float(lon_c),
            "year": 2003,
            "OC": 20.0,
        },  # year range
        {"POINTID": 2007, "GPS_LAT": None, "GPS_LONG": float(lon_c), "year": 2021, "OC": 20.0},  # coordinates
        {"POINTID": 2008, "GPS_LAT": float(lat_c), "GPS_LONG": float(lon_c), "year": 2021, "OC": -3.0},  # < 0
    ]
    pd.DataFrame(records).to_csv(root / "samples.csv", index=False)
    return root


EXPECTED_DROPS = {
    "invalid_coordinates": 1,
    "missing_target": 1,
    "below_min_target": 1,
    "above_max_target": 1,
    "outside_year_range": 1,
    "outside_rasters": 1,
    "time_outside_covariates": 1,
    "mostly_nodata": 1,
}
N_GOOD = 10

if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "tiny-fixture"))
