"""Report sections beyond one year: the time series of a multi-year cube, a change map and a stock map with
its totals. :func:`socmap.report.build_report` adds each only when its output is given.

The regional mean per year is the mean of the mapped pixels' means; its interval is the mean of the pixels'
Q0.05 and Q0.95, i.e. pixel errors fully correlated (the widest assumption, as for stock totals; independent
pixels would give a far too narrow interval, see docs/uncertainty.md).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio

from socmap.errors import InputError

__all__ = ["TIME_SECTIONS", "change_section", "regional_means", "stock_section", "time_series_section"]

TIME_SECTIONS = ("Time series", "Change", "Stock")


def regional_means(cube: str | Path) -> pd.DataFrame:
    """Per year: mapped pixels, mean, and the mean of Q0.05 / Q0.95 (fully correlated pixel errors).

    Args:
        cube: a ``socmap map --years`` NetCDF.
    """
    from socmap.mapping.years import read_cube

    labels, mean = read_cube(cube, "mean")
    _, lo = read_cube(cube, "Q0.05")
    _, hi = read_cube(cube, "Q0.95")
    rows = []
    for i, label in enumerate(labels):
        ok = np.isfinite(mean[i])
        rows.append(
            {
                "year": label,
                "pixels": int(ok.sum()),
                "mean": float(mean[i][ok].mean()) if ok.any() else np.nan,
                "Q0.05": float(np.nanmean(lo[i][ok])) if ok.any() else np.nan,
                "Q0.95": float(np.nanmean(hi[i][ok])) if ok.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _image(values: Any, title: str, cmap: str, symmetric: bool = False) -> Any:
    """A figure of one raster band (NaN = nodata; colour scale: 2nd-98th percentile)."""
    from socmap.report import _figures

    plt = _figures()
    fig, ax = plt.subplots(figsize=(6, 5))
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    if symmetric:
        hi = max(abs(lo), abs(hi)) or 1.0
        lo = -hi
    shown = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=lo, vmax=hi)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return fig


def _read(path: Path, what: str) -> tuple[Any, dict[str, str], list[str]]:
    """All bands (NaN = nodata), the tags and the band names of a COG."""
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    with rasterio.open(path) as src:
        values = src.read(masked=True).astype(np.float64).filled(np.nan)
        names = [src.tags(i).get("name", str(i)) for i in range(1, src.count + 1)]
        return values, src.tags(), names


def time_series_section(cube: Path, target: str, unit: str) -> str:
    """Regional mean per year with its interval (figure and table)."""
    from socmap.report import _figures, _png, _table

    if not cube.is_file():
        raise InputError(f"cube {cube} does not exist (socmap map --years writes it)")
    table = regional_means(cube)
    plt = _figures()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(table))
    ax.fill_between(
        x, table["Q0.05"], table["Q0.95"], alpha=0.25, label="90 % interval (pixel errors correlated)"
    )
    ax.plot(x, table["mean"], marker="o", label="regional mean")
    ax.set_xticks(x, table["year"], rotation=45 if len(x) > 8 else 0)
    ax.set_ylabel(f"{target} ({unit})")
    ax.legend(fontsize=8)
    text = (
        f"<p>Mean of the mapped pixels per year from <code>{html.escape(str(cube))}</code>; the band is the mean "
        "of the pixels' Q0.05 and Q0.95, i.e. pixel errors assumed fully correlated (the widest interval).</p>"
    )
    return text + _png(fig) + _table(table)


def change_section(change: Path) -> str:
    """The change map, the width of its interval and how the interval was calibrated."""
    from socmap.report import _png, _table

    values, tags, names = _read(change, "change map")
    unit = tags.get("unit", "")
    ok = np.isfinite(values[0])
    direction = values[names.index("direction")] if "direction" in names else np.full(values[0].shape, np.nan)
    rows = [
        ("years", f"{tags.get('year_a', '?')} -> {tags.get('year_b', '?')}"),
        ("mean change", f"{np.nanmean(values[0][ok]):+.4g} {unit}"),
        ("mean interval width", f"{np.nanmean(values[3][ok]):.4g} {unit}"),
        ("pixels with a detectable increase", f"{np.mean(direction[ok] == 1):.1%}"),
        ("pixels with a detectable decrease", f"{np.mean(direction[ok] == -1):.1%}"),
        ("rho, k", f"{tags.get('rho', '?')}, {tags.get('k', '?')}"),
        ("interval", tags.get("method", "")),
        ("calibration", tags.get("calibration", "")),
    ]
    figures = _png(_image(values[0], f"change ({unit})", "RdBu", symmetric=True)) + _png(
        _image(values[3], f"width of the change interval ({unit})", "viridis")
    )
    return _table(pd.DataFrame(rows, columns=["", "value"])) + figures


def stock_section(stock: Path) -> str:
    """The stock map and its totals table (``<stem>_totals.csv`` when present)."""
    from socmap.report import _png, _table

    values, tags, _ = _read(stock, "stock map")
    rows = [
        (k, tags[k])
        for k in ("depth", "formula", "bulk_density", "coarse_fragments", "draws", "year")
        if k in tags
    ]
    body = _table(pd.DataFrame(rows, columns=["", "value"]))
    body += _png(_image(values[0], f"SOC stock {tags.get('depth', '')} (t/ha)", "YlOrBr"))
    totals = stock.with_name(stock.stem + "_totals.csv")
    if totals.is_file():
        body += (
            "<p>Totals: Tg C with the interval for fully correlated pixel errors (widest); "
            "<code>width_Tg_if_independent</code> is the (far too narrow) width for independent pixels.</p>"
        )
        body += _table(pd.read_csv(totals))
    return body
