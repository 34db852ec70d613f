"""Ingest: the sample table (CSV/XLSX/GPKG/Parquet, LUCAS-style columns) and the covariate raster stack.

Samples are cleaned with every drop counted by reason; rasters are discovered from file patterns, checked for
CRS and grid, and warped onto the working grid (rasterio WarpedVRT) where they differ.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import shapely
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT

from socmap.config import SocmapConfig
from socmap.coordinates import coordinate_bands
from socmap.errors import InputError
from socmap.region import load_region

__all__ = [
    "DROP_REASONS",
    "GridSpec",
    "RasterStack",
    "SampleTable",
    "discover_stack",
    "is_organic_carbon",
    "load_samples",
    "mask_and_scale",
    "parse_dates",
    "read_block",
    "read_table",
]

# Drop reasons, in the order they are applied (reported in this order).
DROP_REASONS = (
    "invalid_coordinates",
    "missing_target",
    "invalid_target",
    "below_min_target",
    "above_max_target",
    "invalid_time",
    "outside_year_range",
    "outside_region",
    "duplicate",
    "outside_rasters",
    "time_outside_covariates",
    "mostly_nodata",
)


# ------------------------------------------------------------------------------------------------- samples
@dataclass
class SampleTable:
    """Cleaned samples: one row per kept sample, the drops by reason and warnings for the user."""

    frame: pd.DataFrame
    n_input: int
    drops: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def drop(self, mask: NDArray[np.bool_] | pd.Series, reason: str) -> None:
        """Remove rows where ``mask`` is true, counting them under ``reason``."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.drops[reason] += int(mask.sum())
            self.frame = self.frame.loc[~mask].reset_index(drop=True)


def read_table(path: Path) -> pd.DataFrame:
    """Read a sample table by its suffix; vector files get lon/lat columns from their point geometry."""
    if not path.is_file():
        raise InputError(f"samples file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in {".csv", ".txt"}:
            return pd.read_csv(path, sep=None, engine="python")
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix in {".xlsx", ".xls"}:
            return pd.read_excel(path)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".gpkg", ".shp", ".geojson", ".fgb"}:
            import geopandas as gpd

            frame = gpd.read_file(path)
            if frame.crs is not None:
                frame = frame.to_crs(4326)
            out = pd.DataFrame(frame.drop(columns="geometry"))
            if frame.geometry.geom_type.eq("Point").all():
                out["__lon"], out["__lat"] = frame.geometry.x, frame.geometry.y
            return out
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"samples file {path} could not be read: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # readers raise library-specific types (pyogrio, openpyxl, pyarrow)
        raise InputError(f"samples file {path} could not be read: {type(exc).__name__}: {exc}") from None
    raise InputError(
        f"samples file {path}: unsupported type '{suffix}'; expected .csv, .xlsx, .gpkg or .parquet"
    )


def _pick(
    frame: pd.DataFrame, candidates: list[str] | str | None, what: str, path: Path, key: str
) -> str | None:
    if candidates is None:
        return None
    names = [candidates] if isinstance(candidates, str) else candidates
    for name in names:
        if name in frame.columns:
            return name
    if what:
        shown = ", ".join(map(str, frame.columns[:25]))
        raise InputError(
            f"samples file {path}: no {what} column (looked for {', '.join(names)}); columns are: {shown}; "
            f"set samples.{key} in the config"
        )
    return None


