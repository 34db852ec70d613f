"""Region polygons: user files (validated, reprojected), the map region rule and the grid footprint.

The map region is ``map.region``, else ``filters.region``, else the covariate grid's footprint
(:func:`region_source`). The embedded Bavaria boundary is used only where it is named: by the Bavaria configs
and the demo (``filters.region``) and by ``socmap synth`` (``load_region(None)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import CRS, Transformer
from rasterio.transform import array_bounds
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from socmap.errors import InputError

if TYPE_CHECKING:
    from socmap.config import SocmapConfig
    from socmap.data import GridSpec

__all__ = [
    "DEFAULT_REGION_NAME",
    "GRID_FOOTPRINT",
    "RegionSource",
    "default_region_path",
    "grid_bounds_text",
    "grid_footprint",
    "load_region",
    "lonlat_text",
    "region_source",
    "to_crs",
    "to_lonlat",
]

DEFAULT_REGION_NAME = "bavaria"
GRID_FOOTPRINT = "covariate grid footprint (no map.region / filters.region set)"


def default_region_path() -> Path:
    """Path of the embedded Bavaria boundary (Natural Earth, public domain)."""
    return Path(str(resources.files("socmap") / "regions" / "bavaria_boundary.geojson"))


def load_region(path: str | Path | None = None) -> BaseGeometry:
    """Load a region polygon in EPSG:4326 (lon/lat); ``None`` gives the embedded Bavaria polygon (the
    default of ``socmap synth`` only: maps and cv follow :func:`region_source`).

    GeoJSON is read directly; other vector formats (GeoPackage, Shapefile) through geopandas and
    reprojected to EPSG:4326. All features are unioned. Invalid, empty or non-polygonal geometry is refused.

    Args:
        path: the polygon file (None: the embedded Bavaria boundary).
    """
    src = default_region_path() if path is None else Path(path)
    if not src.exists():
        raise InputError(f"region file {src} does not exist")
    try:
        if src.suffix.lower() in {".geojson", ".json"}:
            data = json.loads(src.read_text(encoding="utf-8"))
            features = data["features"] if data.get("type") == "FeatureCollection" else [data]
            geoms = [shape(f.get("geometry", f)) for f in features]
        else:
            import geopandas as gpd

            frame = gpd.read_file(src)
            if frame.crs is not None:
                frame = frame.to_crs(4326)
            geoms = list(frame.geometry)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"region file {src} is not a readable polygon file: {exc}") from None
    except Exception as exc:  # pyogrio / fiona raise their own types for unreadable files
        raise InputError(f"region file {src} could not be read: {exc}") from None
    if not geoms:
        raise InputError(f"region file {src} has no features; expected one or more polygons")
    for geom in geoms:
        if geom.geom_type not in {"Polygon", "MultiPolygon"}:
            raise InputError(
                f"region file {src}: geometry type {geom.geom_type}; expected Polygon/MultiPolygon"
            )
        if not geom.is_valid:
            reason = shapely.is_valid_reason(geom)
            raise InputError(
                f"region file {src}: invalid polygon ({reason}); repair it, e.g. with make_valid"
            )
    region = shapely.union_all(geoms)
    if region.is_empty or region.area == 0:
        raise InputError(f"region file {src}: the polygon is empty")
    minx, miny, maxx, maxy = region.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise InputError(
            f"region file {src}: bounds {region.bounds} are not lon/lat degrees; GeoJSON must be EPSG:4326"
        )
    return region


def to_crs(geom: BaseGeometry, crs: str | CRS) -> BaseGeometry:
    """Reproject a lon/lat (EPSG:4326) geometry to ``crs``.

    Args:
        geom: the geometry in lon/lat.
        crs: the target CRS.
    """
    transformer = Transformer.from_crs("EPSG:4326", crs, always_xy=True)

    def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project)


# ------------------------------------------------------------------------------------------ the map's region
@dataclass(frozen=True)
class RegionSource:
    """Where the map's region comes from: a polygon file named by a config key, or the covariate grid.

    Args:
        path: the polygon file (resolved); None: the covariate grid's footprint.
        key: the config key that named it (``map.region`` or ``filters.region``); None for the footprint.
    """

    path: Path | None
    key: str | None = None

    @property
    def name(self) -> str:
        """The tag written into maps and cv.json: the file path, or :data:`GRID_FOOTPRINT`."""
        return str(self.path) if self.path is not None else GRID_FOOTPRINT

    @property
    def label(self) -> str:
        """Short form for messages: ``file.geojson (filters.region)`` or the footprint text."""
        return f"{self.path.name} ({self.key})" if self.path is not None else GRID_FOOTPRINT


def region_source(config: SocmapConfig, map_region: str | Path | None = None) -> RegionSource:
    """The map region rule: ``map.region`` (``map_region`` as given), else ``filters.region`` (resolved
    against the config's folder), else the covariate grid's footprint (never a built-in region).

    Args:
        config: the configuration (``filters.region``).
        map_region: ``map.region`` (None: not set).
    """
    if map_region is not None:
        return RegionSource(Path(map_region), "map.region")
    if config.filters.region is not None:
        return RegionSource(config.resolve(config.filters.region), "filters.region")
    return RegionSource(None)


def grid_footprint(grid: GridSpec) -> BaseGeometry:
    """The grid's extent as a polygon in the grid's CRS.

    Args:
        grid: the working grid.
    """
    return shapely.box(*array_bounds(grid.height, grid.width, grid.transform))


def to_lonlat(geom: BaseGeometry, crs: str | CRS, densify: int = 50) -> BaseGeometry:
    """Reproject a geometry from ``crs`` to EPSG:4326, its edges densified to ``densify`` points per side
    of the bounding box (a projected rectangle is curved in lon/lat).

    Args:
        geom: the geometry in ``crs``.
        crs: its CRS.
        densify: points per bounding-box side (0: the vertices only).
    """
    minx, miny, maxx, maxy = geom.bounds
    step = max(maxx - minx, maxy - miny) / max(densify, 1)
    dense = shapely.segmentize(geom, step) if densify > 0 and step > 0 else geom
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(dense, project)


def lonlat_text(bounds: tuple[float, float, float, float]) -> str:
    """``lon a..b, lat c..d`` of lon/lat bounds.

    Args:
        bounds: minx, miny, maxx, maxy in degrees.
    """
    return f"lon {bounds[0]:.4f}..{bounds[2]:.4f}, lat {bounds[1]:.4f}..{bounds[3]:.4f}"


def grid_bounds_text(grid: GridSpec) -> str:
    """The grid's bounds in its CRS and in lon/lat, for messages.

    Args:
        grid: the working grid.
    """
    left, bottom, right, top = array_bounds(grid.height, grid.width, grid.transform)
    lonlat = to_lonlat(grid_footprint(grid), grid.crs).bounds
    return (
        f"x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g} in {grid.crs.to_string()}; "
        f"{lonlat_text(lonlat)}"
    )
