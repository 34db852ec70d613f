"""The map's plan: the output grid (region and bbox window), its blocks, the members and the resume manifest.

The output grid is the covariate working grid cut to the region's bounding box (and ``map.bbox``) and tiled
into square blocks of ``map.block_size`` pixels; a block that does not touch the region is never read. The
region is ``map.region``, else ``filters.region``, else the covariate grid's footprint (whose pixels without
data then become nodata through the nodata policy), see :func:`socmap.region.region_source`. The
plan also fixes the time labels of the map year, the uncertainty method and a manifest (run, models, year,
grid, window, block size, region, method): an interrupted map resumes only with an identical manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from rasterio.features import geometry_mask
from rasterio.transform import Affine
from shapely.geometry.base import BaseGeometry

from socmap import __version__
from socmap._atomic import write_json
from socmap.config import MapConfig, SocmapConfig
from socmap.data import RasterStack, discover_stack
from socmap.errors import InputError, OutputError
from socmap.mapping.members import cached_uncertainty, check_geometry, load_members, model_stamp
from socmap.mapping.uncertainty import uncertainty_method
from socmap.models import SocModel, TargetInfo, check_precision
from socmap.models.base import precision_note
from socmap.region import (
    RegionSource,
    grid_bounds_text,
    grid_footprint,
    load_region,
    lonlat_text,
    region_source,
    to_crs,
    to_lonlat,
)
from socmap.runfolder import RunFolder
from socmap.uncertainty.aoa import AOA_FILE
from socmap.uncertainty.runcal import CALIBRATION_FILE

__all__ = [
    "Block",
    "MapJob",
    "MapPlan",
    "check_options",
    "check_static_year",
    "map_region",
    "map_time_labels",
    "open_blocks_dir",
    "output_window",
    "parse_bbox",
    "plan_blocks",
    "plan_map",
    "png_paths",
    "region_mask",
]

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Block:
    """One tile of the output grid (absolute rows/cols of the working grid) and its pixels in the region."""

    row0: int
    row1: int
    col0: int
    col1: int
    n_region: int

    @property
    def name(self) -> str:
        """File name of the block's result in the block folder."""
        return f"r{self.row0:07d}_c{self.col0:07d}.npy"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (self.row1 - self.row0, self.col1 - self.col0)


@dataclass(frozen=True)
class MapJob:
    """Everything one block task needs; picklable, so it travels to Dask workers (which load the members)."""

    key: str
    stack: RasterStack
    model_dirs: tuple[str, ...]
    labels: tuple[str | None, ...]
    size: int
    steps: int
    min_valid_fraction: float
    region: BaseGeometry
    method: str
    blocks_dir: str
    batch_size: int
    batch_threads: int = 1
    run_dir: str = ""  # the calibration's and AOA's folder (empty: none)
    precision: str = "fp32"  # map.precision: deep-model inference in fp32 or bf16 autocast


@dataclass
class MapPlan:
    """The output grid, its blocks and the models: what :func:`socmap.mapping.map_soc` executes."""

    job: MapJob
    blocks: list[Block]
    out: Path
    year: str | None
    row_off: int
    col_off: int
    width: int
    height: int
    transform: Affine
    members: list[SocModel]
    manifest: dict[str, Any]
    region_name: str
    warnings: list[str] = field(default_factory=list)

    @property
    def n_region(self) -> int:
        """Pixels of the output grid whose centre lies in the region."""
        return sum(b.n_region for b in self.blocks)

    @property
    def model_ids(self) -> list[str]:
        """Every member's id (``model{i}`` when it has none)."""
        return [m.model_id or f"model{i}" for i, m in enumerate(self.members)]

    @property
    def target(self) -> TargetInfo:
        """The predicted property (column and unit)."""
        return self.members[0].require_inputs().target

    @property
    def unit(self) -> str:
        """The target's unit."""
        return self.target.unit

    @property
    def blocks_dir(self) -> Path:
        """``<out>.blocks/``: one ``.npy`` per finished block and the manifest."""
        return Path(self.job.blocks_dir)


def png_paths(out: Path) -> tuple[Path, Path]:
    """The map and uncertainty previews beside the COG (``soc_2023.png``, ``soc_2023_uncertainty.png``).

    Args:
        out: the COG's path.
    """
    return out.with_suffix(".png"), out.with_name(out.stem + "_uncertainty.png")


def _check_bbox(values: tuple[float, ...], shown: object) -> BBox:
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"map.bbox {shown!r}: expected four numbers minx,miny,maxx,maxy in the grid's CRS")
    minx, miny, maxx, maxy = values
    if minx >= maxx or miny >= maxy:
        raise InputError(f"map.bbox {shown!r}: expected minx < maxx and miny < maxy")
    return (minx, miny, maxx, maxy)


