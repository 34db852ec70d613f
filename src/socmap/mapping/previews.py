"""PNG previews of a map: the prediction, its uncertainty (the prediction interval's width) and, when the run
has an area of applicability, the AOA mask (``<stem>_aoa.png``), all with the region outline,
read from the COG's overviews at most ``PNG_MAX_PIXELS`` wide. Colour scales follow the data: the prediction's
spans the 2nd to 98th percentile of the mapped values (:func:`color_limits`), titles and labels name the target
and its unit (``pH 2020 (pH)``, ``OC (g/kg)``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from numpy.typing import ArrayLike
from rasterio.enums import Resampling
from shapely.geometry.base import BaseGeometry

from socmap._atomic import atomic_file
from socmap.mapping.uncertainty import CONFORMAL, MODEL_INTERVALS, NO_UNCERTAINTY

if TYPE_CHECKING:
    from socmap.mapping.plan import MapPlan

__all__ = [
    "PNG_MAX_PIXELS",
    "PNG_PERCENTILES",
    "ColorLimits",
    "aoa_png_path",
    "color_limits",
    "map_title",
    "render_previews",
    "uniform_width_note",
]

PNG_MAX_PIXELS = 1600
PNG_PERCENTILES = (2.0, 98.0)  # the prediction's colour scale: robust to a few extreme pixels
ColorLimits = tuple[float, float]
UNIFORM_TOLERANCE = 1e-5  # relative: float32 rounding of overview averages of one width


def color_limits(values: ArrayLike, percentiles: tuple[float, float] = PNG_PERCENTILES) -> ColorLimits:
    """(vmin, vmax) of a colour scale from the data: the 2nd and 98th percentiles of the finite values
    (masked values ignored); a constant or empty map gets a unit-wide scale around its value.

    Args:
        values: the mapped values (a masked array, or NaN for nodata).
        percentiles: the lower and upper percentile.
    """
    data = np.ma.masked_invalid(np.ma.asarray(values, dtype=np.float64)).compressed()
    if data.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(data, percentiles))
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return (lo - 0.5, hi + 0.5)
    return (lo, hi)


def aoa_png_path(out: Path) -> Path:
    """The AOA preview beside the COG (``soc_2023_aoa.png``).

    Args:
        out: the COG's path.
    """
    return out.with_name(out.stem + "_aoa.png")


def map_title(target: str, year: str | None, unit: str) -> str:
    """``{target} {year} ({unit})``, e.g. ``pH (pH)`` for a static map, ``OC 2023 (g/kg)``.

    Args:
        target: the predicted property's name (its column).
        year: the mapped time label (None: static covariates).
        unit: its unit.
    """
    return f"{target} {year or ''}".strip() + f" ({unit})"


@dataclass(frozen=True)
class _Frame:
    """What every preview shares: the map's extent, CRS name and region outline."""

    left: float
    bottom: float
    right: float
    top: float
    crs_name: str
    region: BaseGeometry


