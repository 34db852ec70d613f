"""The folds of a cross-validation: drawn once from the config (through :func:`socmap.split.splitter_for`),
written as ``folds.csv``, and described for ``cv.json``."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray

from socmap.config import CV_DESIGNS, SocmapConfig
from socmap.errors import InputError
from socmap.split import splitter_for
from socmap.windows import PreparedData

__all__ = [
    "N_PREDICTION_POINTS",
    "PREDICTION_GRID_PIXELS",
    "Fold",
    "FoldDesign",
    "JSONValue",
    "check_design",
    "draw_prediction_points",
    "folds_table",
    "make_folds",
    "prediction_points",
    "valid_pixel_points",
]

N_PREDICTION_POINTS = 2000
PREDICTION_GRID_PIXELS = 1000  # kNNDM without a region: the first band is read at most this many px per side
SINGLE_FOLD_DESIGNS = ("buffered", "distance-split")  # one fold is meaningful (one location / one hold-out)

IntArray = NDArray[np.int64]
Fold = tuple[IntArray, IntArray]
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"


@dataclass(frozen=True)
class FoldDesign:
    """How the folds were drawn (``cv.json``).

    Args:
        design: the cross-validation design (``cv.design``).
        folds: number of folds generated.
        seed: seed of the folds (``cv.seed``, else ``split.seed``).
        parameters: the splitter's other options (e.g. ``block_size_km``, ``buffer_km``; kNNDM: the number of
            prediction points and where they were drawn, ``prediction_region``: a region file and its config
            key, or the covariate grid's valid pixels).
        fitted: what the splitter learned while splitting (kNNDM: ``w_``, ``q_``, ``candidates_``).
    """

    design: str
    folds: int
    seed: int
    parameters: dict[str, JSONValue] = field(default_factory=dict)
    fitted: dict[str, JSONValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, JSONValue]:
        """JSON form."""
        return {
            "design": self.design,
            "folds": self.folds,
            "seed": self.seed,
            "parameters": dict(self.parameters),
            "fitted": dict(self.fitted),
        }


def check_design(config: SocmapConfig) -> tuple[str, int, int]:
    """``(design, folds, seed)`` of ``config.cv`` with the defaults applied, or an InputError naming the key."""
    design = config.cv.design
    if design not in CV_DESIGNS:
        raise InputError(f"cv.design {design!r}: expected one of {', '.join(CV_DESIGNS)}")
    folds = config.split.folds if config.cv.folds is None else config.cv.folds
    minimum = 1 if design in SINGLE_FOLD_DESIGNS else 2
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < minimum:
        raise InputError(
            f"cv.folds {folds!r}: expected an integer >= {minimum} for {design} "
            "(>= 1 only for buffered and distance-split)"
        )
    seed = config.split.seed if config.cv.seed is None else config.cv.seed
    return design, folds, seed


def prediction_points(config: SocmapConfig, seed: int, n: int = N_PREDICTION_POINTS) -> NDArray[np.float64]:
    """``n`` random lon/lat points of the area to be mapped, for kNNDM (see :func:`draw_prediction_points`).

    Args:
        config: the configuration (``map.region``, ``filters.region``, the covariates).
        seed: seed of the points.
        n: number of points.
    """
    return draw_prediction_points(config, seed, n)[0]


def draw_prediction_points(
    config: SocmapConfig, seed: int, n: int = N_PREDICTION_POINTS
) -> tuple[NDArray[np.float64], str]:
    """``n`` random lon/lat points of the area to be mapped, and where they were drawn.

    The area follows the map's region rule: ``map.region``, else ``filters.region`` (points uniform in the
    polygon), else the covariates' valid pixels (points uniform among the pixels of the first band that hold
    data, read decimated to at most ``PREDICTION_GRID_PIXELS`` per side).

    Args:
        config: the configuration.
        seed: seed of the points.
        n: number of points.
    """
    from socmap.region import load_region, region_source

    source = region_source(config, config.resolve(config.map.region) if config.map.region else None)
    if source.path is None:
        return valid_pixel_points(config, seed, n)
    region = load_region(source.path)
    minx, miny, maxx, maxy = region.bounds
    rng = np.random.default_rng(seed)
    points: list[NDArray[np.float64]] = []
    total = 0
    while total < n:
        cand = np.column_stack([rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n)])
        cand = cand[shapely.contains_xy(region, cand[:, 0], cand[:, 1])]
        points.append(cand)
        total += len(cand)
    return np.concatenate(points)[:n], f"{source.name} ({source.key})"


def valid_pixel_points(
    config: SocmapConfig, seed: int, n: int = N_PREDICTION_POINTS
) -> tuple[NDArray[np.float64], str]:
    """``n`` random lon/lat points among the valid pixels of the stack's first band (no region configured).

    The band is read decimated (at most ``PREDICTION_GRID_PIXELS`` per side, nearest pixel), so memory is
    bounded whatever the grid's size; each point lies uniformly within a drawn (decimated) pixel.

    Args:
        config: the configuration (its covariates).
        seed: seed of the points.
        n: number of points.
    """
    from pyproj import Transformer
    from rasterio.enums import Resampling

    from socmap.data import discover_stack

    stack = discover_stack(config)
    band = next(b for b in stack.bands if b not in stack.coordinates)  # a raster band
    label = None if band in stack.static else stack.time_labels[-1]
    if (band, label) not in stack.files:
        label = next(lab for b, lab in stack.files if b == band)
    grid = stack.grid
    scale = max(1, math.ceil(max(grid.width, grid.height) / PREDICTION_GRID_PIXELS))
    shape = (math.ceil(grid.height / scale), math.ceil(grid.width / scale))
    with stack.open(band, label) as (src, nodata):
        values = src.read(1, out_shape=shape, resampling=Resampling.nearest, out_dtype="float64")
    valid = np.isfinite(values)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    rows, cols = np.nonzero(valid)
    where = f"{band}" + (f" {label}" if label is not None else "")
    if rows.size == 0:
        raise InputError(
            f"cv knndm: the covariate {where} ({stack.files[(band, label)]}) has no valid pixel to draw "
            "prediction points from; set map.region or filters.region"
        )
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, rows.size, n)
    step_r, step_c = grid.height / shape[0], grid.width / shape[1]  # grid pixels per decimated pixel
    r = (rows[pick] + rng.random(n)) * step_r
    c = (cols[pick] + rng.random(n)) * step_c
    x, y = grid.transform @ (c, r)
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    source = f"covariate grid valid pixels ({where}, read at 1/{scale} resolution; no map.region / filters.region set)"
    return np.column_stack([np.asarray(lon, np.float64), np.asarray(lat, np.float64)]), source


def _json_value(value: Any) -> JSONValue:
    """A splitter attribute as JSON (arrays and tuples as lists, numpy scalars as Python numbers)."""
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.ndarray | list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


def _describe(splitter: Any, design: str, folds: int, seed: int, region: str | None) -> FoldDesign:
    """The splitter's constructor options and fitted attributes (``name_``), as exposed by the splitter."""
    parameters: dict[str, JSONValue] = {}
    for name in inspect.signature(type(splitter)).parameters:
        if name in ("n_splits", "seed") or not hasattr(splitter, name):
            continue
        value = getattr(splitter, name)
        if isinstance(value, np.ndarray) and value.ndim > 1:  # kNNDM's prediction points: their number
            parameters[f"n_{name}"] = int(value.shape[0])
        else:
            parameters[name] = _json_value(value)
    if region is not None:
        parameters["prediction_region"] = region
    fitted = {
        name: _json_value(value)
        for name, value in vars(splitter).items()
        if name.endswith("_") and not name.startswith("_")
    }
    return FoldDesign(design, folds, seed, parameters, fitted)