def load_samples(config: SocmapConfig) -> SampleTable:
    """Read and clean the sample table: coordinates to lon/lat, target, time label; drops counted by reason."""
    path = config.resolve(config.samples.path)
    raw = read_table(path)
    if raw.empty:
        raise InputError(f"samples file {path} has no rows")
    table = SampleTable(frame=pd.DataFrame({"source_row": np.arange(len(raw))}), n_input=len(raw))
    frame = table.frame
    frame["sample_id"] = _sample_ids(raw, config, path)
    frame["lon"], frame["lat"] = _lon_lat(raw, config, path, table.warnings)
    frame["target"], missing = _targets(raw, config, path)
    if config.samples.uncertainty is not None:
        column = config.samples.uncertainty
        if column not in raw.columns:
            _pick(raw, [column], "uncertainty", path, "uncertainty")
        frame["uncertainty"] = pd.to_numeric(raw[column], errors="coerce").to_numpy(np.float64)
    year, time_label = _times(raw, config, path)
    frame["year"] = year.to_numpy(np.float64)
    frame["time"] = time_label.to_numpy(dtype=object)
    _apply_filters(table, config, missing)
    _handle_duplicates(table, config.samples.duplicates, path)
    _check_units(table, config)
    if table.frame.empty:
        raise InputError(f"samples file {path}: no samples left after filters ({_drops_text(table.drops)})")
    return table


def _sample_ids(raw: pd.DataFrame, config: SocmapConfig, path: Path) -> NDArray[np.object_]:
    id_col = config.samples.id
    if id_col is not None and id_col not in raw.columns:
        raise InputError(
            f"samples file {path}: no id column '{id_col}'; set samples.id (or null to number the rows)"
        )
    ids = raw[id_col].astype(str) if id_col is not None else pd.Series(np.arange(len(raw)).astype(str))
    return ids.to_numpy(dtype=object)


