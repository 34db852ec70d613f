"""Synthetic Bavaria: a realistic covariate stack plus soil samples whose true SOC is known.

Real LUCAS data and satellite stacks cannot ship with socmap, so this generator writes a data set in exactly
the layout socmap accepts from users, with a documented ground truth, so that every stage can be run, tested
and scored against the best accuracy any model could reach (``truth.json: r2_ceiling``).

Layout written to ``DIR``::

    covariates/static/Elevation.tif
    covariates/yearly/<Band>/<YYYY>.tif      LAI, LST, MODIS_NPP, SoilEvaporation, TotalEvapotranspiration
    samples.csv                              POINTID, GPS_LAT, GPS_LONG, year, survey_date, OC (g/kg)
    truth.csv                                per sample: noise-free OC, noise, source, truth features
    truth.json                               generator parameters, truth formula constants, R² ceiling
    region.geojson                           the region polygon (EPSG:4326)

Fields are random-Fourier-feature Gaussian fields defined in continuous map coordinates (km), so the same
seed gives the same landscape at 1000 m, 250 m or 100 m; each is evaluated on the pixel grid as one
low-rank matrix product. The truth formula is documented in ``docs/synthetic-data.md`` and in
:func:`soc_truth`.
"""

from __future__ import annotations

import json
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import shapely
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.transform import Affine

from socmap import __version__
from socmap._atomic import atomic_dir, check_output_dir, write_json
from socmap.errors import InputError
from socmap.region import load_region, to_crs

__all__ = [
    "BANDS",
    "CRS_EPSG",
    "FEATURES",
    "GAP_BAND",
    "GAP_YEARS",
    "HISTORY",
    "LUCAS_CAMPAIGNS",
    "MARGIN_M",
    "NODATA",
    "NOISE_SIGMA_LOG",
    "NPP_MEMORY_WEIGHTS",
    "OC_LAB_MAX",
    "OC_SATURATION",
    "PEAT_QUANTILE",
    "PEAT_WEIGHT",
    "TARGET_MEDIAN_OC",
    "WINDOW",
    "FourierField",
    "Grid",
    "Lakes",
    "Landscape",
    "Locations",
    "SynthResult",
    "known_r2_ceiling",
    "r2_ceiling",
    "soc_truth",
    "synthesize",
    "truth_features",
]

CRS_EPSG = 25832
NODATA = -9999.0
FIRST_YEAR, LAST_YEAR = 2002, 2023
SAMPLE_FIRST_YEAR, SAMPLE_LAST_YEAR = 2007, 2023
HISTORY = 5  # years that drive the truth: the sample year and the 4 before it (oldest first)
WINDOW = 5  # pixels; the truth reads a 5x5 window around the sample pixel
LUCAS_CAMPAIGNS = (2009, 2015, 2018, 2022)
GAP_BAND = "SoilEvaporation"
GAP_YEARS = (2012, 2013)  # no file is written for these: a realistic product gap
MARGIN_M = 10_000.0
NOISE_SIGMA_LOG = 0.38  # multiplicative (log-normal) measurement + micro-scale noise
PEAT_WEIGHT = 1.9  # log-scale uplift in wet depressions (peat), gives the > 150 g/kg tail
PEAT_QUANTILE = 0.985
TARGET_MEDIAN_OC = 20.0
OC_SATURATION = 500.0  # g/kg: truth saturates below the OC of pure organic matter
OC_LAB_MAX = 580.0  # g/kg: no measured value exceeds the carbon content of pure organic matter

STATIC_BANDS: dict[str, tuple[str, str]] = {
    "Elevation": ("m", "elevation above sea level (synthetic DEM)"),
}
YEARLY_BANDS: dict[str, tuple[str, str]] = {
    "LAI": ("m2 m-2", "annual mean leaf area index (MODIS MCD15-like)"),
    "LST": ("K", "annual mean daytime land surface temperature (MODIS MOD11-like)"),
    "MODIS_NPP": ("g C m-2 yr-1", "annual net primary production (MODIS MOD17A3-like)"),
    "SoilEvaporation": ("mm yr-1", "annual bare-soil evaporation (GLEAM Eb-like)"),
    "TotalEvapotranspiration": ("mm yr-1", "annual total evapotranspiration (MODIS MOD16-like)"),
}
BANDS = [*STATIC_BANDS, *YEARLY_BANDS]

