"""Region polygons: the embedded default (Bavaria) and user files, validated and reprojected."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import CRS, Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from socmap.errors import InputError

DEFAULT_REGION_NAME = "bavaria"


def default_region_path() -> Path:
    """Path of the embedded Bavaria boundary (Natural Earth, public domain)."""
    return Path(str(resources.files("socmap") / "regions" / "bavaria_boundary.geojson"))


def load_region(path: str | Path | None = None) -> BaseGeometry:
    """Load a region polygon in EPSG:4326 (lon/lat); ``None`` gives the embedded Bavaria polygon.

    GeoJSON is read directly; other vector formats (GeoPackage, Shapefile) through geopandas and
    reprojected to EPSG:4326. All features are unioned. Invalid, empty or non-polygonal geometry is refused.
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
    """Reproject a lon/lat (EPSG:4326) geometry to ``crs``."""
    transformer = Transformer.from_crs("EPSG:4326", crs, always_xy=True)

    def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project)
