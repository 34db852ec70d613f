"""Many years in one pass: one COG per year (the same 8 bands) and a CF-1.8 NetCDF time cube.

A model reads the map year and the ``T - 1`` years before it, so the windows of adjacent years overlap in
time: mapping 2010..2023 one year at a time reads every raster up to ``T`` times and loads the models 14
times. Here every block reads the union of the years' time steps once, slices each year's ``[C, T, ...]``
inputs from it (:func:`socmap.mapping.blocks.compute_block` with a shared reader), predicts and writes one
block file per year into that year's ``<out>_<year>.tif.blocks/``. A block is resumable per year: a resumed
map recomputes only the (block, year) pairs without a file. Each year is then assembled into its own COG (the
same writer as ``socmap map``), and the COGs into ``<out>.nc``, a CF-1.8 NetCDF with one variable per band
(dims ``time, y, x``), a ``spatial_ref`` grid mapping (CF attributes from pyproj plus the WKT) and the
target's unit: what xarray, GDAL, QGIS and Panoply read.

NetCDF is written with ``netCDF4`` year by year, so memory stays at one year of one band.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from socmap._allocator import undo_dask_malloc_trim
from socmap._atomic import atomic_file
from socmap.config import MapConfig
from socmap.errors import InputError, OutputError
from socmap.mapping.blocks import (
    PixelCallback,
    compute_block,
    job_members,
    read_inputs,
    save_block,
)
from socmap.mapping.cog import NODATA, map_band_names, write_outputs
from socmap.mapping.plan import Block, MapJob, MapPlan, map_time_labels, open_blocks_dir, plan_map
from socmap.mapping.previews import ColorLimits, color_limits
from socmap.mapping.schedulers import PixelProgress, ProgressCallback, dead_worker, loop_blocks
from socmap.mapping.uncertainty import model_kinds
from socmap.models import SocModel

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "YearsResult",
    "cube_path",
    "map_years",
    "parse_years",
    "plan_years",
    "read_cube",
    "run_years_block",
    "write_cube",
    "year_path",
]

SAMPLE_PER_YEAR = 200_000  # mapped values per year kept for the shared colour scale


@dataclass
class YearsResult:
    """What a multi-year map wrote.

    Args:
        years: the mapped time labels, in order.
        outs: the COG of every year (``<stem>_<year>.tif``).
        cube: the CF NetCDF time cube (``<stem>.nc``).
        n_region_pixels: region pixels of one year.
        n_mapped: mapped pixels per year.
        n_blocks: blocks with region pixels.
        n_resumed: (block, year) pairs kept from an interrupted map.
        seconds: wall time.
        method: the interval method.
        model_kinds: the members' kinds.
        unit: the target's unit.
        target: the target column.
        bands: the band names (the same in every COG and the cube).
        warnings: notes for the user.
    """

    years: list[str]
    outs: dict[str, Path]
    cube: Path
    n_region_pixels: int
    n_mapped: dict[str, int]
    n_blocks: int
    n_resumed: int
    seconds: float
    method: str
    model_kinds: str
    unit: str
    target: str
    bands: tuple[str, ...]
    warnings: list[str]


def parse_years(text: str) -> list[str]:
    """``FIRST:LAST`` (integers, both included; ``FIRST:LAST:STEP`` too) or a comma-separated list of labels.

    Args:
        text: the ``--years`` value, e.g. ``2010:2023`` or ``2010,2015,2023``.
    """
    text = text.strip()
    expected = f"--years {text!r}: expected FIRST:LAST (e.g. 2010:2023) or a comma-separated list (2010,2015)"
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"-?\d+", p.strip()) for p in parts):
            raise InputError(expected)
        first, last, step = int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        if step < 1 or last < first:
            raise InputError(f"{expected}; FIRST <= LAST and STEP >= 1")
        years = [str(y) for y in range(first, last + 1, step)]
    else:
        years = [p.strip() for p in text.split(",") if p.strip()]
    if not years:
        raise InputError(expected)
    if len(set(years)) != len(years):
        raise InputError(f"--years {text!r}: a year is listed twice")
    return years


def year_path(out: Path, year: str) -> Path:
    """The COG of one year beside ``out``: ``soc.tif`` -> ``soc_2015.tif``."""
    return out.with_name(f"{out.stem}_{year}{out.suffix}")


def cube_path(out: Path) -> Path:
    """The time cube beside ``out``: ``soc.tif`` -> ``soc.nc``."""
    return out.with_suffix(".nc")


def plan_years(
    options: MapConfig, years: Sequence[str], run_dir: str | Path, out: str | Path
) -> list[MapPlan]:
    """One plan per year sharing the grid, blocks and members (the models are loaded once).

    Args:
        options: the ``map`` section (``year`` is ignored: ``years`` replaces it).
        years: the time labels to map.
        run_dir: a ``socmap train`` run folder.
        out: ``<stem>.tif``: the years go to ``<stem>_<year>.tif``, the cube to ``<stem>.nc``.
    """
    out = Path(out)
    if not years:
        raise InputError("--years: no year given")
    first = plan_map(options.model_copy(update={"year": years[0]}), run_dir, year_path(out, years[0]))
    if not first.job.stack.temporal:
        raise InputError("--years: the covariates are static (no temporal bands): a map of them has no year")
    plans = [first]
    for year in years[1:]:
        labels = map_time_labels(first.job.stack, year, first.job.steps)
        manifest = {**first.manifest, "year": year}
        path = year_path(out, year)
        job = dataclasses.replace(
            first.job,
            key=hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16],
            labels=tuple(labels),
            blocks_dir=str(path.with_name(path.name + ".blocks")),
        )
        plans.append(
            dataclasses.replace(
                first, job=job, out=path, year=year, manifest=manifest, warnings=[*first.warnings]
            )
        )
    return plans


def _union_labels(jobs: Sequence[MapJob]) -> list[str | None]:
    """Every time label any job reads, in the stack's order (each raster is then read once)."""
    wanted = {lab for job in jobs for lab in job.labels}
    return [lab for lab in jobs[0].stack.time_labels if lab in wanted]