# Coefficients of the log-scale truth (see soc_truth); z_* are features z-scored over the sample set.
TRUTH_COEFFICIENTS: dict[str, float] = {
    "tanh_elevation": 0.35,
    "tanh_tpi": -0.25,
    "npp_memory": 0.30,
    "lst_mean": -0.20,
    "wetness": 0.20,
    "lai_heterogeneity": 0.10,
    "npp_trend": 0.15,
    "elevation_x_wetness": 0.12,
}
NPP_MEMORY_WEIGHTS = np.arange(1, HISTORY + 1, dtype=np.float64) / np.arange(1, HISTORY + 1).sum()
FEATURES = ["elevation", "tpi", "npp_memory", "lst_mean", "wetness", "lai_heterogeneity", "npp_trend"]


# --------------------------------------------------------------------------------------------------- fields
def _rng(seed: int, stream: str) -> np.random.Generator:
    """An independent, named random stream: adding a component never changes the others."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


class FourierField:
    """A stationary Gaussian random field with squared-exponential covariance (length ``length_km``).

    Random Fourier features: f(x, y) = sqrt(2/n) * sum_k cos(kx_k x + ky_k y + phi_k), k ~ N(0, 1/L^2).
    Unit variance, continuous in space (resolution independent). On a grid it is a rank-2n matrix product.
    """

    def __init__(self, rng: np.random.Generator, length_km: float, n: int = 96) -> None:
        self.kx = rng.normal(0.0, 1.0 / length_km, n)
        self.ky = rng.normal(0.0, 1.0 / length_km, n)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, n)
        self.scale = np.sqrt(2.0 / n)

    def grid(self, xs_km: NDArray[np.float64], ys_km: NDArray[np.float64]) -> NDArray[np.float64]:
        """Evaluate on the grid of column centres ``xs_km`` x row centres ``ys_km`` -> [rows, cols]."""
        ax = np.outer(xs_km, self.kx) + self.phase  # [cols, n]
        by = np.outer(ys_km, self.ky)  # [rows, n]
        left = np.concatenate([np.cos(by), -np.sin(by)], axis=1)  # cos(a+b) = cos a cos b - sin a sin b
        right = np.concatenate([np.cos(ax), np.sin(ax)], axis=1)
        return self.scale * (left @ right.T)


def _multiscale(
    seed: int, stream: str, scales: dict[float, float], xs: NDArray[np.float64], ys: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Sum of unit-variance fields at several length scales (km) with the given amplitudes."""
    rng = _rng(seed, stream)
    total = np.zeros((ys.size, xs.size))
    for length, amplitude in scales.items():
        total += amplitude * FourierField(rng, length).grid(xs, ys)
    return total


def _sigmoid(x: NDArray[np.float64] | float) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------- grid, lakes
@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid in EPSG:25832; origins snap to whole km so 1000/500/250/100 m grids nest."""

    x0: float
    y_top: float
    resolution: float
    width: int
    height: int

    @classmethod
    def around(cls, bounds: tuple[float, float, float, float], resolution: float, margin: float) -> Grid:
        minx, miny, maxx, maxy = bounds
        x0 = np.floor((minx - margin) / 1000.0) * 1000.0
        x1 = np.ceil((maxx + margin) / 1000.0) * 1000.0
        y_bottom = np.floor((miny - margin) / 1000.0) * 1000.0
        y_top = np.ceil((maxy + margin) / 1000.0) * 1000.0
        width = int(np.ceil((x1 - x0) / resolution))
        height = int(np.ceil((y_top - y_bottom) / resolution))
        return cls(float(x0), float(y_top), float(resolution), width, height)

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y_top)

    def centres_km(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        xs = (self.x0 + (np.arange(self.width, dtype=np.float64) + 0.5) * self.resolution) / 1000.0
        ys = (self.y_top - (np.arange(self.height, dtype=np.float64) + 0.5) * self.resolution) / 1000.0
        return xs.astype(np.float64), ys.astype(np.float64)

    def pixel_of(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Row, column of the pixel containing map coordinates (x, y)."""
        col = np.floor((x - self.x0) / self.resolution).astype(np.int64)
        row = np.floor((self.y_top - y) / self.resolution).astype(np.int64)
        return row, col


@dataclass(frozen=True)
class Lakes:
    """Elliptic lakes in map coordinates (km): nodata for every remotely sensed band."""

    cx: NDArray[np.float64]
    cy: NDArray[np.float64]
    a: NDArray[np.float64]
    b: NDArray[np.float64]
    angle: NDArray[np.float64]

    def contains(self, x_km: NDArray[np.float64], y_km: NDArray[np.float64]) -> NDArray[np.bool_]:
        inside = np.zeros(np.broadcast(x_km, y_km).shape, dtype=bool)
        for cx, cy, a, b, ang in zip(self.cx, self.cy, self.a, self.b, self.angle, strict=True):
            dx, dy = x_km - cx, y_km - cy
            u = dx * np.cos(ang) + dy * np.sin(ang)
            v = -dx * np.sin(ang) + dy * np.cos(ang)
            inside |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
        return inside