def parse_bbox(text: str) -> list[float]:
    """``minx,miny,maxx,maxy`` (text, in the working grid's CRS) as the list ``map.bbox`` holds.

    Args:
        text: four comma-separated numbers.
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    return list(_check_bbox(values, text))


def check_options(options: MapConfig) -> None:
    """Refuse options pydantic did not validate (e.g. a ``MapConfig.model_construct``), naming the key.

    Args:
        options: the ``map`` section.
    """
    if not 16 <= options.block_size <= 8192:
        raise InputError(f"map.block_size {options.block_size}: expected 16..8192 pixels")
    if options.batch_size < 1:
        raise InputError(f"map.batch_size {options.batch_size}: expected at least 1")
    if options.resolution is not None and not options.resolution > 0:
        raise InputError(f"map.resolution {options.resolution}: expected a positive pixel size")
    if options.bbox is not None:
        _check_bbox(tuple(float(v) for v in options.bbox), options.bbox)
    scheduler = options.scheduler
    if scheduler is not None and scheduler not in {"threads", "processes"} and "://" not in scheduler:
        raise InputError(
            f"map.scheduler {scheduler!r}: expected threads, processes or a dask.distributed address such as "
            "tcp://host:8786"
        )


def check_static_year(stack: RasterStack, year: str | None) -> None:
    """Refuse ``map.year`` for a stack without temporal bands: a map of static covariates has no year.

    Args:
        stack: the covariate stack.
        year: ``map.year``.
    """
    if not stack.temporal and year is not None:
        raise InputError(
            f"map.year {year}: the covariates are static (no temporal bands): a map of them has no year; "
            "leave map.year unset"
        )


def map_time_labels(stack: RasterStack, year: str | None, steps: int) -> list[str | None]:
    """The ``steps`` time labels ending at ``year`` (static stacks: ``None`` for every step).

    Args:
        stack: the covariate stack.
        year: ``map.year``: required with temporal bands, refused without them (a static map has no year).
        steps: the models' time steps.
    """
    if not stack.temporal:
        check_static_year(stack, year)
        return [None] * steps
    first, last = stack.time_labels[0], stack.time_labels[-1]
    if year is None:
        raise InputError(
            f"map.year is not set: the stack has temporal bands ({', '.join(stack.temporal)}) covering "
            f"{first}..{last}; set map.year to the time label to map"
        )
    labels: list[str | None] = stack.sequence(year, steps) if stack.has_time(year) else [None]
    if any(lab is None or not stack.has_time(lab) for lab in labels):
        need = year
        if stack.integer_labels and year.lstrip("-").isdigit():
            need = f"{int(year) - steps + 1}..{year}"
        raise InputError(
            f"map.year {year}: a map needs covariates for {need} ({steps} time steps, windows.time_steps), "
            f"but the stack covers {first}..{last}"
        )
    return labels


def output_window(
    stack: RasterStack, region: BaseGeometry, bbox: BBox | None, name: str = "the region"
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the grid covering the region's bounds (and the bbox), clipped to the grid.

    A region off the grid is refused with its name, its lon/lat bounds and the grid's bounds (grid CRS and
    lon/lat); a bbox off the region's part of the grid is refused naming ``map.bbox``.

    Args:
        stack: the covariate stack (its working grid).
        region: the region in the grid's CRS.
        bbox: ``map.bbox`` or None.
        name: the region in messages, e.g. ``area.geojson (map.region)``.
    """
    grid = stack.grid
    region_window = _clipped_window(grid.transform, grid.width, grid.height, region.bounds)
    if region_window is None:
        lonlat = to_lonlat(region, grid.crs, densify=0).bounds
        raise InputError(
            f"region {name} does not overlap the covariate grid: the region covers {lonlat_text(lonlat)}; "
            f"the grid covers {grid_bounds_text(grid)}"
        )
    if bbox is None:
        return region_window
    rminx, rminy, rmaxx, rmaxy = region.bounds
    cut = (max(rminx, bbox[0]), max(rminy, bbox[1]), min(rmaxx, bbox[2]), min(rmaxy, bbox[3]))
    window = _clipped_window(grid.transform, grid.width, grid.height, cut)
    if window is None:
        raise InputError(
            f"map.bbox {','.join(f'{v:g}' for v in bbox)} (in {grid.crs.to_string()}) does not overlap the "
            f"region {name} on the covariate grid; the grid covers {grid_bounds_text(grid)}"
        )
    return window