def _figure(
    frame: _Frame,
    values: np.ma.MaskedArray[Any, Any] | None,
    title: str,
    label: str,
    cmap: str,
    limits: ColorLimits,
    path: Path,
) -> None:
    """One preview: the values (or, without values, the ``label`` text) under the region outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    left, bottom, right, top = frame.left, frame.bottom, frame.right, frame.top
    fig, ax = plt.subplots(figsize=(7, 7 * (top - bottom) / max(right - left, 1e-9) + 0.8), dpi=120)
    if values is not None:
        extent = (left, right, bottom, top)
        vmin, vmax = limits
        image = ax.imshow(values, extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    else:
        ax.text(0.5, 0.5, label, ha="center", va="center", transform=ax.transAxes, wrap=True)
    for poly in getattr(frame.region, "geoms", [frame.region]):
        for ring in [poly.exterior, *poly.interiors]:
            xs, ys = ring.xy
            ax.plot(xs, ys, color="black", lw=0.7)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.set_xlabel(f"x ({frame.crs_name})")
    ax.set_ylabel(f"y ({frame.crs_name})")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def uniform_width_note(width: ArrayLike, unit: str) -> str | None:
    """The uncertainty preview's text when the interval has one width everywhere (a colour map of a constant
    shows nothing), else None.

    Why: the calibration keeps a constant-width (plain split-conformal) interval when no input of its residual
    scale model (prediction, a model's own width, the dissimilarity index) narrowed the interval on its rows,
    e.g. on a 150-sample data set whose residuals follow none of them."""
    values = np.asarray(width, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if high - low > UNIFORM_TOLERANCE * max(abs(high), 1e-12):
        return None
    return (
        f"the interval has the same width everywhere: {high:.3g} {unit}\n"
        "(its calibration found no input that narrows it locally:\nprediction, model width or dissimilarity); "
        "see the AOA map\nfor where the model extrapolates"
    )


def render_previews(
    cog: Path, plan: MapPlan, png: Path, uncertainty_png: Path, limits: ColorLimits | None = None
) -> None:
    """PNG of the prediction (colour scale from the data), of the uncertainty (the interval width, band 5)
    and, when band 8 (AOA) has data, of the area of applicability (``aoa_png_path``).

    Args:
        cog: the written COG (its overviews are read).
        plan: the map's plan (year, target, unit, method, models, region).
        png: the prediction preview to write.
        uncertainty_png: the uncertainty preview to write.
        limits: (vmin, vmax) of the prediction's colour scale; None: :func:`color_limits` of the mapped
            values (2nd and 98th percentile).
    """
    with rasterio.open(cog) as src:
        scale = max(1, math.ceil(max(src.width, src.height) / PNG_MAX_PIXELS))
        shape = (src.count, math.ceil(src.height / scale), math.ceil(src.width / scale))
        data = src.read(out_shape=shape, masked=True, resampling=Resampling.average)  # from the overviews
        left, bottom, right, top = src.bounds
        frame = _Frame(left, bottom, right, top, src.crs.to_string(), plan.job.region)
    unit, method, target = plan.unit, plan.job.method, plan.target.column
    title = map_title(target, plan.year, unit)
    models = plan.model_ids[0] if len(plan.model_ids) == 1 else f"ensemble of {len(plan.model_ids)} models"
    scale_note = "" if limits is not None else "; scale: 2nd-98th percentile"
    limits = limits if limits is not None else color_limits(data[0])
    _figure(frame, data[0], f"{title}, {models}", f"{target} ({unit}{scale_note})", "viridis", limits, png)
    stem = f"{target} {plan.year or ''}".strip()
    _aoa_preview(frame, data, f"{stem}, {models}", aoa_png_path(png.with_suffix(".tif")))
    if method == NO_UNCERTAINTY:
        text = (
            "no prediction interval: the run holds no calibration\n"
            "(train with uncertainty.calibration_folds >= 2) and its model gives no intervals"
        )
        _figure(frame, None, f"{stem} uncertainty, {models}", text, "magma", (0.0, 1.0), uncertainty_png)
        return
    width = data[4]
    finite = width.compressed()
    top_value = float(np.percentile(finite, 98)) if finite.size else 1.0
    what = {CONFORMAL: "calibrated", MODEL_INTERVALS: "models' own, uncalibrated"}.get(method, method)
    note = uniform_width_note(finite, unit)
    if note is not None:
        _figure(
            frame,
            None,
            f"{stem} prediction interval width ({what}), {models}",
            note,
            "magma",
            (0.0, 1.0),
            uncertainty_png,
        )
        return
    _figure(
        frame,
        width,
        f"{stem} prediction interval width ({unit}, {what}), {models}",
        f"interval width ({unit}; scale capped at its 98th percentile)",
        "magma",
        (0.0, max(top_value, 1e-6)),
        uncertainty_png,
    )


def _aoa_preview(frame: _Frame, data: np.ma.MaskedArray[Any, Any], title: str, path: Path) -> None:
    """The AOA mask (band 8) with the share of mapped pixels inside; nothing without an AOA."""
    aoa = data[7]
    values = aoa.compressed()
    if values.size == 0:
        path.unlink(missing_ok=True)
        return
    share = float(np.mean(values >= 0.5))
    _figure(
        frame,
        aoa,
        f"area of applicability: {share:.0%} of mapped pixels inside, {title}",
        "share of pixels inside the AOA (1: inside, 0: outside)",
        "RdYlGn",
        (0.0, 1.0),
        path,
    )