def _make_lakes(seed: int, region_m: shapely.Geometry) -> Lakes:
    """14 lakes inside the region, most in the pre-Alpine south (like Chiemsee, Ammersee, Starnberger See)."""
    rng = _rng(seed, "lakes")
    minx, miny, maxx, maxy = (v / 1000.0 for v in region_m.bounds)
    centres: list[tuple[float, float]] = []
    while len(centres) < 14:
        south = len(centres) < 9
        x = rng.uniform(minx + 60, maxx - 60) if south else rng.uniform(minx, maxx)
        y = rng.uniform(miny + 35, miny + 95) if south else rng.uniform(miny, maxy)
        if region_m.contains(shapely.Point(x * 1000.0, y * 1000.0)):
            centres.append((x, y))
    n = len(centres)
    a = rng.uniform(1.5, 5.5, n)
    return Lakes(
        cx=np.array([c[0] for c in centres]),
        cy=np.array([c[1] for c in centres]),
        a=a,
        b=a * rng.uniform(0.35, 0.8, n),
        angle=rng.uniform(0, np.pi, n),
    )


# -------------------------------------------------------------------------------------------- the landscape
class Landscape:
    """Static fields and the per-year covariate generator on one grid."""

    def __init__(self, seed: int, grid: Grid, lakes: Lakes) -> None:
        self.seed, self.grid = seed, grid
        xs, ys = grid.centres_km()
        self.xs, self.ys = xs, ys
        X, Y = np.meshgrid(xs, ys)
        self.lake = lakes.contains(X, Y)
        self.elevation = self._elevation(X, Y)
        self.forest = _sigmoid(1.6 * _multiscale(seed, "forest", {2.0: 0.5, 6.0: 0.6, 25.0: 0.6}, xs, ys))
        self.moisture = _multiscale(seed, "moisture", {12.0: 0.6, 50.0: 0.8}, xs, ys)
        self.snow = _sigmoid((self.elevation - 1700.0) / 150.0)
        year_rng = _rng(seed, "climate-years")
        self.climate_index = {
            y: float(v)
            for y, v in zip(range(FIRST_YEAR, LAST_YEAR + 1), year_rng.normal(0, 0.8, 22), strict=True)
        }
        self.climate_index.update({2003: 2.0, 2018: 1.8, 2010: -1.3, 2022: 1.5})  # notable hot/dry years

    def _elevation(self, X: NDArray[np.float64], Y: NDArray[np.float64]) -> NDArray[np.float64]:
        s, xs, ys = self.seed, self.xs, self.ys
        base = 430.0 + _multiscale(s, "elev-base", {100.0: 110.0, 30.0: 70.0, 10.0: 35.0, 3.0: 14.0}, xs, ys)
        main_valley = -170.0 * _sigmoid((Y - 5480.0) / 35.0) * _sigmoid((590.0 - X) / 35.0)
        relief = np.abs(_multiscale(s, "elev-alps", {9.0: 1.0, 3.5: 0.6}, xs, ys))
        alps = _sigmoid((5282.0 - Y) / 8.0) * (650.0 + 900.0 * relief)
        forest_ranges = 520.0 * np.exp(
            -(((X - 812.0) / 32.0) ** 2) - ((Y - 5435.0) / 55.0) ** 2
        ) + 330.0 * np.exp(-(((X - 712.0) / 18.0) ** 2) - ((Y - 5548.0) / 18.0) ** 2)
        hills = np.abs(_multiscale(s, "elev-hills", {6.0: 1.0}, xs, ys)) * (forest_ranges / 3.0 + 40.0)
        elevation = base + main_valley + alps + forest_ranges + hills
        return np.clip(elevation, 107.0, 2962.0)

    def year(self, year: int) -> dict[str, NDArray[np.float64]]:
        """All yearly bands of ``year`` (lakes are NaN): a climate anomaly drives them coherently."""
        s, xs, ys, t = self.seed, self.xs, self.ys, year - FIRST_YEAR
        clim = self.climate_index[year] + 0.6 * _multiscale(s, f"clim-{year}", {60.0: 1.0}, xs, ys)

        def noise(band: str, length: float = 4.0) -> NDArray[np.float64]:
            return _multiscale(s, f"{band}-{year}", {length: 0.8, 1.5: 0.6}, xs, ys)

        base_lai = (1.5 + 3.8 * self.forest + 0.35 * self.moisture) * (1.0 - 0.85 * self.snow)
        lai = np.clip(base_lai - 0.22 * clim + 0.012 * t + 0.25 * noise("LAI"), 0.0, 7.0)
        lst = (
            291.5
            - 0.0062 * self.elevation
            - 0.45 * (lai - 3.0)
            + 1.1 * clim
            + 0.035 * t
            + 0.35 * noise("LST")
        )
        temp_factor = _sigmoid((lst - 277.0) / 2.5)
        npp = np.clip(
            40.0 + 135.0 * lai * temp_factor * (1.0 - 0.12 * clim) + 25.0 * noise("NPP"), 0.0, 1300.0
        )
        et = np.clip(
            230 + 48 * lai + 7 * (lst - 284) + 45 * self.moisture - 20 * clim + 15 * noise("ET"), 100, 900
        )
        soil_evap = np.clip(
            35 + 14 * (7 - lai) + 4 * (lst - 284) + 18 * self.moisture + 8 * noise("SE"), 5.0, 350.0
        )
        out = {
            "LAI": lai,
            "LST": lst,
            "MODIS_NPP": npp,
            "SoilEvaporation": soil_evap,
            "TotalEvapotranspiration": et,
        }
        for arr in out.values():
            arr[self.lake] = np.nan
        return out


