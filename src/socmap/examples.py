"""Small, realistic example data sets outside Bavaria: a user's own data, as socmap expects it.

Each kind writes ``samples.csv``, ``covariates/<band>.tif`` (static GeoTIFFs with a CRS, a nodata value and a
few nodata pixels) and a ready ``config.yaml`` that lists only ``covariates.static`` (so no temporal bands and
one time step, the defaults that follow such a config). Covariates are smooth random fields with realistic
ranges; the target depends smoothly on them plus noise, so models learn something (R² about 0.4-0.7), but
nothing here is real data.

- ``nsw-ph``: soil pH (CaCl2) near Narrabri, New South Wales, Australia, on a UTM zone 55 South grid
  (EPSG:32755, 200 m); samples with projected ``easting``/``northing`` in EPSG:32755 and no dates; covariates
  elevation, topographic wetness index, a Landsat-like NIR reflectance (a few cloud-masked pixels) and
  radiometric potassium.
- ``nl-oc-percent``: organic carbon in % in the Gelderse Vallei, the Netherlands, on the Dutch national grid
  (EPSG:28992, Amersfoort / RD New, 250 m) with a lake; samples with WGS84 ``lat``/``lon`` and no dates;
  covariates elevation (m NAP), mean highest groundwater depth, NDVI and clay content.

``write_example(out, kind)`` writes one; ``socmap prepare/train/map`` then run on ``out/config.yaml`` as they
would on the user's own files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.transform import Affine

from socmap._atomic import atomic_dir
from socmap.errors import InputError

__all__ = ["EXAMPLE_KINDS", "ExampleResult", "write_example"]

NODATA = -9999.0
MARKER = "example.json"  # every example folder holds it; --overwrite replaces only such folders
FloatGrid = NDArray[np.float64]


@dataclass(frozen=True)
class _Kind:
    """What one example kind looks like: grid, covariates, target and how the samples give coordinates."""

    name: str
    description: str
    crs: str
    centre_lonlat: tuple[float, float]
    resolution: float
    shape: tuple[int, int]  # rows, cols
    target: str
    unit: str
    target_range: tuple[float, float]  # plausible values (the generated targets lie inside)
    lat_lon_columns: bool  # True: WGS84 lat/lon columns; False: projected x/y in ``crs``
    id_prefix: str
    log_noise: bool = False  # noise on the log scale (a skewed, positive target such as OC)


EXAMPLE_KINDS: dict[str, _Kind] = {
    "nsw-ph": _Kind(
        name="nsw-ph",
        description="soil pH (CaCl2) near Narrabri, NSW, Australia (synthetic)",
        crs="EPSG:32755",
        centre_lonlat=(149.78, -30.32),
        resolution=200.0,
        shape=(100, 120),
        target="pH_CaCl2",
        unit="pH",
        target_range=(4.0, 9.0),
        lat_lon_columns=False,
        id_prefix="NAR",
    ),
    "nl-oc-percent": _Kind(
        name="nl-oc-percent",
        description="soil organic carbon (%) in the Gelderse Vallei, the Netherlands (synthetic)",
        crs="EPSG:28992",
        centre_lonlat=(5.55, 52.08),
        resolution=250.0,
        shape=(80, 100),
        target="OC",
        unit="%",
        target_range=(0.5, 8.0),
        lat_lon_columns=True,
        id_prefix="GV",
        log_noise=True,
    ),
}


@dataclass(frozen=True)
class ExampleResult:
    """What :func:`write_example` wrote.

    Args:
        out: the example folder.
        config: its ``config.yaml`` (ready for ``socmap prepare/train/cv --config``).
        samples: its ``samples.csv``.
        covariates: the GeoTIFFs, one per band.
        kind: the example kind.
        crs: the rasters' CRS (e.g. ``EPSG:32755``).
        target: the target column.
        unit: the target's unit.
        target_range: the range the targets lie in.
        n_samples: rows of ``samples.csv``.
        description: one line on what the data set imitates.
    """

    out: Path
    config: Path
    samples: Path
    covariates: list[Path]
    kind: str
    crs: str
    target: str
    unit: str
    target_range: tuple[float, float]
    n_samples: int
    description: str


# ------------------------------------------------------------------------------------------------ fields
def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> FloatGrid:
    """A standardised (mean 0, sd 1) Gaussian random field with correlation length ``sigma`` pixels."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return np.asarray((field - field.mean()) / field.std(), np.float64)


