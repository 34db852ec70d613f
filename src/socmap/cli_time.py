"""CLI commands beyond one year: ``socmap map --years``, ``socmap change`` and ``socmap stock``.

Registered on the ``socmap`` app in :mod:`socmap.cli`; like every command they only parse, call one library
function and print what it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from socmap.config import MapConfig

__all__ = ["change", "print_years", "stock"]


def print_years(
    options: MapConfig,
    years: list[str],
    run: Path,
    out: Path,
    resume: bool,
    overwrite: bool,
    progress: Callable[[int, int], None],
    warn: Callable[[str], None],
) -> None:
    """``socmap map --years``: map every year in one pass and say what was written.

    Args:
        options: the ``map`` section.
        years: the years (``--years`` parsed).
        run: the run folder.
        out: ``<stem>.tif``.
        resume, overwrite: as for ``socmap map``.
        progress: the pixel progress callback.
        warn: prints a warning.
    """
    from socmap.mapping.years import map_years

    result = map_years(options, years, run, out, resume=resume, overwrite=overwrite, progress=progress)
    for warning in result.warnings:
        warn(warning)
    resumed = f", {result.n_resumed} (block, year) files resumed" if result.n_resumed else ""
    typer.echo(
        f"mapped {len(result.years)} years ({result.years[0]}..{result.years[-1]}) x "
        f"{result.n_region_pixels:,} region pixels in {result.seconds:.1f} s{resumed}"
    )
    typer.echo(
        f"bands: {', '.join(result.bands)} (interval: {result.method}, models: {result.model_kinds}, "
        f"unit {result.unit})"
    )
    for year, path in result.outs.items():
        typer.echo(f"wrote {path} ({result.n_mapped[year]:,} pixels mapped)")
    typer.echo(f"wrote {result.cube} (CF-1.8 NetCDF, dims time x y x x, one variable per band)")


def change(
    map_a: Annotated[Path, typer.Argument(help="The earlier year's map (COG of socmap map).")],
    map_b: Annotated[Path, typer.Argument(help="The later year's map, on the same grid.")],
    out: Annotated[Path, typer.Option("--out", help="The change COG (.tif).")],
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="The run that made the maps: its repeat visits calibrate the interval (without: rho = 0, "
            "k = 1, conservative).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Change from MAP_A to MAP_B: mean difference and an interval that accounts for the correlation of the
    two years' errors (rho and k calibrated on repeat visits of the run's calibration CV)."""
    from socmap.change import change_map

    result = change_map(map_a, map_b, out, run, overwrite=overwrite)
    cal = result.calibration
    for warning in cal.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    typer.echo(
        f"change {result.year_a} -> {result.year_b}: mean {result.mean_change:+.3g} {result.unit}, mean "
        f"interval width {result.mean_width:.3g} {result.unit} over {result.n_pixels:,} pixels; "
        f"{result.share_increase:.1%} increase, {result.share_decrease:.1%} decrease (interval excludes 0)"
    )
    typer.echo(f"interval: rho {cal.rho:.3f}, k {cal.k:.3f} ({cal.source})")
    typer.echo(f"wrote {result.out}")


def stock(
    map_path: Annotated[Path, typer.Argument(help="A concentration map (COG of socmap map) in g/kg or %.")],
    out: Annotated[Path, typer.Option("--out", help="The stock COG (.tif); totals go to <stem>_totals.csv.")],
    depth: Annotated[str, typer.Option("--depth", help="Depth interval TOP-BOTTOM in cm, e.g. 0-30.")],
    bd: Annotated[
        str, typer.Option("--bd", help="Bulk density of the fine earth, g/cm3: a number or a raster.")
    ],
    bd_sd: Annotated[
        str, typer.Option("--bd-sd", help="Its standard deviation: a number or a raster.")
    ] = "0",
    cf: Annotated[
        str, typer.Option("--cf", help="Coarse fragments, volume fraction 0..1: a number or a raster.")
    ] = "0",
    cf_sd: Annotated[
        str, typer.Option("--cf-sd", help="Its standard deviation: a number or a raster.")
    ] = "0",
    unit: Annotated[
        str | None,
        typer.Option("--unit", help="The map's unit, g/kg or % (default: the map's unit tag)."),
    ] = None,
    zones: Annotated[
        Path | None,
        typer.Option(
            "--zones", help="Regions for totals: polygons (GeoJSON/GPKG) or a raster of zone codes."
        ),
    ] = None,
    zone_field: Annotated[
        str | None, typer.Option("--zone-field", help="The polygons' name column (default: row number).")
    ] = None,
    draws: Annotated[int, typer.Option("--draws", help="Monte Carlo draws per pixel.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
) -> None:
    """SOC stock (t/ha) = conc x BD x depth x (1 - CF) x 0.1 with a Monte Carlo interval, and totals (Tg C)."""
    from socmap.stocks import parse_depth, parse_source, stock_map

    result = stock_map(
        map_path,
        out,
        depth=parse_depth(depth),
        bd=parse_source(bd, "--bd"),
        bd_sd=parse_source(bd_sd, "--bd-sd"),
        cf=parse_source(cf, "--cf"),
        cf_sd=parse_source(cf_sd, "--cf-sd"),
        unit=unit,
        draws=draws,
        seed=seed,
        zones=zones,
        zone_field=zone_field,
        overwrite=overwrite,
    )
    top, bottom = result.depth
    typer.echo(
        f"stock {top:g}-{bottom:g} cm over {result.n_pixels:,} pixels ({result.draws} draws per pixel)"
    )
    for row in result.table.itertuples():
        typer.echo(
            f"  {row.zone}: {row.total_Tg:.4g} Tg C [{row.total_Tg_Q05:.4g}, {row.total_Tg_Q95:.4g}] "
            f"(mean {row.mean_t_ha:.1f} t/ha over {row.area_ha:,.0f} ha)"
        )
    typer.echo(
        "interval: pixel errors fully correlated (widest); independent pixels would give a width of "
        f"{result.table['width_Tg_if_independent'].max():.3g} Tg at most (too narrow)"
    )
    typer.echo(f"wrote {result.out}, {result.totals}")