# ------------------------------------------------------------------------------------------------- samples
@dataclass
class Locations:
    """Sample locations: map coordinates (m), lon/lat as written, id and source."""

    pointid: NDArray[np.int64]
    source: NDArray[np.str_]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    lon: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    lat: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))


def _lucas_grid(region_4326: shapely.Geometry) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The LUCAS 2 km grid (EPSG:3035) points inside the region, as EPSG:3035 metres."""
    region_laea = to_crs(region_4326, "EPSG:3035")
    minx, miny, maxx, maxy = region_laea.bounds
    gx = np.arange(np.floor(minx / 2000) * 2000, maxx + 2000, 2000.0)
    gy = np.arange(np.floor(miny / 2000) * 2000, maxy + 2000, 2000.0)
    X, Y = np.meshgrid(gx, gy)
    inside = shapely.contains_xy(region_laea, X.ravel(), Y.ravel())
    return X.ravel()[inside], Y.ravel()[inside]


def _make_locations(
    seed: int, n_locations: int, region_4326: shapely.Geometry, region_m: shapely.Geometry, lakes: Lakes
) -> Locations:
    """40 % LUCAS-like 2 km grid points (GPS jitter), 60 % clustered agency plots; none in a lake."""
    rng = _rng(seed, "locations")
    inner = region_m.buffer(-50.0)  # keep rounding of written lon/lat from pushing a point outside
    shapely.prepare(inner)
    n_lucas = round(0.4 * n_locations)
    n_agency = n_locations - n_lucas
    to_utm = Transformer.from_crs("EPSG:3035", f"EPSG:{CRS_EPSG}", always_xy=True)

    lx, ly = _lucas_grid(region_4326)
    pick = rng.permutation(lx.size)
    ux, uy = to_utm.transform(lx[pick], ly[pick])
    ux = ux + rng.normal(0, 20.0, ux.size)  # GPS positioning error of the field survey
    uy = uy + rng.normal(0, 20.0, uy.size)
    ok = shapely.contains_xy(inner, ux, uy) & ~lakes.contains(ux / 1000.0, uy / 1000.0)
    idx = np.flatnonzero(ok)[:n_lucas]
    if idx.size < n_lucas:
        raise InputError(f"--n-locations {n_locations}: the region holds only {ok.sum()} LUCAS grid points")
    lucas_id = (
        np.round(lx[pick][idx] / 1000).astype(np.int64) * 10_000 + np.round(ly[pick][idx] / 1000)
    ).astype(np.int64)

    minx, miny, maxx, maxy = region_m.bounds
    n_clusters = max(1, n_agency // 50)
    centres: list[tuple[float, float]] = []
    while len(centres) < n_clusters:
        cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        if inner.contains(shapely.Point(cx, cy)):
            centres.append((cx, cy))
    ax_list: list[float] = []
    ay_list: list[float] = []
    while len(ax_list) < n_agency:
        k = rng.integers(n_clusters, size=4 * n_agency)
        px = np.array([centres[i][0] for i in k]) + rng.normal(0, 3000.0, k.size)
        py = np.array([centres[i][1] for i in k]) + rng.normal(0, 3000.0, k.size)
        good = shapely.contains_xy(inner, px, py) & ~lakes.contains(px / 1000.0, py / 1000.0)
        ax_list.extend(px[good])
        ay_list.extend(py[good])
    ax = np.array(ax_list[:n_agency])
    ay = np.array(ay_list[:n_agency])
    agency_id = 90_000_000 + np.arange(1, n_agency + 1, dtype=np.int64)
    return Locations(
        pointid=np.concatenate([lucas_id, agency_id]),
        source=np.array(["LUCAS"] * n_lucas + ["agency"] * n_agency),
        x=np.concatenate([ux[idx], ax]),
        y=np.concatenate([uy[idx], ay]),
    )


def _visit_years(seed: int, source: NDArray[np.str_]) -> list[NDArray[np.int64]]:
    """LUCAS points join each campaign with p=0.75; agency plots are revisited every 4-6 years."""
    rng = _rng(seed, "visits")
    campaigns = np.array(LUCAS_CAMPAIGNS)
    visits: list[NDArray[np.int64]] = []
    for src in source:
        if src == "LUCAS":
            chosen = campaigns[rng.random(campaigns.size) < 0.75]
            visits.append(chosen if chosen.size else campaigns[[rng.integers(campaigns.size)]])
        else:
            interval = int(rng.integers(4, 7))
            start = SAMPLE_FIRST_YEAR + int(rng.integers(interval))
            visits.append(np.arange(start, SAMPLE_LAST_YEAR + 1, interval))
    return visits


# ---------------------------------------------------------------------------------------------- the truth
def _window_stats(windows: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """nanmean and nanstd over the last axis (the 25 window pixels), NaN = nodata."""
    w = windows.astype(np.float64)
    with warnings.catch_warnings():  # an all-NaN slice (a gap year) is expected and gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(w, axis=-1), np.nanstd(w, axis=-1)


def truth_features(
    elevation: NDArray[np.float32],
    lai: NDArray[np.float32],
    lst: NDArray[np.float32],
    npp: NDArray[np.float32],
    soil_evap: NDArray[np.float32],
    et: NDArray[np.float32],
) -> dict[str, NDArray[np.float64]]:
    """Raw truth features from window stacks, as the rasters store them (nodata as NaN).

    ``elevation``: [N, 25] (5x5 window flattened row-major, centre at index 12);
    yearly bands: [N, HISTORY, 25], oldest year first, the sample year last.
    """
    centre = WINDOW * WINDOW // 2
    elev_mean, _ = _window_stats(elevation)
    npp_mean, _ = _window_stats(npp)
    lst_mean, _ = _window_stats(lst)
    wet_mean, _ = _window_stats(et - soil_evap)  # NaN in the gap years of SoilEvaporation
    _, lai_std = _window_stats(lai[:, -1])
    return {
        "elevation": elevation[:, centre].astype(np.float64),
        "tpi": elevation[:, centre].astype(np.float64) - elev_mean,
        "npp_memory": npp_mean @ NPP_MEMORY_WEIGHTS,
        "lst_mean": lst_mean.mean(axis=1),
        "wetness": np.nanmean(wet_mean, axis=1),
        "lai_heterogeneity": lai_std,
        "npp_trend": npp_mean[:, -1] - npp_mean[:, 0],
    }


def soc_truth(features: dict[str, NDArray[np.float64]], params: dict[str, Any]) -> NDArray[np.float64]:
    """Noise-free SOC (g/kg) from truth features and the constants stored in ``truth.json``.

    z_f = (f - mean_f) / sd_f over the sample set; with t = tanh(z_tpi) and the coefficients c_*:

        s     = c_elev tanh(z_elevation) + c_tpi t + c_npp z_npp_memory + c_lst z_lst_mean + c_wet z_wetness
                + c_het z_lai_heterogeneity + c_trend z_npp_trend + c_int z_elevation z_wetness
        peat  = sigmoid(5 (z_wetness - 1.5 t - peat_threshold))      (wet depressions)
        raw   = exp(mu + s + peat_weight * peat)
        truth = OC_SATURATION * (1 - exp(-raw / OC_SATURATION))   (organic soils saturate; ~raw below 100)
    """
    z = {k: (features[k] - params["feature_mean"][k]) / params["feature_sd"][k] for k in FEATURES}
    c = params["coefficients"]
    tanh_tpi = np.tanh(z["tpi"])
    s = (
        c["tanh_elevation"] * np.tanh(z["elevation"])
        + c["tanh_tpi"] * tanh_tpi
        + c["npp_memory"] * z["npp_memory"]
        + c["lst_mean"] * z["lst_mean"]
        + c["wetness"] * z["wetness"]
        + c["lai_heterogeneity"] * z["lai_heterogeneity"]
        + c["npp_trend"] * z["npp_trend"]
        + c["elevation_x_wetness"] * z["elevation"] * z["wetness"]
    )
    peat = _sigmoid(5.0 * (z["wetness"] - 1.5 * tanh_tpi - params["peat_threshold"]))
    raw = np.exp(params["mu"] + s + params["peat_weight"] * peat)
    return OC_SATURATION * -np.expm1(-raw / OC_SATURATION)


def _peat_index(z_wet: NDArray[np.float64], z_tpi: NDArray[np.float64]) -> NDArray[np.float64]:
    return z_wet - 1.5 * np.tanh(z_tpi)


def r2_ceiling(observed: NDArray[np.float64], truth: NDArray[np.float64]) -> float:
    """R² (1 - SSE/SST) of the noise-free truth as predictor: the best any model can score here."""
    sse = float(np.sum((observed - truth) ** 2))
    sst = float(np.sum((observed - observed.mean()) ** 2))
    return 1.0 - sse / sst


# --------------------------------------------------------------------------------------------------- writing
def _write_raster(
    path: Path, data: NDArray[np.float64], grid: Grid, band: str, units: str, title: str, year: int | None
) -> None:
    """float32 tiled deflate GeoTIFF with nodata, band description and unit tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.where(np.isnan(data), NODATA, data).astype(np.float32)
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": 1,
        "width": grid.width,
        "height": grid.height,
        "crs": f"EPSG:{CRS_EPSG}",
        "transform": grid.transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)
        dst.set_band_description(1, band)
        dst.set_band_unit(1, units)
        dst.update_tags(1, units=units, long_name=title)
        tags = {"band": band, "units": units, "source": f"socmap synth {__version__}"}
        if year is not None:
            tags["year"] = str(year)
        dst.update_tags(**tags)