def _ramp(shape: tuple[int, int], angle_deg: float) -> FloatGrid:
    """A linear trend across the grid from -1 to 1 along ``angle_deg`` (0: west to east)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    a = np.deg2rad(angle_deg)
    t = np.cos(a) * cols / max(shape[1] - 1, 1) - np.sin(a) * rows / max(shape[0] - 1, 1)
    return np.asarray(2 * (t - t.min()) / (t.max() - t.min()) - 1, np.float64)


def _z(values: FloatGrid) -> FloatGrid:
    finite = values[np.isfinite(values)]
    return (values - finite.mean()) / finite.std()


Covariates = dict[str, FloatGrid]
Truth = Callable[[Covariates], FloatGrid]


def _nsw(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[Covariates, Truth]:
    """Narrabri: the Namoi floodplain (flat, wet, alkaline grey vertosols) rising to sandy uplands (acid)."""
    relief = _ramp(shape, 30.0) + 0.45 * _smooth(rng, shape, 12) + 0.12 * _smooth(rng, shape, 3)
    elevation = 215.0 + 55.0 * (relief - relief.min())  # m a.s.l., about 215..390
    local = _z(relief - _smooth_like(relief, 6))  # valleys negative
    twi = np.clip(9.0 - 1.6 * _z(relief) - 1.2 * local + 0.6 * _smooth(rng, shape, 4), 3.0, 18.0)
    landsat_b5 = np.clip(0.26 + 0.05 * _smooth(rng, shape, 8) - 0.02 * _z(twi), 0.08, 0.5)
    landsat_b5[rng.random(shape) < 0.004] = np.nan  # a few cloud-masked pixels
    landsat_b5[40:44, 70:75] = np.nan  # and a small cloud
    gamma_k = np.clip(1.3 - 0.35 * _z(relief) + 0.3 * _smooth(rng, shape, 10), 0.2, 2.8)  # % K
    cov = {"elevation": elevation, "twi": twi, "landsat_b5": landsat_b5, "gamma_k": gamma_k}

    def truth(c: Covariates) -> FloatGrid:
        lowland = -_z(c["elevation"])
        value = 6.4 + 0.5 * lowland + 0.2 * _z(c["twi"]) + 0.2 * _z(c["gamma_k"])
        return value + 0.2 * np.tanh(lowland)  # a gentle plateau of alkaline clays

    return cov, truth


def _nl(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[Covariates, Truth]:
    """Gelderse Vallei: a wet peat-and-clay valley (high OC) between sandy ice-pushed ridges (low OC)."""
    ridge = np.abs(_ramp(shape, 0.0)) + 0.35 * _smooth(rng, shape, 10) + 0.1 * _smooth(rng, shape, 3)
    elevation = -1.0 + 14.0 * (ridge - ridge.min())  # m NAP, about -1..25
    gwt_depth = np.clip(0.25 + 0.09 * (elevation + 1.0) + 0.15 * _smooth(rng, shape, 5), 0.05, 4.0)  # m
    ndvi = np.clip(0.72 - 0.05 * _z(elevation) + 0.06 * _smooth(rng, shape, 6), 0.2, 0.95)
    clay = np.clip(18.0 - 6.0 * _z(elevation) + 4.0 * _smooth(rng, shape, 8), 2.0, 55.0)  # %
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    lake = ((rows - 0.62 * shape[0]) / 4.0) ** 2 + ((cols - 0.42 * shape[1]) / 6.0) ** 2 <= 1.0
    cov = {"elevation": elevation, "gwt_depth": gwt_depth, "ndvi": ndvi, "clay": clay}
    for band in cov.values():
        band[lake] = np.nan
    cov["ndvi"][rng.random(shape) < 0.003] = np.nan

    def truth(c: Covariates) -> FloatGrid:
        log_oc = 0.8 - 0.4 * _z(c["gwt_depth"]) + 0.2 * _z(c["clay"]) - 0.08 * _z(c["ndvi"])
        return np.exp(log_oc)

    return cov, truth


def _smooth_like(values: FloatGrid, sigma: float) -> FloatGrid:
    from scipy.ndimage import gaussian_filter

    return np.asarray(gaussian_filter(values, sigma, mode="reflect"), np.float64)


BUILDERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], tuple[Covariates, Truth]]] = {
    "nsw-ph": _nsw,
    "nl-oc-percent": _nl,
}


# ---------------------------------------------------------------------------------------------- writing
def _grid(kind: _Kind) -> Affine:
    """The grid's transform: centred on the kind's lon/lat, snapped to whole pixels."""
    x, y = Transformer.from_crs("EPSG:4326", kind.crs, always_xy=True).transform(*kind.centre_lonlat)
    res, (rows, cols) = kind.resolution, kind.shape
    left = round((x - cols * res / 2) / res) * res
    top = round((y + rows * res / 2) / res) * res
    return Affine(res, 0.0, left, 0.0, -res, top)


def _write_raster(path: Path, values: FloatGrid, crs: str, transform: Affine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": 1,
        "width": values.shape[1],
        "height": values.shape[0],
        "crs": crs,
        "transform": transform,
        "nodata": NODATA,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.where(np.isfinite(values), values, NODATA).astype(np.float32), 1)


def _samples(
    kind: _Kind, cov: Covariates, truth: Truth, transform: Affine, rng: np.random.Generator, n: int
) -> pd.DataFrame:
    """``n`` samples at random places (all bands valid at the pixel, 2 px from the edge), as written."""
    rows_n, cols_n = kind.shape
    target = truth(cov)
    valid = np.all([np.isfinite(v) for v in cov.values()], axis=0) & np.isfinite(target)
    scaled = np.log(target) if kind.log_noise else target
    noise_sd = 0.6 * float(np.nanstd(scaled))  # signal-to-noise: R² ceiling about 0.7
    ids: list[str] = []
    xs: list[float] = []
    ys: list[float] = []
    values: list[float] = []
    to_grid = Transformer.from_crs("EPSG:4326", kind.crs, always_xy=True)
    to_ll = Transformer.from_crs(kind.crs, "EPSG:4326", always_xy=True)
    while len(ids) < n:
        col, row = rng.uniform(2, cols_n - 2), rng.uniform(2, rows_n - 2)
        x, y = transform @ (col, row)
        if kind.lat_lon_columns:  # the pixel a user finds from the written (rounded) lon/lat
            lon, lat = to_ll.transform(x, y)
            x, y = round(lon, 6), round(lat, 6)
            gx, gy = to_grid.transform(x, y)
        else:
            x, y = round(x, 1), round(y, 1)
            gx, gy = x, y
        c, r = (int(np.floor(v)) for v in ~transform @ (gx, gy))
        if not valid[r, c]:
            continue
        low, high = kind.target_range
        noisy = scaled[r, c] + rng.normal(0.0, noise_sd)
        value = float(np.clip(np.exp(noisy) if kind.log_noise else noisy, low, high))
        ids.append(f"{kind.id_prefix}-{len(ids) + 1:04d}")
        xs.append(x)
        ys.append(y)
        values.append(round(value, 2))
    if kind.lat_lon_columns:
        return pd.DataFrame({"sample_id": ids, "lat": ys, "lon": xs, kind.target: values})
    return pd.DataFrame({"sample_id": ids, "easting": xs, "northing": ys, kind.target: values})


def _config_text(kind: _Kind, bands: list[str]) -> str:
    """The example's config.yaml: only what differs from socmap's defaults, with comments."""
    if kind.lat_lon_columns:
        coords = "  lat: lat                # WGS84 degrees\n  lon: lon\n"
    else:
        coords = f"  x: easting              # projected coordinates in samples.crs\n  y: northing\n  crs: {kind.crs}\n"
    return (
        f"# {kind.description}; written by socmap.examples.write_example(out, {kind.name!r}).\n"
        "# Relative paths are resolved against this file's folder.\n"
        f"name: {kind.name}\n"
        "samples:\n"
        "  path: samples.csv\n"
        "  id: sample_id\n"
        f"{coords}"
        f"  target: {kind.target}\n"
        f'  target_unit: "{kind.unit}"\n'
        "  # no year/date column: the covariates are static, so the samples need no time\n"
        "covariates:\n"
        "  root: covariates\n"
        f"  static: [{', '.join(bands)}]   # static only: no temporal bands, windows.time_steps 1\n"
        '  static_pattern: "{band}.tif"\n'
    )


def write_example(
    out: str | Path, kind: str, seed: int = 0, n_samples: int = 150, overwrite: bool = False
) -> ExampleResult:
    """Write an example data set (samples.csv, covariates/<band>.tif, config.yaml) into ``out``.

    The folder is built under a temporary name and renamed when complete; the same kind and seed give the
    same files.

    Args:
        out: the folder to create (an existing non-empty folder is refused unless ``overwrite``).
        kind: one of :data:`EXAMPLE_KINDS` (``nsw-ph``, ``nl-oc-percent``).
        seed: seed of the covariates, the sample places and the noise.
        n_samples: rows of ``samples.csv`` (20..5000).
        overwrite: replace an existing example folder.
    """
    if kind not in EXAMPLE_KINDS:
        raise InputError(f"example kind {kind!r}: expected one of {', '.join(EXAMPLE_KINDS)}")
    if not 20 <= n_samples <= 5000:
        raise InputError(f"n_samples {n_samples}: expected 20..5000")
    spec, target = EXAMPLE_KINDS[kind], Path(out)
    rng = np.random.default_rng(seed)
    cov, truth = BUILDERS[kind](rng, spec.shape)
    transform = _grid(spec)
    samples = _samples(spec, cov, truth, transform, rng, n_samples)
    with atomic_dir(target, overwrite=overwrite, marker=MARKER) as tmp:
        for band, values in cov.items():
            _write_raster(tmp / "covariates" / f"{band}.tif", values, spec.crs, transform)
        samples.to_csv(tmp / "samples.csv", index=False)
        (tmp / "config.yaml").write_text(_config_text(spec, list(cov)), encoding="utf-8")
        about = {"kind": kind, "seed": seed, "n_samples": n_samples, "description": spec.description}
        (tmp / MARKER).write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
    return ExampleResult(
        out=target,
        config=target / "config.yaml",
        samples=target / "samples.csv",
        covariates=[target / "covariates" / f"{band}.tif" for band in cov],
        kind=kind,
        crs=spec.crs,
        target=spec.target,
        unit=spec.unit,
        target_range=spec.target_range,
        n_samples=n_samples,
        description=spec.description,
    )