def make_folds(config: SocmapConfig, data: PreparedData) -> tuple[list[Fold], FoldDesign]:
    """(train, test) row arrays of every fold, generated once for all models, and how they were drawn.

    Args:
        config: ``cv.design``, ``cv.folds``, ``cv.seed`` and the ``split`` distances / block size.
        data: the prepared samples (lon/lat).
    """
    design, n_folds, seed = check_design(config)
    points, region = None, None
    if design == "knndm":
        points, region = draw_prediction_points(config, seed)
    splitter = splitter_for(config.split, design, n_folds, seed, prediction_points=points)
    try:
        folds = [
            (np.asarray(train, np.int64), np.asarray(test, np.int64))
            for train, test in splitter.split(data.samples[["lon", "lat"]], data.target)
        ]
    except InputError as exc:  # the splitter names its own options: say which config keys set them
        raise InputError(f"cv.design {design} with cv.folds {n_folds} (split.* distances): {exc}") from None
    return folds, _describe(splitter, design, len(folds), seed, region)


def folds_table(data: PreparedData, folds: list[Fold]) -> pd.DataFrame:
    """One row per (fold, test sample): index (row in the prepared data), sample_id, time, fold.

    Args:
        data: the prepared samples.
        folds: the (train, test) rows of every fold.
    """
    ids = data.samples["sample_id"].to_numpy()
    times = data.samples["time"].to_numpy()
    parts = [
        pd.DataFrame({"index": test, "sample_id": ids[test], "time": times[test], "fold": k})
        for k, (_, test) in enumerate(folds)
    ]
    return pd.concat(parts, ignore_index=True)