def run_years_block(
    jobs: Sequence[MapJob],
    block: Block,
    members: Sequence[SocModel] | None = None,
    on_pixels: PixelCallback | None = None,
) -> int:
    """The task: one block for every year without a block file; the rasters are read once for all years.

    Args:
        jobs: one job per year (same grid and members).
        block: the tile.
        members: the models (default: loaded from the first job, once per process).
        on_pixels: progress callback (pixels of each finished batch).
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    undo_dask_malloc_trim()
    todo = [job for job in jobs if not (Path(job.blocks_dir) / block.name).is_file()]
    if not todo:
        return 0
    union = _union_labels(todo)
    position = {lab: i for i, lab in enumerate(union)}
    cache: dict[tuple[int, ...], NDArray[np.float32]] = {}

    def shared_read(
        stack: Any, labels: Sequence[str | None], size: int, r0: int, r1: int, c0: int, c1: int
    ) -> NDArray[np.float32]:
        key = (size, r0, r1, c0, c1)
        if key not in cache:
            cache.clear()
            cache[key] = read_inputs(stack, union, size, r0, r1, c0, c1)
        return cache[key][:, [position[lab] for lab in labels]]

    members = members if members is not None else job_members(todo[0])
    mapped = 0
    for job in todo:
        values = compute_block(job, block, members, on_pixels, read=shared_read)
        save_block(Path(job.blocks_dir) / block.name, values)
        mapped += int(np.isfinite(values[0]).sum())
    return mapped


def _pending(plans: Sequence[MapPlan]) -> dict[Block, int]:
    """Blocks with region pixels and, per block, how many years still lack its file."""
    return {
        b: sum(not (p.blocks_dir / b.name).is_file() for p in plans) for b in plans[0].blocks if b.n_region
    }


def _run(
    jobs: tuple[MapJob, ...],
    todo: list[Block],
    years_left: dict[Block, int],
    scheduler: str | None,
    client: Client | None,
    progress: PixelProgress,
) -> None:
    """Run the blocks in this process, on Dask's local threads/processes or on a dask.distributed cluster."""

    def done(block: Block) -> None:
        progress.done += block.n_region * years_left[block]
        progress.report()

    if client is None and scheduler is None:
        loop_jobs = tuple(dataclasses.replace(j, batch_threads=torch.get_num_threads()) for j in jobs)
        members = job_members(jobs[0])
        loop_blocks(
            todo, lambda b, on_pixels: run_years_block(loop_jobs, b, members, on_pixels), progress, done
        )
    elif client is None and scheduler in {"threads", "processes"}:
        from dask.base import compute
        from dask.delayed import delayed

        try:
            compute(*[delayed(run_years_block, pure=False)(jobs, b) for b in todo], scheduler=scheduler)
        except BrokenProcessPool:
            raise dead_worker("", "the finished (block, year) files are kept") from None
        for block in todo:
            done(block)
    else:
        from distributed import Client, KilledWorker, as_completed

        own = client is None
        cluster = Client(scheduler) if client is None else client
        try:
            futures = {
                cluster.submit(
                    run_years_block, jobs, b, key=f"socmap-{jobs[0].key}-y-{b.name}", pure=False
                ): b
                for b in todo
            }
            for future in as_completed(futures):
                future.result()
                done(futures[future])
        except (KilledWorker, CancelledError):
            raise dead_worker("repeatedly", "the finished (block, year) files are kept") from None
        finally:
            if own:
                cluster.close()


