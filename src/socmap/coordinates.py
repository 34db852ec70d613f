"""Coordinates as covariates, generated on the fly (never rasters on disk): ``covariates.coordinates``.

- ``xy``: two static bands ``coord_x`` / ``coord_y``: each pixel centre's x and y in the working grid's CRS.
- ``oblique``: oblique geographic coordinates (Møller et al. 2020, SOIL 6, 269-289): ``ogc_<angle>`` for
  ``covariates.oblique_angles`` angles θ evenly spaced in [0°, 180°), the pixel centre projected on the axis
  at angle θ from the x axis, about the grid's centre: ``(x - cx) cos θ + (y - cy) sin θ`` (θ = 0: x, 90: y).
  Trees split on many directions instead of only x and y, so their spatial trend is not a staircase.

The bands are static channels like any other (every model reads them: window features, deep channels), are
computed from pixel-centre coordinates both when windows are cut at prepare time and when map blocks are read,
and never count as data for the nodata policy (a pixel with only coordinates is nodata).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from socmap.errors import InputError

__all__ = ["COORDINATE_MODES", "coordinate_bands", "coordinate_values", "is_coordinate_band"]

COORDINATE_MODES = ("none", "xy", "oblique")
PREFIXES = ("coord_", "ogc_")


def coordinate_bands(mode: str, n_angles: int = 6) -> list[str]:
    """The virtual band names of ``mode`` (none: no band)."""
    if mode == "none":
        return []
    if mode == "xy":
        return ["coord_x", "coord_y"]
    if mode == "oblique":
        return [f"ogc_{round(180.0 * k / n_angles):03d}" for k in range(n_angles)]
    raise InputError(f"covariates.coordinates {mode!r}: expected one of {', '.join(COORDINATE_MODES)}")


def is_coordinate_band(band: str) -> bool:
    """Whether ``band`` is generated from coordinates (its name is reserved)."""
    return band in ("coord_x", "coord_y") or (band.startswith("ogc_") and band[4:].isdigit())


def coordinate_values(
    band: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
) -> NDArray[np.float32]:
    """``band``'s values at pixel centres of absolute grid (rows, cols) (broadcast together), float32.

    Args:
        band: a name from :func:`coordinate_bands`.
        transform: the grid's affine (a, b, c, d, e, f).
        shape: the grid's (height, width): its centre is the oblique coordinates' origin.
        rows, cols: grid pixel indices (may lie outside the grid: coordinates continue).
    """
    a, b, c, d, e, f = transform[:6]
    r, k = np.asarray(rows, np.float64) + 0.5, np.asarray(cols, np.float64) + 0.5
    x, y = c + a * k + b * r, f + d * k + e * r
    if band == "coord_x":
        return np.asarray(x, np.float32)
    if band == "coord_y":
        return np.asarray(y, np.float32)
    if not is_coordinate_band(band):
        raise InputError(f"band {band!r} is not a coordinate band")
    h, w = shape
    cx, cy = c + a * w / 2 + b * h / 2, f + d * w / 2 + e * h / 2
    theta = np.radians(float(band[4:]))
    return np.asarray((x - cx) * np.cos(theta) + (y - cy) * np.sin(theta), np.float32)