def _clipped_window(
    transform: Affine, width: int, height: int, bounds: tuple[float, float, float, float]
) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) of ``bounds`` (grid CRS) clipped to the grid; None when nothing is left."""
    minx, miny, maxx, maxy = bounds
    if minx >= maxx or miny >= maxy:
        return None
    inv = ~transform
    cols, rows = zip(*(inv @ (x, y) for x in (minx, maxx) for y in (miny, maxy)), strict=True)
    row0, row1 = max(math.floor(min(rows)), 0), min(math.ceil(max(rows)), height)
    col0, col1 = max(math.floor(min(cols)), 0), min(math.ceil(max(cols)), width)
    if row0 >= row1 or col0 >= col1:
        return None
    return row0, row1, col0, col1


def region_mask(
    region: BaseGeometry, transform: Affine, row0: int, row1: int, col0: int, col1: int
) -> NDArray[np.bool_]:
    """True where the pixel centre of grid rows [row0, row1) x cols [col0, col1) lies in the region.

    Args:
        region: the region in the grid's CRS.
        transform: the grid's transform.
        row0, row1, col0, col1: the grid window.
    """
    if row1 <= row0 or col1 <= col0:
        return np.zeros((max(row1 - row0, 0), max(col1 - col0, 0)), dtype=bool)
    return geometry_mask(
        [region],
        out_shape=(row1 - row0, col1 - col0),
        transform=transform @ Affine.translation(col0, row0),
        invert=True,
    )


def plan_blocks(
    region: BaseGeometry, transform: Affine, window: tuple[int, int, int, int], block_size: int
) -> list[Block]:
    """Tile the output window; count each tile's region pixels (tiles off the region hold 0: never read).

    Args:
        region: the region in the grid's CRS.
        transform: the grid's transform.
        window: (row0, row1, col0, col1) of the output grid.
        block_size: tile edge in pixels.
    """
    row0, row1, col0, col1 = window
    shapely.prepare(region)
    blocks = []
    for r in range(row0, row1, block_size):
        for c in range(col0, col1, block_size):
            r1, c1 = min(r + block_size, row1), min(c + block_size, col1)
            (x0, y0), (x1, y1) = transform @ (c, r), transform @ (c1, r1)
            tile = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            if not region.intersects(tile):
                n = 0
            elif region.contains(tile):
                n = (r1 - r) * (c1 - c)
            else:
                n = int(region_mask(region, transform, r, r1, c, c1).sum())
            blocks.append(Block(r, r1, c, c1, n))
    return blocks


def _resolution_notes(member: SocModel, stack: RasterStack, size: int) -> list[str]:
    """A warning when the map's pixel size differs from the training grid's."""
    trained = member.require_inputs().grid.get("resolution")
    if trained is None or np.allclose(trained, stack.grid.resolution, rtol=1e-6):
        return []
    return [
        f"mapping at {stack.grid.resolution[0]:g} units/px but the models were trained on windows at "
        f"{trained[0]:g}: a {size}x{size} window covers a different area than in training"
    ]


def _precision_notes(members: list[SocModel], precision: str) -> list[str]:
    """A warning when bf16 is asked on a CPU without native bf16, or of a run without deep models."""
    if precision == "fp32":
        return []
    if not any(_has_deep(m) for m in members):
        return [
            f"map.precision {precision}: the run has no deep model; tree, linear and kriging models always "
            "predict in float64 (the option changes nothing)"
        ]
    note = precision_note(precision)
    return [note] if note else []


def _has_deep(model: SocModel) -> bool:
    """Whether a model or one of its members/base is a deep model (the one kind bf16 changes)."""
    from socmap.models.deep import DeepModel

    inner = [getattr(model, "base", None), *getattr(model, "members", [])]
    return isinstance(model, DeepModel) or any(isinstance(m, SocModel) and _has_deep(m) for m in inner)


def map_region(
    options: MapConfig, config: SocmapConfig, stack: RasterStack
) -> tuple[BaseGeometry, RegionSource]:
    """The region in the grid's CRS and where it came from: ``map.region``, else the run config's
    ``filters.region``, else the covariate grid's footprint (its pixels without data become nodata).

    Args:
        options: the ``map`` section (``region``).
        config: the run's config (``filters.region``).
        stack: the covariate stack (its grid).
    """
    source = region_source(config, options.region)
    if source.path is None:
        return grid_footprint(stack.grid), source
    return to_crs(load_region(source.path), stack.grid.crs), source


def _digest(path: Path) -> str | None:
    """SHA-256 of a file, None when it is absent."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _manifest(
    folder: RunFolder,
    dirs: list[Path],
    options: MapConfig,
    stack: RasterStack,
    window: tuple[int, int, int, int],
    region: BaseGeometry,
    method: str,
    min_valid_fraction: float,
) -> dict[str, Any]:
    """What a resumed map must share with the interrupted one."""
    return {
        "socmap_version": __version__,
        "run_dir": str(folder.path.resolve()),
        "config": hashlib.sha256(folder.config_file.read_bytes()).hexdigest(),
        "models": [model_stamp(d) for d in dirs],
        "year": options.year,
        "grid": {k: v for k, v in stack.grid.to_json().items() if k != "crs_wkt"},
        "window": list(window),
        "block_size": options.block_size,
        "region": hashlib.sha256(shapely.to_wkb(region)).hexdigest(),
        "min_valid_fraction": min_valid_fraction,
        "method": method,
        "uncertainty": [_digest(folder.path / name) for name in (CALIBRATION_FILE, AOA_FILE)],
    } | ({"precision": options.precision} if options.precision != "fp32" else {})