def _cut_windows(
    arr: NDArray[np.float64], rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.float32]:
    """[N, 25] float32 windows (as written to disk, nodata as NaN) around (rows, cols)."""
    h = WINDOW // 2
    offsets = np.arange(-h, h + 1)
    rr = rows[:, None, None] + offsets[None, :, None]
    cc = cols[:, None, None] + offsets[None, None, :]
    return arr[rr, cc].astype(np.float32).reshape(rows.size, WINDOW * WINDOW)


@dataclass
class SynthResult:
    """What :func:`synthesize` wrote."""

    out: Path
    n_locations: int
    n_samples: int
    n_rasters: int
    width: int
    height: int
    r2_ceiling: float
    seconds: float


def synthesize(  # noqa: PLR0915  (one linear recipe whose steps share the RNG stream; splitting it would hide the order)
    out: str | Path,
    resolution: float = 1000.0,
    seed: int = 0,
    n_locations: int = 5000,
    region: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SynthResult:
    """Write the synthetic data set to ``out`` (see the module docstring); deterministic for ``seed``.

    The folder is built under a temporary name and renamed when complete, so it is never half-written.
    """
    started = time.perf_counter()
    if resolution < 30 or resolution > 5000:
        raise InputError(
            f"--resolution {resolution}: expected metres between 30 and 5000 (e.g. 1000, 250, 100)"
        )
    if n_locations < 50:
        raise InputError(f"--n-locations {n_locations}: expected at least 50")
    say = progress or (lambda _msg: None)
    check_output_dir(out, overwrite, marker="truth.json")  # fail before minutes of work, not after
    region_4326 = load_region(region)
    region_m = to_crs(region_4326, f"EPSG:{CRS_EPSG}")
    grid = Grid.around(region_m.bounds, resolution, MARGIN_M)
    lakes = _make_lakes(seed, region_m)
    say(f"grid {grid.width} x {grid.height} px at {resolution:g} m")
    land = Landscape(seed, grid, lakes)

    locs = _make_locations(seed, n_locations, region_4326, region_m, lakes)
    to_ll = Transformer.from_crs(f"EPSG:{CRS_EPSG}", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(locs.x, locs.y)
    locs.lon, locs.lat = np.round(lon, 6), np.round(lat, 6)
    # The truth must use exactly the pixel a user finds from the written lon/lat.
    from_ll = Transformer.from_crs("EPSG:4326", f"EPSG:{CRS_EPSG}", always_xy=True)
    wx, wy = from_ll.transform(locs.lon, locs.lat)
    rows, cols = grid.pixel_of(np.asarray(wx), np.asarray(wy))
    centre_ok = ~land.lake[rows, cols]
    keep = np.flatnonzero(centre_ok)  # a point beside a lake whose pixel centre is water: not a soil sample
    locs = Locations(
        locs.pointid[keep], locs.source[keep], locs.x[keep], locs.y[keep], locs.lon[keep], locs.lat[keep]
    )
    rows, cols = rows[keep], cols[keep]

    years = list(range(FIRST_YEAR, LAST_YEAR + 1))
    n_rasters = 0
    with atomic_dir(out, overwrite=overwrite, marker="truth.json") as tmp:
        cov = tmp / "covariates"
        elev_units, elev_title = STATIC_BANDS["Elevation"]
        _write_raster(
            cov / "static" / "Elevation.tif", land.elevation, grid, "Elevation", elev_units, elev_title, None
        )
        n_rasters += 1
        elev_win = _cut_windows(land.elevation, rows, cols)
        win = {b: np.full((len(years), rows.size, WINDOW * WINDOW), np.nan, np.float32) for b in YEARLY_BANDS}
        for ti, year in enumerate(years):
            say(f"year {year}")
            bands = land.year(year)
            for band, data in bands.items():
                if band == GAP_BAND and year in GAP_YEARS:
                    continue
                units, title = YEARLY_BANDS[band]
                _write_raster(cov / "yearly" / band / f"{year}.tif", data, grid, band, units, title, year)
                n_rasters += 1
                win[band][ti] = _cut_windows(data, rows, cols)

        visits = _visit_years(seed, locs.source)
        loc_index = np.concatenate([np.full(v.size, i) for i, v in enumerate(visits)])
        sample_year = np.concatenate(visits)
        hist = (sample_year - FIRST_YEAR)[:, None] + np.arange(-HISTORY + 1, 1)[None, :]  # oldest first

        def history(band: str) -> NDArray[np.float32]:
            return win[band][hist, loc_index[:, None]]  # [N, HISTORY, 25]

        feats = truth_features(
            elev_win[loc_index],
            history("LAI"),
            history("LST"),
            history("MODIS_NPP"),
            history("SoilEvaporation"),
            history("TotalEvapotranspiration"),
        )
        params = _fit_truth_params(feats)
        truth = soc_truth(feats, params)
        noise_rng = _rng(seed, "noise")
        multiplier = np.exp(NOISE_SIGMA_LOG * noise_rng.standard_normal(truth.size) - NOISE_SIGMA_LOG**2 / 2)
        observed = np.clip(np.round(truth * multiplier, 1), 0.1, OC_LAB_MAX)  # lab reports 0.1 g/kg

        date_rng = _rng(seed, "dates")
        day_of_season = date_rng.integers(0, 214, truth.size)  # 1 April .. 31 October
        dates = pd.to_datetime([f"{y}-04-01" for y in sample_year]) + pd.to_timedelta(day_of_season, unit="D")
        samples = pd.DataFrame(
            {
                "POINTID": locs.pointid[loc_index],
                "GPS_LAT": locs.lat[loc_index],
                "GPS_LONG": locs.lon[loc_index],
                "year": sample_year,
                "survey_date": dates.strftime("%Y-%m-%d"),
                "OC": observed,
            }
        )
        order = np.lexsort((samples["year"].to_numpy(), samples["POINTID"].to_numpy()))
        samples = samples.iloc[order].reset_index(drop=True)
        truth_table = pd.DataFrame(
            {
                "POINTID": locs.pointid[loc_index],
                "year": sample_year,
                "source": locs.source[loc_index],
                "OC": observed,
                "OC_truth": truth,
                "noise": observed - truth,
                **{f"feature_{k}": v for k, v in feats.items()},
            }
        ).iloc[order]
        samples.to_csv(tmp / "samples.csv", index=False)
        truth_table.to_csv(tmp / "truth.csv", index=False, float_format="%.10g")
        # the written truth (10 significant digits) is what the ceiling is computed from
        written_truth = pd.read_csv(tmp / "truth.csv")["OC_truth"].to_numpy()
        obs = truth_table["OC"].to_numpy()
        capped = obs <= 150.0
        ceiling = r2_ceiling(obs, written_truth)
        info = {
            "generator": f"socmap synth {__version__}",
            "seed": seed,
            "resolution_m": resolution,
            "crs": f"EPSG:{CRS_EPSG}",
            "grid": {"x0": grid.x0, "y_top": grid.y_top, "width": grid.width, "height": grid.height},
            "nodata": NODATA,
            "bands": {"static": STATIC_BANDS, "yearly": YEARLY_BANDS},
            "years": [FIRST_YEAR, LAST_YEAR],
            "sample_years": [SAMPLE_FIRST_YEAR, SAMPLE_LAST_YEAR],
            "missing": {GAP_BAND: list(GAP_YEARS)},
            "lakes": len(lakes.cx),
            "history_years": HISTORY,
            "window": WINDOW,
            "n_locations": int(locs.pointid.size),
            "n_samples": int(truth.size),
            "n_samples_by_source": {s: int((truth_table["source"] == s).sum()) for s in ("LUCAS", "agency")},
            "noise": {
                "kind": "multiplicative log-normal, mean 1",
                "sigma_log": NOISE_SIGMA_LOG,
                "rounding": 0.1,
                "clip": [0.1, OC_LAB_MAX],
            },
            "truth": params,
            "oc_summary": {
                "median": float(np.median(obs)),
                "mean": float(obs.mean()),
                "p99": float(np.quantile(obs, 0.99)),
                "n_above_150": int((~capped).sum()),
            },
            "r2_ceiling": ceiling,
            "r2_ceiling_max_oc_150": r2_ceiling(obs[capped], written_truth[capped]),
            "signal_variance_ratio": float(np.var(written_truth) / np.var(obs)),
            "r2_ceiling_definition": "1 - sum((OC - OC_truth)^2) / sum((OC - mean OC)^2): the validation R^2 "
            "of a perfect model; signal_variance_ratio = var(OC_truth) / var(OC)",
        }
        write_json(tmp / "truth.json", info)
        (tmp / "region.geojson").write_text(
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [
                        {
                            "type": "Feature",
                            "properties": {"name": "region"},
                            "geometry": shapely.geometry.mapping(region_4326),
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
    return SynthResult(
        out=Path(out),
        n_locations=int(locs.pointid.size),
        n_samples=int(truth.size),
        n_rasters=n_rasters,
        width=grid.width,
        height=grid.height,
        r2_ceiling=ceiling,
        seconds=time.perf_counter() - started,
    )


def _fit_truth_params(feats: dict[str, NDArray[np.float64]]) -> dict[str, Any]:
    """Standardisation constants, peat threshold and intercept so the median truth is ~20 g/kg."""
    mean = {k: float(np.mean(v)) for k, v in feats.items()}
    sd = {k: float(np.std(v)) for k, v in feats.items()}
    params: dict[str, Any] = {
        "feature_mean": mean,
        "feature_sd": sd,
        "coefficients": dict(TRUTH_COEFFICIENTS),
        "npp_memory_weights": NPP_MEMORY_WEIGHTS.tolist(),
        "peat_weight": PEAT_WEIGHT,
        "mu": 0.0,
    }
    z_wet = (feats["wetness"] - mean["wetness"]) / sd["wetness"]
    z_tpi = (feats["tpi"] - mean["tpi"]) / sd["tpi"]
    params["peat_threshold"] = float(np.quantile(_peat_index(z_wet, z_tpi), PEAT_QUANTILE))
    params["mu"] = float(np.log(TARGET_MEDIAN_OC) - np.log(np.median(soc_truth(feats, params))))
    return params


def known_r2_ceiling(samples_path: Path, samples: pd.DataFrame, rows: NDArray[np.int64]) -> float | None:
    """Best possible R² of the samples ``rows`` when the data set comes with a known truth (synthetic data).

    Reads ``truth.csv`` beside ``samples_path`` (written by :func:`synthesize`); None for real data sets or
    fewer than two rows.
    """
    from socmap.metrics import regression_metrics

    truth_path = Path(samples_path).parent / "truth.csv"
    marker = truth_path.with_suffix(".json")  # written with truth.csv: a user's own truth.csv is not ours
    if not (truth_path.is_file() and marker.is_file()) or np.asarray(rows).size < 2:
        return None
    truth = pd.read_csv(truth_path, dtype={"POINTID": str})
    if not {"POINTID", "year", "OC_truth"} <= set(truth.columns) or "year" not in samples.columns:
        return None
    chosen = samples.iloc[np.asarray(rows)]
    merged = chosen.merge(
        truth, left_on=["sample_id", "year"], right_on=["POINTID", "year"], how="left", validate="one_to_one"
    )
    if merged["OC_truth"].isna().any():
        return None
    return float(regression_metrics(merged["target"], merged["OC_truth"])["r2"])