def _lon_lat(
    raw: pd.DataFrame, config: SocmapConfig, path: Path, warn: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """WGS84 lon/lat of every row, from projected x/y (``samples.crs``) or lat/lon columns; coordinates that
    are not degrees (projected numbers read as lon/lat) are refused when most rows have them, else reported
    in ``warn`` (and dropped later as ``invalid_coordinates``)."""
    scfg = config.samples
    projected_input = scfg.x is not None or scfg.y is not None
    if projected_input:
        xcol = _pick(raw, scfg.x, "x", path, "x")
        ycol = _pick(raw, scfg.y, "y", path, "y")
        assert xcol is not None and ycol is not None
        names = (f"samples.x {xcol!r}", f"samples.y {ycol!r}")
    elif "__lon" in raw.columns and _pick(raw, scfg.lat, "", path, "lat") is None:
        xcol, ycol, names = "__lon", "__lat", ("point x", "point y")
    else:
        ycol = _pick(raw, scfg.lat, "latitude", path, "lat")
        xcol = _pick(raw, scfg.lon, "longitude", path, "lon")
        assert ycol is not None and xcol is not None
        names = (f"longitude {xcol!r}", f"latitude {ycol!r}")
    cx = pd.to_numeric(raw[xcol], errors="coerce").to_numpy(np.float64)
    cy = pd.to_numeric(raw[ycol], errors="coerce").to_numpy(np.float64)
    try:
        src_crs = ProjCRS.from_user_input(scfg.crs)
    except CRSError:
        raise InputError(f"samples.crs {scfg.crs!r} is not a known CRS (e.g. EPSG:4326)") from None
    if src_crs.to_epsg() == 4326:
        lon, lat = cx, cy
    else:
        tlon, tlat = Transformer.from_crs(src_crs, "EPSG:4326", always_xy=True).transform(cx, cy)
        lon, lat = np.asarray(tlon, np.float64), np.asarray(tlat, np.float64)
    _check_degrees(lon, lat, (cx, cy), names, projected_input, scfg.crs, path, warn)
    return lon, lat


def _check_degrees(
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    source: tuple[NDArray[np.float64], NDArray[np.float64]],
    names: tuple[str, str],
    projected_input: bool,
    crs: str,
    path: Path,
    warn: list[str],
) -> None:
    """Refuse (most rows) or report (some rows) coordinates that are not lon/lat degrees, saying where they
    fell (the columns' value ranges) and which config keys read projected coordinates."""
    given = np.isfinite(source[0]) & np.isfinite(source[1])
    bad = given & ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if not bad.any():
        return
    xs, ys = source[0][bad], source[1][bad]
    where = f"{names[0]} {xs.min():.8g}..{xs.max():.8g}, {names[1]} {ys.min():.8g}..{ys.max():.8g}"
    text = (
        f"{int(bad.sum())} of {int(given.sum())} rows have coordinates outside longitude -180..180 / "
        f"latitude -90..90 ({where})"
    )
    if bad.sum() <= 0.5 * given.sum():
        warn.append(f"{text}: dropped as invalid_coordinates")
        return
    if projected_input:
        hint = (
            f"they are not coordinates in samples.crs {crs}: set samples.crs to the CRS of samples.x / "
            "samples.y (e.g. EPSG:32755 for UTM zone 55S, EPSG:28992 for the Dutch RD grid)"
        )
    else:
        hint = (
            "these look like projected coordinates (e.g. metres), not degrees: set samples.x and samples.y "
            "to these columns and samples.crs to their CRS (e.g. EPSG:32755 for UTM zone 55S, EPSG:28992 for "
            "the Dutch RD grid)"
        )
    raise InputError(f"samples file {path}: {text}; {hint}")


def _targets(
    raw: pd.DataFrame, config: SocmapConfig, path: Path
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Scaled numeric targets (NaN where not numeric) and which rows had no value at all."""
    scfg = config.samples
    if scfg.target not in raw.columns:
        _pick(raw, [scfg.target], "target", path, "target")
    target_raw = raw[scfg.target]
    missing = target_raw.isna().to_numpy() | target_raw.astype(str).str.strip().isin(["", "NA", "NaN", "nan"])
    numeric = pd.to_numeric(target_raw, errors="coerce").to_numpy(np.float64) * scfg.target_scale
    return numeric, np.asarray(missing, bool)


def _times(raw: pd.DataFrame, config: SocmapConfig, path: Path) -> tuple[pd.Series, pd.Series]:
    """(year, time label) per row: a fixed ``samples.time``, a year column, or the year of a date column."""
    scfg = config.samples
    year = pd.Series(np.full(len(raw), np.nan))
    if scfg.time is not None:
        return year, pd.Series([str(scfg.time)] * len(raw))
    year_col = _pick(raw, scfg.year, "", path, "year")
    date_col = _pick(raw, scfg.date, "", path, "date")
    if year_col is not None:
        year = pd.to_numeric(raw[year_col], errors="coerce")
        year = year.where(year == year.round())
    elif date_col is not None:
        parsed = parse_dates(
            raw[date_col], scfg.date_format, f"samples file {path}: date column {date_col!r}"
        )
        year = parsed.dt.year.astype("float64")
    elif config.covariates.temporal:
        years, dates = ", ".join(scfg.year or []), ", ".join(scfg.date or [])
        raise InputError(
            f"samples file {path}: no year column (looked for {years}) and no date column (looked for "
            f"{dates}); set samples.year, samples.date, or samples.time for samples without dates"
        )
    if year_col is None and date_col is None:  # static covariates only: samples need no time
        return year, pd.Series(["-"] * len(raw))
    return year, year.map(lambda v: "" if pd.isna(v) else str(int(v)))


_YEAR_FIRST = re.compile(r"^\s*\d{4}\s*[-/.]")


def parse_dates(values: pd.Series, date_format: str | None, where: str) -> pd.Series:
    """Dates of a sample table column (unparsable -> NaT, counted as ``invalid_time`` later).

    With ``date_format`` (strftime) every value is read with it. Without it, datetime columns (Excel,
    Parquet) are used as they are, ISO values (2015-03-04) and other year-first values are read
    year-month-day, and any other value is read both day-first and month-first: where a value reads as two
    different dates (04-03-15: 4 March or 3 April?) an InputError asks for ``samples.date_format``, never
    guessing the order silently.

    Args:
        values: the date column.
        date_format: ``samples.date_format``, or None.
        where: the column, for the error message.
    """
    if date_format is not None:
        return pd.to_datetime(values, format=date_format, errors="coerce")
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    text = values.astype("string").str.strip()
    uniq = pd.Series(text.dropna().unique(), dtype="string")
    uniq = uniq[uniq != ""].reset_index(drop=True)
    year_first = uniq.str.contains(_YEAR_FIRST, na=False).to_numpy(bool)
    chosen = pd.Series(pd.NaT, index=uniq.index, dtype="datetime64[ns]")
    if year_first.any():
        chosen[year_first] = _read_dates(uniq[year_first], format="ISO8601").fillna(
            _read_dates(uniq[year_first], format="mixed", yearfirst=True, dayfirst=False)
        )
    if not year_first.all():
        other = uniq[~year_first]
        month_first = _read_dates(other, format="mixed", dayfirst=False)
        day_first = _read_dates(other, format="mixed", dayfirst=True)
        differ = month_first.notna() & day_first.notna() & (month_first != day_first)
        if differ.any():
            i = int(np.flatnonzero(differ.to_numpy(bool))[0])
            example = str(other.iloc[i])
            raise InputError(_ambiguous_date(where, example, month_first.iloc[i], day_first.iloc[i]))
        chosen[~year_first] = month_first.fillna(day_first)
    lookup = dict(zip(uniq.to_list(), chosen.to_list(), strict=True))
    return pd.to_datetime(text.map(lookup), errors="coerce")


def _read_dates(values: pd.Series, **options: Any) -> pd.Series:
    """``pd.to_datetime`` of string values (unparsable -> NaT), as datetime64[ns] with the same index."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(values, errors="coerce", **options)
    return pd.Series(np.asarray(parsed, dtype="datetime64[ns]"), index=values.index)


def _ambiguous_date(where: str, example: str, month_first: pd.Timestamp, day_first: pd.Timestamp) -> str:
    """One line: the ambiguous value, its two readings and the date_format of each."""
    parts = re.split(r"([-/. ])", example)
    sep = parts[1] if len(parts) > 1 else "-"
    year = "%y" if len(parts[-1]) == 2 else "%Y"
    day_fmt, month_fmt = f"%d{sep}%m{sep}{year}", f"%m{sep}%d{sep}{year}"
    return (
        f"{where} reads ambiguously: {example!r} is {day_first:%Y-%m-%d} day-first or "
        f"{month_first:%Y-%m-%d} month-first; set samples.date_format, e.g. '{day_fmt}' (day first) "
        f"or '{month_fmt}' (month first)"
    )


def _apply_filters(table: SampleTable, config: SocmapConfig, missing: NDArray[np.bool_]) -> None:
    """Drops in the documented order: coordinates, target, time, year range, region."""
    fcfg, frame = config.filters, table.frame
    bad_coords = ~np.isfinite(frame["lon"]) | ~np.isfinite(frame["lat"]) | (frame["lat"].abs() > 90)
    bad_coords |= frame["lon"].abs() > 180
    table.drop(bad_coords.to_numpy(), "invalid_coordinates")
    table.drop(missing[table.frame["source_row"]], "missing_target")
    table.drop(~np.isfinite(table.frame["target"]), "invalid_target")
    table.drop(table.frame["target"] < fcfg.min_target, "below_min_target")
    if fcfg.max_target is not None:
        table.drop(table.frame["target"] > fcfg.max_target, "above_max_target")
    table.drop(table.frame["time"].eq(""), "invalid_time")
    if config.samples.time is None:
        yr = table.frame["year"]
        out_of_range = np.zeros(len(yr), dtype=bool)
        if fcfg.year_min is not None:
            out_of_range |= yr < fcfg.year_min
        if fcfg.year_max is not None:
            out_of_range |= yr > fcfg.year_max
        table.drop(out_of_range, "outside_year_range")
    if fcfg.region is not None:
        region = load_region(config.resolve(fcfg.region))
        inside = shapely.contains_xy(region, table.frame["lon"], table.frame["lat"])
        table.drop(~inside, "outside_region")


def _handle_duplicates(table: SampleTable, policy: str, path: Path) -> None:
    """Same sample id and time more than once: identical rows are dropped; conflicts follow ``policy``."""
    frame = table.frame
    key = ["sample_id", "time"]
    exact = frame.duplicated([*key, "target", "lon", "lat"], keep="first").to_numpy()
    table.drop(exact, "duplicate")
    frame = table.frame
    dup = frame.duplicated(key, keep=False).to_numpy()
    if not dup.any():
        return
    first = frame.loc[dup].iloc[0]
    values = frame.loc[dup & (frame["sample_id"] == first["sample_id"]).to_numpy(), "target"].tolist()
    if policy == "error":
        raise InputError(
            f"samples file {path}: id {first['sample_id']} at time {first['time']} appears {len(values)} times "
            f"with different targets {values}; set samples.duplicates to mean, first or drop"
        )
    if policy == "drop":
        table.drop(dup, "duplicate")
    elif policy == "first":
        table.drop(frame.duplicated(key, keep="first").to_numpy(), "duplicate")
    else:  # mean
        means = frame.groupby(key, sort=False)["target"].transform("mean")
        frame = frame.assign(target=means)
        table.frame = frame
        table.drop(frame.duplicated(key, keep="first").to_numpy(), "duplicate")
        table.warnings.append("duplicate id+time rows with different targets were averaged")


_ORGANIC_CARBON = re.compile(r"(?i)(?:^|[^a-z])(s?oc|toc|corg|orgc|c_?org)(?:$|[^a-z])|organic.?carbon")


def is_organic_carbon(column: str) -> bool:
    """Whether a target column names organic carbon (OC, SOC, TOC, Corg, organic carbon, e.g. ``OC_gkg``).

    Args:
        column: the target column's name (``samples.target``).
    """
    return bool(_ORGANIC_CARBON.search(column))


def _check_units(table: SampleTable, config: SocmapConfig) -> None:
    """Warn when an organic-carbon target looks like % while g/kg is declared (the most common unit slip);
    other targets (pH, clay, ...) are never checked against OC's range."""
    target = table.frame["target"]
    unit = config.samples.target_unit.replace(" ", "").lower()
    if not is_organic_carbon(config.samples.target) or unit != "g/kg":
        return
    if len(target) >= 10 and target.quantile(0.75) < 8:
        table.warnings.append(
            f"target {config.samples.target!r}: 75% of values are below 8 g/kg (median {target.median():.3g}); "
            "if they are in %, set samples.target_scale: 10"
        )


def _drops_text(drops: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in drops.items()) or "none"


# --------------------------------------------------------------------------------------------------- rasters
@dataclass(frozen=True)
class GridSpec:
    """The working grid: CRS, affine transform and size. Every raster is read on it."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    def rowcol(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Row and column of the pixel containing each (x, y) (floor of the inverse transform)."""
        inv = ~self.transform
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        col = inv.a * x + inv.b * y + inv.c
        row = inv.d * x + inv.e * y + inv.f
        return np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)

    def to_json(self) -> dict[str, Any]:
        return {
            "crs": self.crs.to_string(),
            "crs_wkt": self.crs.to_wkt(),
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
            "resolution": list(self.resolution),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GridSpec:
        return cls(CRS.from_wkt(data["crs_wkt"]), Affine(*data["transform"]), data["width"], data["height"])


@dataclass
class RasterStack:
    """All covariate files of a configuration, on one working grid.

    ``files`` maps (band, time label) to a path; static bands use the label ``None``. Missing (band, label)
    pairs are data gaps: they read as nodata.
    """

    static: list[str]
    temporal: list[str]
    time_labels: list[str]
    files: dict[tuple[str, str | None], Path]
    grid: GridSpec
    nodata_override: float | None = None
    assume_crs: str | None = None
    resampling: Resampling = Resampling.bilinear
    allow_warp: bool = True
    notes: list[str] = field(default_factory=list)
    warped: dict[str, str] = field(default_factory=dict)
    coordinates: list[str] = field(default_factory=list)  # generated static bands (socmap.coordinates)
    categorical: list[str] = field(default_factory=list)  # class-code bands: never interpolated

    @property
    def bands(self) -> list[str]:
        """Channel order: static rasters, generated coordinate bands, temporal rasters."""
        return [*self.static, *self.coordinates, *self.temporal]

    @property
    def static_bands(self) -> list[str]:
        """Every band constant in time: static rasters and coordinate bands."""
        return [*self.static, *self.coordinates]

    @property
    def data_channels(self) -> list[int]:
        """Channels read from rasters (the nodata policy counts only these, never generated coordinates)."""
        return [i for i, b in enumerate(self.bands) if b not in self.coordinates]

    @property
    def integer_labels(self) -> bool:
        return all(re.fullmatch(r"-?\d+", t) for t in self.time_labels)

    def sequence(self, label: str, steps: int) -> list[str | None]:
        """The ``steps`` time labels ending at ``label``, oldest first (None where before the first label).

        Integer labels (years, months) step by one, so a missing file is a gap, not a shift of the sequence.
        """
        if self.integer_labels:
            end = int(label)
            width = max(len(t) for t in self.time_labels) if self.time_labels else 0
            padded = all(len(t) == width for t in self.time_labels)
            return [str(v).zfill(width) if padded else str(v) for v in range(end - steps + 1, end + 1)]
        pos = self.time_labels.index(label)
        return [self.time_labels[p] if p >= 0 else None for p in range(pos - steps + 1, pos + 1)]

    def has_time(self, label: str) -> bool:
        """Whether ``label`` lies within the covered time labels."""
        if not self.time_labels:
            return True
        if self.integer_labels and re.fullmatch(r"-?\d+", label):
            values = [int(t) for t in self.time_labels]
            return min(values) <= int(label) <= max(values)
        return label in self.time_labels

    def _resampling(self, band: str) -> Resampling:
        """The configured resampling; for a categorical band nearest (mode instead of average): a class code
        is never interpolated."""
        if band not in self.categorical:
            return self.resampling
        return Resampling.mode if self.resampling == Resampling.average else Resampling.nearest

    @contextlib.contextmanager
    def open(self, band: str, label: str | None) -> Iterator[tuple[DatasetReader | WarpedVRT, float | None]]:
        """Open one file on the working grid; yields (dataset, nodata value)."""
        path = self.files[(band, label)]
        try:
            src = rasterio.open(path)
        except RasterioIOError as exc:
            raise InputError(f"raster {path} could not be opened: {str(exc).splitlines()[0]}") from None
        with src:
            nodata = src.nodata if src.nodata is not None else self.nodata_override
            src_crs = src.crs
            if src_crs is None:
                if self.assume_crs is None:
                    raise InputError(
                        f"raster {path} has no CRS; set covariates.assume_crs (e.g. EPSG:32755) if you know it"
                    )
                src_crs = CRS.from_user_input(self.assume_crs)
            same_grid = (
                src_crs == self.grid.crs
                and src.transform.almost_equals(self.grid.transform)
                and (src.width, src.height) == (self.grid.width, self.grid.height)
            )
            if same_grid and src.crs is not None:
                yield src, nodata
                return
            reason = _grid_difference(src_crs, src.transform, src.width, src.height, self.grid)
            if not self.allow_warp:
                raise InputError(
                    f"raster {path} is not on the working grid ({reason}); set grid.allow_warp: true to warp it"
                )
            self.warped[str(path)] = reason
            aligned_subset = reason.startswith("different extent")
            vrt_opts: dict[str, Any] = {
                "crs": self.grid.crs,
                "transform": self.grid.transform,
                "width": self.grid.width,
                "height": self.grid.height,
                "resampling": Resampling.nearest if aligned_subset else self._resampling(band),
                "src_nodata": nodata if nodata is not None else np.nan,
                "nodata": np.nan,
                "dtype": "float32",
            }
            if src.crs is None:
                vrt_opts["src_crs"] = src_crs
                vrt_opts["src_transform"] = src.transform
            with WarpedVRT(src, **vrt_opts) as vrt:
                yield vrt, np.nan


def _grid_difference(crs: CRS, transform: Affine, width: int, height: int, grid: GridSpec) -> str:
    """A short description of how a raster's grid differs from the working grid."""
    if crs != grid.crs:
        return f"CRS {crs.to_string()} instead of {grid.crs.to_string()}"
    res = (abs(transform.a), abs(transform.e))
    if not np.allclose(res, grid.resolution, rtol=1e-9):
        return (
            f"resolution {res[0]:g} x {res[1]:g} instead of {grid.resolution[0]:g} x {grid.resolution[1]:g}"
        )
    dx = (transform.c - grid.transform.c) / grid.transform.a
    dy = (transform.f - grid.transform.f) / grid.transform.e
    if abs(dx - round(dx)) > 1e-6 or abs(dy - round(dy)) > 1e-6:
        return f"misaligned by {dx - round(dx):+.3f}, {dy - round(dy):+.3f} pixels"
    return f"different extent (offset {round(dx)}, {round(dy)} px, size {width} x {height})"


def _pattern_regex(pattern: str, band: str, time_regex: str) -> re.Pattern[str]:
    escaped = re.escape(pattern.replace("{band}", band)).replace(
        re.escape("{time}"), f"(?P<time>{time_regex})"
    )
    return re.compile("^" + escaped + "$")


def discover_stack(config: SocmapConfig) -> RasterStack:
    """Find every covariate file, check that static bands exist, and fix the working grid."""
    ccfg = config.covariates
    root = config.resolve(ccfg.root)
    if not root.is_dir():
        raise InputError(f"covariates.root {root} is not a folder")
    files: dict[tuple[str, str | None], Path] = {}
    notes: list[str] = []
    for band in ccfg.static:
        path = root / ccfg.static_pattern.format(band=band)
        if not path.is_file():
            raise InputError(
                f"static band {band}: file {path} does not exist (pattern {ccfg.static_pattern!r})"
            )
        files[(band, None)] = path
    found: dict[str, set[str]] = {}
    for band in ccfg.temporal:
        regex = _pattern_regex(ccfg.temporal_pattern, band, ccfg.time_regex)
        glob = ccfg.temporal_pattern.replace("{band}", band).replace("{time}", "*")
        labels = set()
        for path in sorted(root.glob(glob)):
            match = regex.match(path.relative_to(root).as_posix())
            if match:
                labels.add(match["time"])
                files[(band, match["time"])] = path
        if not labels:
            raise InputError(
                f"temporal band {band}: no file matches {root / glob}; check covariates.temporal_pattern"
            )
        found[band] = labels
    if ccfg.time_labels is not None:
        time_labels = [str(t) for t in ccfg.time_labels]
    else:
        union = set().union(*found.values()) if found else set()
        numeric = all(re.fullmatch(r"-?\d+", t) for t in union)
        time_labels = sorted(union, key=(lambda t: int(t)) if numeric else (lambda t: t))
    for band, labels in found.items():
        if ccfg.time_labels is None and all(re.fullmatch(r"-?\d+", t) for t in time_labels) and time_labels:
            lo, hi = int(time_labels[0]), int(time_labels[-1])
            width = len(time_labels[0])
            expected = {
                str(v).zfill(width) if all(len(t) == width for t in time_labels) else str(v)
                for v in range(lo, hi + 1)
            }
        else:
            expected = set(time_labels)
        gaps = sorted(expected - labels)
        if gaps:
            notes.append(f"{band}: no file for {', '.join(gaps)} (read as nodata and filled)")

    grid = _working_grid(config, files, root)
    return RasterStack(
        static=list(ccfg.static),
        temporal=list(ccfg.temporal),
        time_labels=time_labels,
        files=files,
        grid=grid,
        nodata_override=ccfg.nodata,
        assume_crs=ccfg.assume_crs,
        resampling=Resampling[ccfg.resampling],
        allow_warp=config.grid.allow_warp,
        notes=notes,
        coordinates=coordinate_bands(ccfg.coordinates, ccfg.oblique_angles),
        categorical=list(ccfg.categorical),
    )


def _working_grid(config: SocmapConfig, files: dict[tuple[str, str | None], Path], root: Path) -> GridSpec:
    """The reference raster's grid, optionally reprojected to grid.crs / grid.resolution."""
    gcfg = config.grid
    if gcfg.reference is not None:
        candidates = [k for k in files if k[0] == gcfg.reference]
        if not candidates:
            bands = ", ".join(dict.fromkeys(k[0] for k in files))
            raise InputError(
                f"grid.reference {gcfg.reference!r}: not a configured band; expected one of {bands}"
            )
        key = sorted(candidates, key=lambda k: str(k[1]))[0]
    else:
        key = next(iter(files))
    path = files[key]
    try:
        with rasterio.open(path) as src:
            crs, transform, width, height = src.crs, src.transform, src.width, src.height
            bounds = src.bounds
    except RasterioIOError as exc:
        raise InputError(f"raster {path} could not be opened: {str(exc).splitlines()[0]}") from None
    if crs is None:
        if config.covariates.assume_crs is None:
            raise InputError(
                f"raster {path} has no CRS; set covariates.assume_crs (e.g. EPSG:32755) if you know it"
            )
        crs = CRS.from_user_input(config.covariates.assume_crs)
    if gcfg.crs is None and gcfg.resolution is None:
        return GridSpec(crs, transform, width, height)
    from rasterio.warp import calculate_default_transform

    dst_crs = CRS.from_user_input(gcfg.crs) if gcfg.crs else crs
    kwargs: dict[str, Any] = {"resolution": gcfg.resolution} if gcfg.resolution else {}
    new_transform, new_w, new_h = calculate_default_transform(crs, dst_crs, width, height, *bounds, **kwargs)
    assert new_w is not None and new_h is not None
    return GridSpec(dst_crs, new_transform, int(new_w), int(new_h))


def read_block(
    src: DatasetReader | WarpedVRT, nodata: float | None, row0: int, row1: int, col0: int, col1: int
) -> NDArray[np.float32]:
    """Rows [row0, row1) x cols [col0, col1) as float32 with nodata as NaN; outside the raster is NaN."""
    out = np.full((row1 - row0, col1 - col0), np.nan, dtype=np.float32)
    r0, r1 = max(row0, 0), min(row1, src.height)
    c0, c1 = max(col0, 0), min(col1, src.width)
    if r0 >= r1 or c0 >= c1:
        return out
    window = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            data = src.read(1, window=window, out_dtype="float32")
        except RasterioIOError as exc:
            raise InputError(
                f"raster {src.name} is truncated or corrupt: {str(exc).splitlines()[0]}"
            ) from None
    out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = mask_and_scale(src, nodata, data)
    return out


def mask_and_scale(
    src: DatasetReader | WarpedVRT, nodata: float | None, data: NDArray[np.float32]
) -> NDArray[np.float32]:
    """The nodata policy for raw band-1 values read from ``src`` (in place): the nodata value (also NaN) and
    ±Inf become NaN, then the band's scale/offset tags apply (``value * scale + offset``, as GDAL defines
    them; an integer raster stored as scaled counts reads in its physical unit).

    A warped dataset reads the tags of the file it warps (GDAL's warped VRT does not carry them over).
    """
    if nodata is not None and not np.isnan(nodata):
        data[data == np.float32(nodata)] = np.nan
    data[~np.isfinite(data)] = np.nan
    base = getattr(src, "src_dataset", None) or src
    scale = float(base.scales[0]) if base.scales else 1.0
    offset = float(base.offsets[0]) if base.offsets else 0.0
    if scale != 1.0 or offset != 0.0:
        data *= np.float32(scale)
        data += np.float32(offset)
    return data