def plan_map(options: MapConfig, run_dir: str | Path, out: str | Path) -> MapPlan:
    """Load the run's config and models, check the year, and tile the output grid (nothing is written).

    Args:
        options: the ``map`` section (year, region, resolution, bbox, block and batch size).
        run_dir: a ``socmap train`` run folder.
        out: the output COG (``.tif``).
    """
    folder, out = RunFolder(Path(run_dir)), Path(out)
    if out.suffix.lower() not in {".tif", ".tiff"}:
        raise OutputError(f"out {out}: expected a GeoTIFF file name ending in .tif")
    check_options(options)
    resolution = {"grid.resolution": options.resolution} if options.resolution is not None else {}
    config = folder.load_config(resolution)
    stack = discover_stack(config)
    check_static_year(stack, options.year)  # before the models are loaded: a quick one-line refusal
    precision = check_precision(options.precision)
    dirs, members = load_members(folder.path, stack.bands, precision)
    size, steps = check_geometry(dirs, members)
    labels = map_time_labels(stack, options.year, steps)
    region, source = map_region(options, config, stack)
    bbox = _check_bbox(tuple(float(v) for v in options.bbox), options.bbox) if options.bbox else None
    window = output_window(stack, region, bbox, source.label)
    blocks = plan_blocks(region, stack.grid.transform, window, options.block_size)
    if not any(b.n_region for b in blocks):
        raise InputError(
            f"no pixel centre of the region {source.label}{' inside map.bbox' if bbox else ''} lies on the "
            f"covariate grid ({grid_bounds_text(stack.grid)})"
        )
    found = cached_uncertainty(folder.path)
    method = uncertainty_method(members, found)
    min_valid = config.filters.min_valid_fraction
    manifest = _manifest(folder, dirs, options, stack, window, region, method, min_valid)
    job = MapJob(
        key=hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16],
        stack=stack,
        model_dirs=tuple(str(d) for d in dirs),
        labels=tuple(labels),
        size=size,
        steps=steps,
        min_valid_fraction=min_valid,
        region=region,
        method=method,
        blocks_dir=str(out.with_name(out.name + ".blocks")),
        batch_size=options.batch_size,
        run_dir=str(folder.path),
        precision=precision,
    )
    row0, row1, col0, col1 = window
    return MapPlan(
        job=job,
        blocks=blocks,
        out=out,
        year=options.year,
        row_off=row0,
        col_off=col0,
        width=col1 - col0,
        height=row1 - row0,
        transform=stack.grid.transform @ Affine.translation(col0, row0),
        members=members,
        manifest=manifest,
        region_name=source.name,
        warnings=_resolution_notes(members[0], stack, size) + _precision_notes(members, precision),
    )


def open_blocks_dir(plan: MapPlan, resume: bool, overwrite: bool) -> None:
    """Create, reuse (``resume``) or replace (``overwrite``) the block folder; refuse a foreign one.

    Args:
        plan: the map's plan.
        resume: continue from the finished blocks of an identical plan.
        overwrite: replace existing outputs and any interrupted map.
    """
    out, blocks_dir = plan.out, plan.blocks_dir
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass overwrite=True to replace it")
    for png in png_paths(out):
        if png.exists() and not (overwrite or resume):
            raise OutputError(f"output {png} exists; pass overwrite=True to replace it")
    manifest_path = blocks_dir / "manifest.json"
    if blocks_dir.exists() and (manifest_path.is_file() or any(blocks_dir.glob("r*.npy"))):
        old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if resume:
            diff = [k for k in plan.manifest if old.get(k) != plan.manifest[k]]
            if diff:
                raise OutputError(
                    f"resume: {blocks_dir} belongs to another map (different {', '.join(diff)}); pass "
                    "overwrite=True without resume to start over"
                )
            for stale in blocks_dir.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)
        elif overwrite:
            shutil.rmtree(blocks_dir)
        else:
            raise OutputError(
                f"{blocks_dir} holds an interrupted map; pass resume=True to continue it or overwrite=True "
                "to start over"
            )
    blocks_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        write_json(manifest_path, plan.manifest)