def _shared_limits(plans: Sequence[MapPlan]) -> ColorLimits:
    """One colour scale for every year's preview (2nd-98th percentile of a sample of all mapped means)."""
    values = []
    for plan in plans:
        year_values = [
            v[np.isfinite(v)]
            for b in plan.blocks
            if b.n_region
            for v in [np.load(plan.blocks_dir / b.name, mmap_mode="r")[0]]
        ]
        joined = np.concatenate(year_values) if year_values else np.empty(0)
        values.append(joined[:: max(1, joined.size // SAMPLE_PER_YEAR)])
    return color_limits(np.concatenate(values))


def _check_outputs(plans: Sequence[MapPlan], cube: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a cube (without ``overwrite``) before any block is computed."""
    if cube.exists() and not overwrite:
        raise OutputError(f"output {cube} exists; pass overwrite=True to replace it")
    for plan in plans:
        open_blocks_dir(plan, resume, overwrite)


def map_years(
    options: MapConfig,
    years: Sequence[str],
    run_dir: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    client: Client | None = None,
    limits: ColorLimits | None = None,
) -> YearsResult:
    """Map several years in one pass: ``<stem>_<year>.tif`` (8 bands each, PNG previews) and ``<stem>.nc``.

    Args:
        options: the ``map`` section (as for :func:`socmap.mapping.map_soc`; ``year`` is ignored).
        years: the time labels to map (e.g. from :func:`parse_years`).
        run_dir: a ``socmap train`` run folder.
        out: ``<stem>.tif``.
        resume: continue an interrupted multi-year map from its finished (block, year) files.
        overwrite: replace existing outputs.
        progress: ``progress(done, total)`` in region pixels x years.
        client: a connected ``distributed.Client`` (instead of ``map.scheduler``).
        limits: the previews' colour scale; None: shared by all years (2nd-98th percentile of the means).
    """
    started = time.perf_counter()
    plans = plan_years(options, years, run_dir, out)
    cube = cube_path(Path(out))
    _check_outputs(plans, cube, resume, overwrite)
    years_left = _pending(plans)
    todo = [b for b, n in years_left.items() if n]
    n_region = plans[0].n_region
    total = n_region * len(plans)
    counter = PixelProgress(total, total - sum(b.n_region * n for b, n in years_left.items()), progress)
    counter.report()
    threads = torch.get_num_threads()
    try:
        _run(tuple(p.job for p in plans), todo, years_left, options.scheduler, client, counter)
    finally:
        torch.set_num_threads(threads)
    limits = limits if limits is not None else _shared_limits(plans)
    n_mapped = {}
    for plan in plans:
        assert plan.year is not None
        n_mapped[plan.year] = write_outputs(plan, limits)
    write_cube(plans, cube)
    for plan in plans:
        shutil.rmtree(plan.blocks_dir, ignore_errors=True)
    first = plans[0]
    return YearsResult(
        years=[str(p.year) for p in plans],
        outs={str(p.year): p.out for p in plans},
        cube=cube,
        n_region_pixels=n_region,
        n_mapped=n_mapped,
        n_blocks=len(years_left),
        n_resumed=sum(len(plans) - n for n in years_left.values()),
        seconds=time.perf_counter() - started,
        method=first.job.method,
        model_kinds=model_kinds(first.members),
        unit=first.unit,
        target=first.target.column,
        bands=map_band_names(first),
        warnings=first.warnings,
    )


def _time_values(years: Sequence[str]) -> tuple[NDArray[np.float64], dict[str, str]]:
    """CF time coordinate of the labels: days since 1970-01-01 of 1 July of an integer year (the label's
    middle), else of the date the label parses to; refused when a label is neither."""
    import pandas as pd

    days = []
    for label in years:
        text = f"{label}-07-01" if re.fullmatch(r"\d{4}", label) else label
        try:
            stamp = pd.Timestamp(text)
        except ValueError:
            raise InputError(
                f"time label {label!r}: the NetCDF cube needs years or dates as time labels"
            ) from None
        days.append((stamp - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1))
    attrs = {
        "standard_name": "time",
        "long_name": "map year (1 July of the covariates' year)",
        "units": "days since 1970-01-01",
        "calendar": "standard",
        "axis": "T",
    }
    return np.asarray(days, np.float64), attrs


def _cf_name(band: str) -> str:
    """A NetCDF variable name for a band (``Q0.05`` -> ``Q0_05``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", band)


def write_cube(plans: Sequence[MapPlan], cube: Path) -> None:
    """The CF-1.8 NetCDF cube of the years' COGs (dims time, y, x; one variable per band), atomically.

    Args:
        plans: one per year, their COGs written.
        cube: the ``.nc`` to write.
    """
    import rasterio

    netCDF4 = _netcdf4()
    first = plans[0]
    crs = first.job.stack.grid.crs
    t = first.transform
    times, time_attrs = _time_values([str(p.year) for p in plans])
    with rasterio.open(first.out) as src:
        descriptions = src.descriptions
        units = src.units
        tags = src.tags()
    names = map_band_names(first)
    with atomic_file(cube, "time cube") as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.setncatts(
            {
                "Conventions": "CF-1.8",
                "title": f"{first.target.column} ({first.unit}) for {', '.join(str(p.year) for p in plans)}",
                "source": f"socmap {tags.get('socmap_version', '')}".strip(),
                "target": first.target.column,
                "depth": tags.get("depth", "unknown"),
                "models": tags.get("models", ""),
                "method": tags.get("method", ""),
                "region": tags.get("region", ""),
            }
        )
        nc.createDimension("time", len(plans))
        nc.createDimension("y", first.height)
        nc.createDimension("x", first.width)
        tv = nc.createVariable("time", "f8", ("time",))
        tv.setncatts(time_attrs)
        tv[:] = times
        labels = nc.createVariable("time_label", str, ("time",))
        labels.long_name = "socmap time label of the map year"
        for i, p in enumerate(plans):
            labels[i] = str(p.year)
        _write_xy(nc, t, first.width, first.height, crs)
        gm = nc.createVariable("spatial_ref", "i4")
        gm.setncatts({**_grid_mapping(crs), "GeoTransform": " ".join(map(str, t.to_gdal()))})
        chunks = (1, min(first.height, 256), min(first.width, 256))
        variables = []
        for name, desc, unit in zip(names, descriptions, units, strict=True):
            var = nc.createVariable(
                _cf_name(name),
                "f4",
                ("time", "y", "x"),
                zlib=True,
                complevel=4,
                chunksizes=chunks,
                fill_value=NODATA,
            )
            var.setncatts(
                {"long_name": desc or name, "units": unit or "1", "grid_mapping": "spatial_ref", "band": name}
            )
            variables.append(var)
        for i, plan in enumerate(plans):
            with rasterio.open(plan.out) as src:
                for b, var in enumerate(variables, start=1):
                    var[i, :, :] = src.read(b)


def _netcdf4() -> Any:
    """The netCDF4 module, or one line saying how to get it."""
    try:
        import netCDF4
    except ImportError:
        raise OutputError(
            "the NetCDF time cube needs the netCDF4 package (a socmap dependency): pip install netCDF4"
        ) from None
    return netCDF4


def _grid_mapping(crs: Any) -> dict[str, Any]:
    """CF grid-mapping attributes of a rasterio CRS (pyproj's ``to_cf``) plus its WKT."""
    from pyproj import CRS

    cf = CRS.from_wkt(crs.to_wkt()).to_cf()
    return {k: v for k, v in cf.items() if v is not None} | {"spatial_ref": cf.get("crs_wkt", crs.to_wkt())}


def _write_xy(nc: Any, t: Any, width: int, height: int, crs: Any) -> None:
    """Pixel-centre x/y coordinates (projected: ``projection_x_coordinate`` in the CRS's unit; geographic:
    longitude/latitude in degrees)."""
    from pyproj import CRS

    geographic = bool(crs.is_geographic)
    unit = CRS.from_wkt(crs.to_wkt()).axis_info[0].unit_name
    unit = "m" if unit in {"metre", "meter"} else unit
    for name, values, std, geo_name, geo_unit in (
        ("x", t.c + t.a * (np.arange(width) + 0.5), "projection_x_coordinate", "longitude", "degrees_east"),
        ("y", t.f + t.e * (np.arange(height) + 0.5), "projection_y_coordinate", "latitude", "degrees_north"),
    ):
        var = nc.createVariable(name, "f8", (name,))
        var.standard_name = geo_name if geographic else std
        var.units = geo_unit if geographic else unit
        var.axis = name.upper()
        var[:] = values


def read_cube(cube: str | Path, band: str = "mean") -> tuple[list[str], NDArray[np.float32]]:
    """The time labels and the ``[time, y, x]`` values (NaN = nodata) of one band of a cube.

    Args:
        cube: a ``socmap map --years`` NetCDF.
        band: a band name (``mean``, ``Q0.05``, ...).
    """
    netCDF4 = _netcdf4()
    path = Path(cube)
    if not path.is_file():
        raise InputError(f"cube {path} does not exist")
    with netCDF4.Dataset(path) as nc:
        name = _cf_name(band)
        if name not in nc.variables:
            raise InputError(f"cube {path}: no band {band!r}")
        values = np.ma.filled(nc.variables[name][:].astype(np.float32), np.nan)
        labels = [str(v) for v in nc.variables["time_label"][:]]
    return labels, values
