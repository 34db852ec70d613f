"""Soil carbon stocks (t C/ha) from a mapped carbon concentration, and regional totals (Tg C) with intervals.

Per pixel, for a depth interval of ``d`` cm::

    stock [t/ha] = conc [g/kg] x BD [g/cm3] x d [cm] x (1 - CF) x 0.1

(1 ha x d cm = 1e8 d cm3 of soil weighing BD x d x 100 t, of which the fine earth share 1 - CF (volumetric
coarse fragments) holds conc / 1000 of carbon). A concentration in % is first converted to g/kg (x 10); any
other unit (pH, cmol/kg, ...) is refused: it is not a carbon concentration.

Uncertainty by Monte Carlo (fixed seed, ``draws`` per pixel): the concentration follows a split normal with the
map's median ``Q0.5`` and its ``Q0.05``/``Q0.95`` as 5 %/95 % quantiles (or the levels of another nominal
interval, e.g. ``Q0.1``/``Q0.9``; so the map's interval, asymmetric or not, is reproduced exactly); BD and CF are normal with the given mean and sd (constants or rasters), truncated
to BD > 0 and 0 <= CF < 1; the three are independent. The stock COG holds ``mean``, ``Q0.05``, ``Q0.95`` and
``sd`` of the draws (``mean`` analytically: the product of the factors' means, exact for independent factors).

Totals: Tg C = sum over the zone's mapped pixels of stock x pixel area (ha) / 1e6. Pixel errors are spatially
correlated (the same covariates, the same model, the same BD assumption), so an interval from independent pixels
(``sqrt(sum sd^2)``) is far too narrow. The reported interval assumes full positive dependence (comonotone
errors), where quantiles add exactly: ``total_Q05 = sum(Q0.05 x area)``; it is an upper bound of the width. The
independent-pixel width is given beside it as a lower bound; the truth lies between.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject
from rasterio.windows import Window

from socmap._atomic import atomic_file
from socmap.errors import InputError, OutputError

__all__ = [
    "STOCK_BANDS",
    "Source",
    "StockResult",
    "band_index",
    "conc_factor",
    "interval_bands",
    "parse_depth",
    "parse_source",
    "pixel_area_ha",
    "stock_map",
    "zone_totals",
]

STOCK_BANDS = ("mean", "Q0.05", "Q0.95", "sd")
NODATA = -9999.0
Z95 = 1.6448536269514722  # standard normal 95 % quantile
STRIP = 256  # rows per strip: memory is STRIP x width x draws
UNITS_TO_G_PER_KG = {"g/kg": 1.0, "gkg-1": 1.0, "g/kgsoil": 1.0, "mg/g": 1.0, "%": 10.0, "percent": 10.0}
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Source:
    """A per-pixel input: a constant or a raster (reprojected onto the map's grid, bilinear)."""

    value: float | None = None
    path: Path | None = None

    def describe(self) -> str:
        """The constant, or the raster's path."""
        return f"{self.value:g}" if self.path is None else str(self.path)


def parse_source(text: str | float, option: str) -> Source:
    """A constant (a number) or a raster file (a path that exists) for ``option``.

    Args:
        text: the option's value.
        option: its name in messages, e.g. ``--bd``.
    """
    try:
        value = float(text)
    except ValueError:
        path = Path(str(text))
        if not path.is_file():
            raise InputError(f"{option} {text!r}: expected a number or an existing raster file") from None
        return Source(path=path)
    if not math.isfinite(value):
        raise InputError(f"{option} {text!r}: expected a finite number")
    return Source(value=value)


def parse_depth(text: str) -> tuple[float, float]:
    """``TOP-BOTTOM`` in cm (e.g. ``0-30``), or one number (the thickness from 0).

    Args:
        text: the ``--depth`` value.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:-\s*(\d+(?:\.\d*)?))?\s*(cm)?\s*", text)
    if match is None:
        raise InputError(f"--depth {text!r}: expected TOP-BOTTOM in cm, e.g. 0-30")
    top, bottom = (0.0, float(match[1])) if match[2] is None else (float(match[1]), float(match[2]))
    if bottom <= top:
        raise InputError(f"--depth {text!r}: expected TOP < BOTTOM (cm)")
    return top, bottom


def conc_factor(unit: str, target: str = "the map") -> float:
    """The factor that turns a concentration in ``unit`` into g/kg (g/kg: 1, %: 10); other units are refused.

    Args:
        unit: the map's unit (``unit`` tag) or ``--unit``.
        target: the mapped property, for the message.
    """
    key = unit.replace(" ", "").lower()
    if key not in UNITS_TO_G_PER_KG:
        raise InputError(
            f"{target} is in {unit!r}, which is not a carbon concentration: a stock needs g/kg or % "
            "(pass --unit if the map's unit tag is wrong)"
        )
    return UNITS_TO_G_PER_KG[key]


@dataclass
class StockResult:
    """What :func:`stock_map` wrote.

    Args:
        out: the stock COG (bands mean, Q0.05, Q0.95, sd in t/ha).
        totals: the totals table (CSV) or None.
        table: the totals (one row per zone).
        depth: (top, bottom) in cm.
        n_pixels: mapped pixels.
        draws: Monte Carlo draws per pixel.
    """

    out: Path
    totals: Path | None
    table: pd.DataFrame
    depth: tuple[float, float]
    n_pixels: int
    draws: int


def pixel_area_ha(transform: Affine, crs: Any, row0: int, rows: int) -> FloatArray:
    """[rows] area in ha of a pixel in each grid row (projected: constant; geographic: on the WGS84 ellipsoid).

    Args:
        transform: the grid's affine transform.
        crs: its rasterio CRS.
        row0, rows: the first grid row and the number of rows.
    """
    if crs is None:
        raise InputError("the map has no CRS: pixel areas (and so totals) are unknown")
    if not crs.is_geographic:
        metres = float(crs.linear_units_factor[1])
        return np.full(rows, abs(transform.a * transform.e - transform.b * transform.d) * metres**2 / 1e4)
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    t = transform
    areas = np.empty(rows)
    for i in range(rows):
        top, bottom = t.f + t.e * (row0 + i), t.f + t.e * (row0 + i + 1)
        area, _ = geod.polygon_area_perimeter([t.c, t.c + t.a, t.c + t.a, t.c], [top, top, bottom, bottom])
        areas[i] = abs(area) / 1e4
    return areas


def band_index(src: Any, name: str) -> int:
    """1-based index of the band tagged ``name`` (socmap maps tag every band), else by description."""
    for i in range(1, src.count + 1):
        if src.tags(i).get("name") == name or (src.descriptions[i - 1] or "").split(":")[0] == name:
            return i
    raise InputError(
        f"map {src.name}: no band {name!r}; expected a socmap map (bands mean, Q0.05, Q0.5, Q0.95)"
    )


def interval_bands(src: Any) -> tuple[str, str, float]:
    """The lower and upper interval bands of a socmap map and the lower level: ``("Q0.05", "Q0.95", 0.05)``
    for the default 90 % interval, ``("Q0.1", "Q0.9", 0.1)`` for ``uncertainty.nominal: 0.8``.

    Args:
        src: the open map.
    """
    names = [src.tags(i).get("name", "") for i in range(1, src.count + 1)]
    levels = sorted(
        float(m[1])
        for name in names
        if (m := re.fullmatch(r"Q(0\.\d+)", name)) is not None and float(m[1]) != 0.5
    )
    if len(levels) < 2:
        raise InputError(
            f"map {src.name}: no interval bands (Q0.05 / Q0.95); expected a socmap map with an interval"
        )
    return f"Q{levels[0]:g}", f"Q{levels[-1]:g}", levels[0]


def _strip(source: Source, dst: Any, window: Window, resampling: Resampling) -> FloatArray:
    """The source on the map's grid for one strip (NaN = nodata)."""
    h, w = int(window.height), int(window.width)
    if source.path is None:
        return np.full((h, w), float(source.value or 0.0))
    out = np.full((h, w), np.nan, np.float64)
    with rasterio.open(source.path) as src:
        reproject(
            rasterio.band(src, 1),
            out,
            src_nodata=src.nodata,
            dst_transform=dst.transform @ Affine.translation(window.col_off, window.row_off),
            dst_crs=dst.crs,
            dst_nodata=np.nan,
            resampling=resampling,
        )
    return out


@dataclass(frozen=True)
class _Inputs:
    """Stock inputs: bulk density and coarse fragments (mean and sd each), depth and concentration unit."""

    bd: Source
    bd_sd: Source
    cf: Source
    cf_sd: Source
    thickness: float
    factor: float
    draws: int
    seed: int
    z: float = Z95  # the normal quantile of the map's upper interval level (1.645 for Q0.95)


def _draw_stocks(
    conc: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
    bd: FloatArray,
    cf: FloatArray,
    inputs: _Inputs,
    rng: Any,
) -> FloatArray:
    """[4, n] mean, Q0.05, Q0.95 and sd (t/ha) of the stocks of n pixels: the mean analytically (the mean of a
    product of independent factors is the product of their means: exact, but for the truncation of BD and CF
    at their bounds), the quantiles and sd from Monte Carlo draws.

    Args:
        conc: (mean, Q0.05, Q0.5, Q0.95) of the concentration in g/kg.
        bd: [2, n] bulk density mean and sd (g/cm3).
        cf: [2, n] coarse fragment fraction mean and sd.
        inputs: the depth and draws.
        rng: the random generator.
    """
    mean, lo, med, hi = conc
    n, k = med.size, inputs.draws
    z = rng.standard_normal((n, k))
    sd_lo, sd_hi = (med - lo) / inputs.z, (hi - med) / inputs.z
    c = np.maximum(med[:, None] + z * np.where(z < 0, sd_lo[:, None], sd_hi[:, None]), 0.0)
    b = np.maximum(bd[0][:, None] + bd[1][:, None] * rng.standard_normal((n, k)), 0.0)
    f = np.clip(cf[0][:, None] + cf[1][:, None] * rng.standard_normal((n, k)), 0.0, 1.0)
    stock = c * b * inputs.thickness * (1.0 - f) * 0.1
    q05, q95 = np.quantile(stock, [0.05, 0.95], axis=1)
    analytic = mean * bd[0] * inputs.thickness * (1.0 - cf[0]) * 0.1
    return np.stack([analytic, q05, q95, stock.std(axis=1)])


def _check_fractions(values: FloatArray, sd: FloatArray, option: str) -> None:
    """Refuse coarse fragments outside [0, 1) and negative sds, naming the option."""
    finite = values[np.isfinite(values)]
    if finite.size and (finite.min() < 0 or finite.max() >= 1):
        raise InputError(
            f"{option}: coarse fragments must be a volume fraction in [0, 1), got {finite.max():g}"
        )
    if np.nanmin(sd, initial=0.0) < 0:
        raise InputError(f"{option}-sd: expected a standard deviation >= 0")


def _stock_strip(src: Any, window: Window, bands: tuple[int, ...], inputs: _Inputs) -> NDArray[np.float32]:
    """[4, rows, cols] stock bands of one strip of the map (NaN = nodata)."""
    conc = [
        src.read(b, window=window, masked=True).astype(np.float64).filled(np.nan) * inputs.factor
        for b in bands
    ]
    bd = np.stack([_strip(s, src, window, Resampling.bilinear) for s in (inputs.bd, inputs.bd_sd)])
    cf = np.stack([_strip(s, src, window, Resampling.bilinear) for s in (inputs.cf, inputs.cf_sd)])
    _check_fractions(cf[0], cf[1], "--cf")
    if np.nanmin(bd[1], initial=0.0) < 0 or np.nanmin(bd[0], initial=1.0) <= 0:
        raise InputError("--bd: expected a bulk density > 0 g/cm3 and an sd >= 0")
    ok = np.isfinite(np.stack(conc)).all(axis=0)
    ok &= np.isfinite(bd).all(axis=0) & np.isfinite(cf).all(axis=0)
    out = np.full((len(STOCK_BANDS), *ok.shape), np.nan, np.float32)
    if ok.any():
        rng = np.random.default_rng([inputs.seed, int(window.row_off)])
        values = _draw_stocks(
            (conc[0][ok], conc[1][ok], conc[2][ok], conc[3][ok]), bd[:, ok], cf[:, ok], inputs, rng
        )
        out[:, ok] = values
    return out


def stock_map(
    map_path: str | Path,
    out: str | Path,
    *,
    depth: tuple[float, float],
    bd: Source,
    bd_sd: Source = Source(0.0),
    cf: Source = Source(0.0),
    cf_sd: Source = Source(0.0),
    unit: str | None = None,
    draws: int = 200,
    seed: int = 0,
    zones: str | Path | None = None,
    zone_field: str | None = None,
    overwrite: bool = False,
) -> StockResult:
    """Write the stock COG of a socmap concentration map and, with ``zones``, the totals table beside it.

    Args:
        map_path: a ``socmap map`` COG (bands ``mean``, ``Q0.05``, ``Q0.5``, ``Q0.95``).
        out: the stock COG (``.tif``); totals go to ``<stem>_totals.csv``.
        depth: (top, bottom) in cm.
        bd, bd_sd: bulk density (g/cm3) and its sd: constants or rasters.
        cf, cf_sd: coarse fragments (volume fraction 0..1) and its sd.
        unit: the concentration's unit (None: the map's ``unit`` tag): g/kg or %.
        draws: Monte Carlo draws per pixel.
        seed: the draws' seed (the same seed gives the same map).
        zones: polygons (GeoJSON/GPKG; one total per feature) or a raster of zone codes (one per code);
            None: one total for the whole map.
        zone_field: the polygons' name column (default: the feature's row number).
        overwrite: replace existing outputs.
    """
    map_path, out = Path(map_path), Path(out)
    if not map_path.is_file():
        raise InputError(f"map {map_path} does not exist")
    if out.suffix.lower() not in {".tif", ".tiff"}:
        raise OutputError(f"out {out}: expected a GeoTIFF file name ending in .tif")
    totals_path = out.with_name(out.stem + "_totals.csv")
    for path in (out, totals_path):
        if path.exists() and not overwrite:
            raise OutputError(f"output {path} exists; pass --overwrite to replace it")
    if not 10 <= draws <= 100_000:
        raise InputError(f"--draws {draws}: expected 10..100000")
    with rasterio.open(map_path) as src:
        tags = src.tags()
        factor = conc_factor(unit or tags.get("unit", ""), f"map {map_path} ({tags.get('target', 'target')})")
        lower, upper, level = interval_bands(src)
        z = float(NormalDist().inv_cdf(1 - level))
        inputs = _Inputs(bd, bd_sd, cf, cf_sd, depth[1] - depth[0], factor, draws, seed, z)
        bands = tuple(band_index(src, name) for name in ("mean", lower, "Q0.5", upper))
        n_pixels = _write_stock(src, out, bands, inputs, depth, overwrite)
    table = zone_totals(out, zones, zone_field)
    with atomic_file(totals_path, "totals table") as tmp:
        table.to_csv(tmp, index=False)
    return StockResult(out, totals_path, table, depth, n_pixels, draws)


def _write_stock(
    src: Any,
    out: Path,
    bands: tuple[int, ...],
    inputs: _Inputs,
    depth: tuple[float, float],
    overwrite: bool,
) -> int:
    """Strip by strip into a tiled GeoTIFF, then a COG (atomically); returns the mapped pixels."""
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": len(STOCK_BANDS),
        "width": src.width,
        "height": src.height,
        "crs": src.crs,
        "transform": src.transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    n = 0
    mosaic = out.with_name(f".{out.name}.strips.tif")
    try:
        with rasterio.open(mosaic, "w", **profile) as dst:
            for row0 in range(0, src.height, STRIP):
                window = Window(0, row0, src.width, min(STRIP, src.height - row0))
                values = _stock_strip(src, window, bands, inputs)
                n += int(np.isfinite(values[0]).sum())
                dst.write(np.where(np.isfinite(values), values, NODATA).astype(np.float32), window=window)
            dst.descriptions = tuple(_descriptions(inputs, depth))
            dst.units = ("t/ha",) * len(STOCK_BANDS)
            dst.update_tags(**_stock_tags(src, inputs, depth))
            for i, name in enumerate(STOCK_BANDS, start=1):
                dst.update_tags(i, name=name)
        with atomic_file(out, "stock COG") as tmp:
            tmp.unlink()
            rasterio.shutil.copy(mosaic, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES")
    finally:
        mosaic.unlink(missing_ok=True)
    return n


def _descriptions(inputs: _Inputs, depth: tuple[float, float]) -> list[str]:
    """Band descriptions saying how each band was made."""
    what = f"SOC stock {depth[0]:g}-{depth[1]:g} cm (t/ha), {inputs.draws} Monte Carlo draws"
    return [
        f"mean: {what}: mean",
        f"Q0.05: {what}: 5 % quantile",
        f"Q0.95: {what}: 95 % quantile",
        f"sd: {what}: standard deviation",
    ]


def _stock_tags(src: Any, inputs: _Inputs, depth: tuple[float, float]) -> dict[str, str]:
    """Dataset tags: inputs, formula, depth and the source map."""
    return {
        "quantity": "soil organic carbon stock",
        "unit": "t/ha",
        "depth": f"{depth[0]:g}-{depth[1]:g} cm",
        "formula": "conc[g/kg] x BD[g/cm3] x depth[cm] x (1 - CF) x 0.1",
        "concentration_map": str(src.name),
        "concentration_factor_to_g_per_kg": f"{inputs.factor:g}",
        "bulk_density": f"{inputs.bd.describe()} +- {inputs.bd_sd.describe()} (sd) g/cm3",
        "coarse_fragments": f"{inputs.cf.describe()} +- {inputs.cf_sd.describe()} (sd) volume fraction",
        "draws": str(inputs.draws),
        "seed": str(inputs.seed),
        "year": src.tags().get("year", ""),
    }


def _zone_codes(
    zones: Path | None, field: str | None, dst: Any, window: Window
) -> tuple[NDArray[Any], list[str]]:
    """[n_zones, rows, cols] membership of one strip and the zone names (polygons: pixel centre inside)."""
    h, w = int(window.height), int(window.width)
    if zones is None:
        return np.ones((1, h, w), bool), ["all"]
    transform = dst.transform @ Affine.translation(window.col_off, window.row_off)
    if zones.suffix.lower() in {".tif", ".tiff", ".vrt"}:
        codes = np.full((h, w), np.nan)
        with rasterio.open(zones) as src:
            reproject(
                rasterio.band(src, 1),
                codes,
                src_nodata=src.nodata,
                dst_transform=transform,
                dst_crs=dst.crs,
                dst_nodata=np.nan,
                resampling=Resampling.nearest,
            )
        return codes, []
    frame = _read_polygons(zones, field, dst.crs)
    from rasterio.features import geometry_mask

    masks = [
        geometry_mask([geom], out_shape=(h, w), transform=transform, invert=True) for geom in frame.geometry
    ]
    return np.stack(masks) if masks else np.zeros((0, h, w), bool), [str(v) for v in frame["zone"]]


def _read_polygons(path: Path, field: str | None, crs: Any) -> Any:
    """The polygons in the map's CRS with a ``zone`` name column."""
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # any reader error (pyogrio, fiona, format) becomes one line naming the file
        raise InputError(f"--zones {path}: cannot read polygons ({str(exc).splitlines()[0]})") from None
    if frame.crs is None:
        raise InputError(f"--zones {path}: the polygons have no CRS")
    if field is not None and field not in frame.columns:
        raise InputError(
            f"--zone-field {field!r}: not a column of {path} ({', '.join(map(str, frame.columns))})"
        )
    frame = frame.to_crs(crs.to_wkt())
    frame["zone"] = frame[field].astype(str) if field is not None else [str(i) for i in range(len(frame))]
    return frame


def zone_totals(
    stock: str | Path, zones: str | Path | None = None, zone_field: str | None = None
) -> pd.DataFrame:
    """Totals (Tg C) of a stock COG per zone: sum of stock x pixel area over the zone's mapped pixels.

    Columns: zone, n_pixels (mapped), n_nodata (zone pixels without a stock), area_ha (mapped), mean_t_ha,
    total_Tg, total_Tg_Q05 / total_Tg_Q95 (full positive dependence of pixel errors: quantiles add; the widest
    interval), width_Tg_if_independent (2 x 1.645 x sqrt(sum (sd x area)^2): the narrowest, too narrow).

    Args:
        stock: a ``socmap stock`` COG.
        zones: polygons (GeoJSON/GPKG) or a zone-code raster; None: the whole map.
        zone_field: the polygons' name column.
    """
    zones_path = Path(zones) if zones is not None else None
    if zones_path is not None and not zones_path.is_file():
        raise InputError(f"--zones {zones_path} does not exist")
    sums: dict[str, FloatArray] = {}
    with rasterio.open(stock) as src:
        for row0 in range(0, src.height, STRIP):
            window = Window(0, row0, src.width, min(STRIP, src.height - row0))
            values = src.read(window=window, masked=True).astype(np.float64).filled(np.nan)
            area = pixel_area_ha(src.transform, src.crs, row0, int(window.height))[:, None]
            members, names = _zone_codes(zones_path, zone_field, src, window)
            if not names:  # a code raster: one zone per finite code
                codes = members
                names = [f"{c:g}" for c in np.unique(codes[np.isfinite(codes)])]
                members = (
                    np.stack([codes == float(n) for n in names])
                    if names
                    else np.zeros((0, *codes.shape), bool)
                )
            for name, inside in zip(names, members, strict=True):
                _accumulate(sums.setdefault(name, np.zeros(7)), values, area, inside)
    return _totals_frame(sums)


def _accumulate(acc: FloatArray, values: FloatArray, area: FloatArray, inside: NDArray[np.bool_]) -> None:
    """Add one strip of a zone: [n, n_nodata, area, mean*area, q05*area, q95*area, (sd*area)^2]."""
    ok = inside & np.isfinite(values[0])
    a = np.broadcast_to(area, ok.shape)[ok]
    acc += [
        ok.sum(),
        (inside & ~ok).sum(),
        a.sum(),
        (values[0][ok] * a).sum(),
        (values[1][ok] * a).sum(),
        (values[2][ok] * a).sum(),
        ((values[3][ok] * a) ** 2).sum(),
    ]


def _totals_frame(sums: dict[str, FloatArray]) -> pd.DataFrame:
    """The totals table from the accumulated sums (t -> Tg: / 1e6)."""
    rows = []
    for name, (n, n_nodata, area, total, q05, q95, var) in sums.items():
        rows.append(
            {
                "zone": name,
                "n_pixels": int(n),
                "n_nodata": int(n_nodata),
                "area_ha": area,
                "mean_t_ha": total / area if area > 0 else float("nan"),
                "total_Tg": total / 1e6,
                "total_Tg_Q05": q05 / 1e6,
                "total_Tg_Q95": q95 / 1e6,
                "width_Tg_if_independent": 2 * Z95 * math.sqrt(var) / 1e6,
            }
        )
    return pd.DataFrame(rows)
