"""Mapping: SOC for every pixel of a region from a trained run's model ensemble, as a Cloud-Optimized GeoTIFF.

How: the output grid is the covariate working grid cut to the region's bounding box (optionally to ``bbox``)
and split into square blocks. A block reads every (band, time label) raster once for its rows and columns
plus a halo of half the window, cuts the [C, size, size, T] windows of all its pixels at once with a
sliding-window view (the layout of :func:`socmap.windows.extract_windows`), predicts them batch by batch
with every model of the run (``torch.inference_mode``; 1024 windows per batch by default, since cache-sized
batches run faster on a CPU than huge ones) and writes one small ``.npy`` result atomically into
``<out>.blocks/``. Blocks are independent tasks: they run in a plain loop, as Dask tasks on threads or
processes, or on a dask.distributed cluster; an interrupted map resumes with its finished blocks untouched;
memory is bounded by the block and batch size, never by the region. When every block exists they are
assembled into a tiled GeoTIFF, converted to a COG (DEFLATE, average-resampled overviews) and rendered as two
PNG previews; the block folder is then deleted.

Speed and reproducibility: models run as frozen TorchScript (:func:`inference_copy`, checked against the eager
model) with one torch thread per op; parallelism comes from several batches (in-process loop) or blocks (Dask)
at once, so a map is bit-identical whichever scheduler computed its blocks.

Nodata policy: a pixel is nodata when its centre lies outside the region polygon (``geometry_mask``,
``all_touched=False``), when its window (all bands, pixels and steps, counted exactly as ``valid_fraction`` in
training) is less than ``filters.min_valid_fraction`` finite, or when fewer than half of the bands have data at
the centre pixel in the map year (so lakes are nodata, not guessed). Other NaN inputs become the training
mean of their band and step, exactly as in training.

Bands (float32, nodata -9999): 1 = mean of the members' point predictions (original scale); 2 Q05, 3 Q95,
4 std, from the first method that applies:
- ``interval_heads`` (every member has a quantile or gaussian_nll head with Q05/Q95): Q05 and Q95 are the
  members' head quantiles averaged across members; std = sqrt(mean member variance + variance of member
  predictions), with a member's sd = (Q95 - Q05) / (2 x 1.645);
- ``ensemble_spread`` (>= 2 point-prediction members): the 5 % / 95 % quantiles (linear interpolation) and the
  standard deviation (ddof=1) of the members' predictions: the spread of runs, not a prediction interval;
- ``none`` (one point-prediction model): bands 2-4 are nodata, and their descriptions say so.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.shutil
import shapely
import torch
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.transform import Affine
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from socmap import __version__
from socmap._atomic import atomic_file, write_json
from socmap.config import load_config
from socmap.data import RasterStack, discover_stack, read_block
from socmap.errors import InputError, OutputError
from socmap.predictor import Predictor, load_predictor, member_dirs
from socmap.region import load_region, to_crs
from socmap.windows import window_offsets

if TYPE_CHECKING:
    from distributed import Client

NODATA = -9999.0
BAND_NAMES = ("prediction", "q05", "q95", "std")
DEFAULT_BLOCK_SIZE = 512
DEFAULT_BATCH_SIZE = 1024
Z95 = 1.6448536269514722  # standard normal 95 % quantile
LUCAS_DEPTH = "0-20 cm (LUCAS topsoil)"
PNG_MAX_PIXELS = 1600  # previews are read from the COG's overviews at most this many pixels wide
METHODS = ("interval_heads", "ensemble_spread", "none")

ProgressCallback = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------ the plan
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
        return f"r{self.row0:07d}_c{self.col0:07d}.npy"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)


@dataclass(frozen=True)
class MapJob:
    """Everything one block task needs; picklable, so it travels to Dask workers."""

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


@dataclass
class MapPlan:
    """The output grid, its blocks and the models; what :func:`map_soc` executes."""

    job: MapJob
    blocks: list[Block]
    out: Path
    year: str
    row_off: int
    col_off: int
    width: int
    height: int
    transform: Affine
    members: list[Predictor]
    manifest: dict[str, Any]
    region_name: str
    warnings: list[str] = field(default_factory=list)

    @property
    def n_region(self) -> int:
        return sum(b.n_region for b in self.blocks)

    @property
    def model_ids(self) -> list[str]:
        return [str(p.spec.get("model_id", f"model{i}")) for i, p in enumerate(self.members)]

    @property
    def unit(self) -> str:
        return str(self.members[0].spec.get("target", {}).get("unit", "unknown"))

    @property
    def blocks_dir(self) -> Path:
        return Path(self.job.blocks_dir)


@dataclass
class MapResult:
    """What a finished map wrote and how it went."""

    out: Path
    png: Path
    uncertainty_png: Path
    year: str
    width: int
    height: int
    n_region_pixels: int
    n_mapped: int
    n_blocks: int
    n_blocks_resumed: int
    seconds: float
    method: str
    model_ids: list[str]
    warnings: list[str]


def png_paths(out: Path) -> tuple[Path, Path]:
    """The map and uncertainty previews written beside the COG (``soc_2023.png``, ``soc_2023_uncertainty.png``)."""
    return out.with_suffix(".png"), out.with_name(out.stem + "_uncertainty.png")


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` in the working grid's CRS (the CLI's --bbox)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"--bbox {text!r}: expected four numbers minx,miny,maxx,maxy in the grid's CRS")
    minx, miny, maxx, maxy = values
    if minx >= maxx or miny >= maxy:
        raise InputError(f"--bbox {text!r}: expected minx < maxx and miny < maxy")
    return (minx, miny, maxx, maxy)


def uncertainty_method(members: Sequence[Predictor]) -> str:
    """``interval_heads``, ``ensemble_spread`` or ``none`` (see the module docstring)."""

    def has_interval(p: Predictor) -> bool:
        if p.loss_type == "gaussian_nll":
            return True
        percents = {round(100 * q) for q in p.quantiles}
        return p.loss_type == "quantile" and {5, 50, 95} <= percents

    if members and all(has_interval(p) for p in members):
        return "interval_heads"
    return "ensemble_spread" if len(members) >= 2 else "none"


def band_descriptions(method: str, n_members: int, unit: str) -> tuple[str, str, str, str]:
    """What each band holds and exactly how it was produced (GDAL band descriptions)."""
    models = f"{n_members} model{'s' if n_members > 1 else ''}"
    pred = f"SOC prediction ({unit}): mean of {models}' point predictions"
    if method == "interval_heads":
        return (
            pred,
            f"Q05 ({unit}): 5% quantile of the models' interval heads, averaged over {models}",
            f"Q95 ({unit}): 95% quantile of the models' interval heads, averaged over {models}",
            f"std ({unit}): sqrt(mean member variance + variance of member predictions), member sd = "
            "(Q95-Q05)/3.29",
        )
    if method == "ensemble_spread":
        return (
            pred,
            f"Q05 ({unit}): 5% quantile of the {models}' predictions (run spread, not a prediction interval)",
            f"Q95 ({unit}): 95% quantile of the {models}' predictions (run spread, not a prediction interval)",
            f"std ({unit}): standard deviation (ddof=1) of the {models}' predictions (run spread)",
        )
    none = "not available: one point-prediction model (train --num-runs >= 2 or an interval loss); nodata"
    return (pred, f"Q05: {none}", f"Q95: {none}", f"std: {none}")


def _depth_tag(target: dict[str, Any]) -> str:
    """LUCAS topsoil depth only when the target is LUCAS OC in g/kg; nothing else tells the depth."""
    unit = str(target.get("unit", "")).replace(" ", "").lower()
    return LUCAS_DEPTH if target.get("column") == "OC" and unit == "g/kg" else "unknown"


def _output_window(
    stack: RasterStack, region: BaseGeometry, bbox: tuple[float, float, float, float] | None
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the grid covering the region's bounds (and the bbox), clipped to the grid."""
    grid = stack.grid
    minx, miny, maxx, maxy = region.bounds
    if bbox is not None:
        minx, miny = max(minx, bbox[0]), max(miny, bbox[1])
        maxx, maxy = min(maxx, bbox[2]), min(maxy, bbox[3])
    inv = ~grid.transform
    cols, rows = zip(*(inv @ (x, y) for x in (minx, maxx) for y in (miny, maxy)), strict=True)
    row0, row1 = max(math.floor(min(rows)), 0), min(math.ceil(max(rows)), grid.height)
    col0, col1 = max(math.floor(min(cols)), 0), min(math.ceil(max(cols)), grid.width)
    if minx >= maxx or miny >= maxy or row0 >= row1 or col0 >= col1:
        gb = rasterio.transform.array_bounds(grid.height, grid.width, grid.transform)
        raise InputError(
            f"the region{' and --bbox' if bbox else ''} do not overlap the covariate grid "
            f"(grid bounds {gb[0]:.6g},{gb[1]:.6g},{gb[2]:.6g},{gb[3]:.6g} in {grid.crs.to_string()})"
        )
    return row0, row1, col0, col1


def region_mask(
    region: BaseGeometry, transform: Affine, row0: int, row1: int, col0: int, col1: int
) -> NDArray[np.bool_]:
    """True where the pixel centre of grid rows [row0, row1) x cols [col0, col1) lies in the region."""
    if row1 <= row0 or col1 <= col0:
        return np.zeros((max(row1 - row0, 0), max(col1 - col0, 0)), dtype=bool)
    return geometry_mask(
        [region],
        out_shape=(row1 - row0, col1 - col0),
        transform=transform @ Affine.translation(col0, row0),
        invert=True,
    )


def _plan_blocks(
    region: BaseGeometry, transform: Affine, window: tuple[int, int, int, int], block_size: int
) -> list[Block]:
    """Tile the output window; count each tile's region pixels (tiles off the region hold 0: never read)."""
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


def _file_stat(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def plan_map(
    run_dir: str | Path,
    year: int | str,
    out: str | Path,
    region: str | Path | None = None,
    resolution: float | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> MapPlan:
    """Load the run's config and models, check the year, and tile the output grid (nothing is written)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.suffix.lower() not in {".tif", ".tiff"}:
        raise OutputError(f"--out {out}: expected a GeoTIFF file name ending in .tif")
    if not 16 <= block_size <= 8192:
        raise InputError(f"--block-size {block_size}: expected 16..8192 pixels")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected at least 1")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise InputError(f"run folder {run_dir}: config.yaml is missing (is it a socmap train run folder?)")
    overrides: dict[str, Any] = {"grid.resolution": resolution} if resolution is not None else {}
    config = load_config(config_path, overrides)
    stack = discover_stack(config)
    dirs = member_dirs(run_dir)
    members = [load_predictor(d, expected_bands=stack.bands) for d in dirs]
    size, steps = int(members[0].spec["window_size"]), int(members[0].spec["time_steps"])
    for d, p in zip(dirs, members, strict=True):
        if (int(p.spec["window_size"]), int(p.spec["time_steps"])) != (size, steps):
            raise InputError(
                f"model {d} uses {p.spec['window_size']} px x {p.spec['time_steps']} steps, but {dirs[0]} "
                f"uses {size} px x {steps} steps; an ensemble needs one window geometry"
            )

    year_label = str(year)
    labels: list[str | None] = [None] * steps
    if stack.temporal:
        first, last = stack.time_labels[0], stack.time_labels[-1]
        labels = stack.sequence(year_label, steps) if stack.has_time(year_label) else [None]
        if any(lab is None or not stack.has_time(lab) for lab in labels):
            need = year_label
            if stack.integer_labels and year_label.lstrip("-").isdigit():
                need = f"{int(year_label) - steps + 1}..{year_label}"
            raise InputError(
                f"year {year_label}: a map needs covariates for {need} ({steps} time steps, "
                f"windows.time_steps), but the stack covers {first}..{last}"
            )

    notes: list[str] = []
    trained = members[0].spec.get("grid", {}).get("resolution")
    if trained is not None and not np.allclose(trained, stack.grid.resolution, rtol=1e-6):
        notes.append(
            f"mapping at {stack.grid.resolution[0]:g} units/px but the models were trained on windows at "
            f"{trained[0]:g}: a {size}x{size} window covers a different area than in training"
        )
    region_path = Path(region) if region is not None else None  # the caller's path, as given
    if region_path is None and config.filters.region is not None:
        region_path = config.resolve(config.filters.region)
    region_geom = to_crs(load_region(region_path), stack.grid.crs)
    region_name = str(region_path) if region_path is not None else "embedded Bavaria boundary"
    row0, row1, col0, col1 = _output_window(stack, region_geom, bbox)
    blocks = _plan_blocks(region_geom, stack.grid.transform, (row0, row1, col0, col1), block_size)
    if not any(b.n_region for b in blocks):
        raise InputError(
            f"no pixel centre of the region{' inside --bbox' if bbox else ''} lies on the covariate grid"
        )

    method = uncertainty_method(members)
    manifest: dict[str, Any] = {
        "socmap_version": __version__,
        "run_dir": str(run_dir.resolve()),
        "config": hashlib.sha256(config_path.read_bytes()).hexdigest(),
        "models": [_file_stat(d / name) for d in dirs for name in ("model.pt", "model.json")],
        "year": year_label,
        "grid": {k: v for k, v in stack.grid.to_json().items() if k != "crs_wkt"},
        "window": [row0, row1, col0, col1],
        "block_size": block_size,
        "region": hashlib.sha256(shapely.to_wkb(region_geom)).hexdigest(),
        "min_valid_fraction": config.filters.min_valid_fraction,
        "method": method,
    }
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    job = MapJob(
        key=key,
        stack=stack,
        model_dirs=tuple(str(d) for d in dirs),
        labels=tuple(labels),
        size=size,
        steps=steps,
        min_valid_fraction=config.filters.min_valid_fraction,
        region=region_geom,
        method=method,
        blocks_dir=str(out.with_name(out.name + ".blocks")),
        batch_size=batch_size,
    )
    return MapPlan(
        job=job,
        blocks=blocks,
        out=out,
        year=year_label,
        row_off=row0,
        col_off=col0,
        width=col1 - col0,
        height=row1 - row0,
        transform=stack.grid.transform @ Affine.translation(col0, row0),
        members=members,
        manifest=manifest,
        region_name=region_name,
        warnings=notes,
    )


# ---------------------------------------------------------------------------------------------- one block
_MEMBERS: dict[tuple[Any, ...], Predictor] = {}
_MEMBERS_LOCK = threading.Lock()


def inference_copy(predictor: Predictor) -> Predictor:
    """The predictor with its model traced, frozen and optimised for CPU inference (fused conv + ReLU, oneDNN
    layouts): about 1.6x faster on one thread. Kept only if it reproduces the eager model on a probe batch
    (rtol 1e-5), else the eager model is used; ``Predictor`` still normalises and inverts the target."""
    spec = predictor.spec
    size, steps, channels = int(spec["window_size"]), int(spec["time_steps"]), len(spec["bands"])
    probe = torch.randn(64, channels, size, size, steps, generator=torch.Generator().manual_seed(0))
    model = predictor.model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and TorchScript notices
            fast = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(model, probe, check_trace=False))
            )
            same = torch.allclose(fast(probe[:37]), model(probe[:37]), rtol=1e-5, atol=1e-6)
    except Exception:  # a model TorchScript cannot trace: stay eager
        return predictor
    return dataclasses.replace(predictor, model=fast) if same else predictor


def _member(model_dir: str, bands: list[str]) -> Predictor:
    """A model ready for mapping (:func:`inference_copy`), built once per process and model file."""
    files = [Path(model_dir) / name for name in ("model.pt", "model.json")]
    key = (str(Path(model_dir).resolve()), *((f.stat().st_mtime_ns, f.stat().st_size) for f in files))
    with _MEMBERS_LOCK:
        found = _MEMBERS.get(key)
    if found is None:  # two threads may both build it: harmless, the results are identical
        found = inference_copy(load_predictor(model_dir, expected_bands=bands))
        with _MEMBERS_LOCK:
            if len(_MEMBERS) >= 16:
                _MEMBERS.clear()
            _MEMBERS[key] = found
    return found


def job_members(job: MapJob) -> list[Predictor]:
    """The job's models as used by every block (also on Dask workers, which load them on their first block)."""
    return [_member(d, job.stack.bands) for d in job.model_dirs]


def read_inputs(
    stack: RasterStack, labels: Sequence[str | None], size: int, row0: int, row1: int, col0: int, col1: int
) -> NDArray[np.float32]:
    """[C, T, rows + size - 1, cols + size - 1] float32 (NaN = nodata) for grid rows [row0, row1) x cols
    [col0, col1) plus the window halo; static bands repeat over the steps, missing files are NaN."""
    before, after = window_offsets(size)
    r0, r1, c0, c1 = row0 - before, row1 + after, col0 - before, col1 + after
    data = np.full((len(stack.bands), len(labels), r1 - r0, c1 - c0), np.nan, dtype=np.float32)
    for ch, band in enumerate(stack.bands):
        if band in stack.static:
            with stack.open(band, None) as (src, nodata):
                data[ch] = read_block(src, nodata, r0, r1, c0, c1)
            continue
        for k, label in enumerate(labels):
            if label is not None and (band, label) in stack.files:
                with stack.open(band, label) as (src, nodata):
                    data[ch, k] = read_block(src, nodata, r0, r1, c0, c1)
    return data


def valid_pixels(data: NDArray[np.float32], size: int, min_valid_fraction: float) -> NDArray[np.bool_]:
    """The nodata policy on inputs: window finite share >= min_valid_fraction (counted like training's
    ``valid_fraction``) and at least half of the bands finite at the centre pixel in the last step."""
    c, t = data.shape[:2]
    before, _ = window_offsets(size)
    finite = np.isfinite(data)
    counts = finite.sum(axis=(0, 1), dtype=np.int32)
    window_counts = sliding_window_view(counts, (size, size)).sum(axis=(2, 3))
    fraction = window_counts / (c * t * size * size)
    h, w = window_counts.shape
    centre = finite[:, -1, before : before + h, before : before + w].sum(axis=0)
    return (fraction >= min_valid_fraction) & (2 * centre >= c)


def predict_members(
    members: Sequence[Predictor], windows: NDArray[np.float32], method: str, batch_size: int
) -> NDArray[np.float64]:
    """[4, N] float64: ensemble mean, Q05, Q95, std of raw windows [N, C, H, W, T] (see module docstring)."""
    points, lows, highs = [], [], []
    for p in members:
        intervals = p.predict_intervals(windows, batch_size) if method == "interval_heads" else None
        if intervals is not None:  # q50 is exactly Predictor.predict for these heads; no second pass
            points.append(intervals["q50"])
            lows.append(intervals["q05"])
            highs.append(intervals["q95"])
        else:
            points.append(p.predict(windows, batch_size))
    pred = np.stack(points)
    out = np.full((4, windows.shape[0]), np.nan)
    out[0] = pred.mean(axis=0)
    if method == "interval_heads":
        lo, hi = np.stack(lows), np.stack(highs)
        out[1], out[2] = lo.mean(axis=0), hi.mean(axis=0)
        out[3] = np.sqrt((((hi - lo) / (2 * Z95)) ** 2).mean(axis=0) + pred.var(axis=0))
    elif method == "ensemble_spread":
        out[1], out[2] = np.quantile(pred, [0.05, 0.95], axis=0)
        out[3] = pred.std(axis=0, ddof=1)
    return out


def compute_block(
    job: MapJob,
    block: Block,
    members: Sequence[Predictor] | None = None,
    on_pixels: Callable[[int], None] | None = None,
) -> NDArray[np.float32]:
    """[4, rows, cols] float32 (NaN = nodata) for one block; ``on_pixels`` gets each batch's pixel count."""
    members = members if members is not None else job_members(job)
    h, w = block.shape
    result = np.full((4, h, w), np.nan, dtype=np.float32)
    mask = region_mask(job.region, job.stack.grid.transform, block.row0, block.row1, block.col0, block.col1)
    if not mask.any():
        return result
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r_lo, r_hi, c_lo, c_hi = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    data = read_inputs(
        job.stack,
        job.labels,
        job.size,
        block.row0 + r_lo,
        block.row0 + r_hi,
        block.col0 + c_lo,
        block.col0 + c_hi,
    )
    valid = mask[r_lo:r_hi, c_lo:c_hi] & valid_pixels(data, job.size, job.min_valid_fraction)
    ri, ci = np.nonzero(valid)
    views = sliding_window_view(data, (job.size, job.size), axis=(2, 3))  # [C, T, rows, cols, size, size]
    values = np.empty((4, ri.size))

    def predict_batch(start: int) -> int:
        sel = slice(start, start + job.batch_size)
        windows = np.ascontiguousarray(views[:, :, ri[sel], ci[sel]].transpose(2, 0, 3, 4, 1))
        values[:, sel] = predict_members(members, windows, job.method, job.batch_size)
        return windows.shape[0]

    starts = range(0, ri.size, job.batch_size)
    with ThreadPoolExecutor(max(1, min(job.batch_threads, len(starts)))) as pool:
        for n in pool.map(predict_batch, starts):  # results in order, reported from this thread
            if on_pixels is not None:
                on_pixels(n)
    result[:, r_lo + ri, c_lo + ci] = values
    return result


@functools.cache
def _undo_dask_malloc_trim() -> None:
    """Dask workers start with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's dynamic mmap
    threshold: every batch's multi-MB arrays then become fresh mmaps (page faults, zeroing), which halved a
    worker's throughput in benchmarks/bench_mapping.py. Where that variable is set, restore glibc's own upper
    limits (mmap 32 MB, trim 64 MB) once per process."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _save_block(path: Path, values: NDArray[np.float32]) -> None:
    """Write one block's result atomically (a killed task leaves only a temporary file, never a block)."""
    with atomic_file(path) as tmp:
        np.save(tmp, values)


def run_block(
    job: MapJob,
    block: Block,
    members: Sequence[Predictor] | None = None,
    on_pixels: Callable[[int], None] | None = None,
) -> int:
    """The task: compute one block and write ``<blocks_dir>/<block.name>``; returns its mapped pixels.

    torch runs every op on one thread, whatever the scheduler: torch's multi-threaded kernels may round
    differently with another thread count, and a map must not depend on where its blocks ran. Parallelism
    comes from ``job.batch_threads`` batches at a time, or from Dask running several blocks at once.
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    _undo_dask_malloc_trim()
    values = compute_block(job, block, members, on_pixels)
    _save_block(Path(job.blocks_dir) / block.name, values)
    return int(np.isfinite(values[0]).sum())


# ------------------------------------------------------------------------------------------------ running
def _open_blocks_dir(plan: MapPlan, resume: bool, overwrite: bool) -> None:
    """Create, reuse (``resume``) or replace (``overwrite``) the block folder; refuse a foreign one."""
    out, blocks_dir = plan.out, plan.blocks_dir
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass --overwrite to replace it")
    for png in png_paths(out):
        if png.exists() and not (overwrite or resume):
            raise OutputError(f"output {png} exists; pass --overwrite to replace it")
    manifest_path = blocks_dir / "manifest.json"
    if blocks_dir.exists() and (manifest_path.is_file() or any(blocks_dir.glob("r*.npy"))):
        old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if resume:
            diff = [k for k in plan.manifest if old.get(k) != plan.manifest[k]]
            if diff:
                raise OutputError(
                    f"--resume: {blocks_dir} belongs to another map (different {', '.join(diff)}); "
                    "pass --overwrite without --resume to start over"
                )
            for stale in blocks_dir.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)
        elif overwrite:
            shutil.rmtree(blocks_dir)
        else:
            raise OutputError(
                f"{blocks_dir} holds an interrupted map; pass --resume to continue it or --overwrite to "
                "start over"
            )
    blocks_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        write_json(manifest_path, plan.manifest)


def _run_dask_local(
    job: MapJob, todo: list[Block], scheduler: str, on_block: Callable[[Block, int], None]
) -> None:
    """Blocks as Dask tasks on the local threaded or multiprocessing scheduler."""
    from dask.base import compute
    from dask.callbacks import Callback
    from dask.delayed import delayed

    by_key = {f"socmap-block-{b.name}": b for b in todo}
    tasks = [delayed(run_block, pure=False)(job, b, dask_key_name=k) for k, b in by_key.items()]

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in by_key:
            on_block(by_key[key], int(result))

    with Callback(posttask=posttask):
        compute(*tasks, scheduler=scheduler)


def _run_distributed(
    job: MapJob, todo: list[Block], scheduler: str | Client, on_block: Callable[[Block, int], None]
) -> None:
    """Blocks as tasks on a dask.distributed cluster; every worker writes its own block files."""
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        [job_future] = client.scatter([job], broadcast=True)
        futures = {
            client.submit(run_block, job_future, b, key=f"socmap-{job.key}-{b.name}", pure=False): b
            for b in todo
        }
        try:
            for future in as_completed(futures):
                on_block(futures[future], int(future.result()))
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        if client is not scheduler:
            client.close()


def map_soc(
    run_dir: str | Path,
    year: int | str,
    out: str | Path,
    region: str | Path | None = None,
    resolution: float | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resume: bool = False,
    overwrite: bool = False,
    scheduler: str | Client | None = None,
    progress: ProgressCallback | None = None,
    vmax: float = 150.0,
) -> MapResult:
    """Map SOC of ``year`` over the region with every model of ``run_dir``; write ``out`` (COG) and two PNGs.

    ``scheduler``: None runs the blocks in a loop in this process; ``"threads"`` / ``"processes"`` use Dask's
    local schedulers; a ``tcp://host:port`` address (or a ``distributed.Client``) uses that cluster, whose
    workers must see the same file system. ``progress(done, total)`` counts region pixels. ``resume``
    continues an interrupted map from its finished blocks; ``overwrite`` replaces existing outputs.
    """
    started = time.perf_counter()
    if isinstance(scheduler, str) and scheduler not in {"threads", "processes"} and "://" not in scheduler:
        raise InputError(
            f"--scheduler {scheduler!r}: expected threads, processes or a dask.distributed address such as "
            "tcp://host:8786"
        )
    plan = plan_map(run_dir, year, out, region, resolution, bbox, block_size, batch_size)
    _open_blocks_dir(plan, resume, overwrite)
    job, total = plan.job, plan.n_region
    pending = [b for b in plan.blocks if b.n_region]
    todo = [b for b in pending if not (plan.blocks_dir / b.name).is_file()]
    done = sum(b.n_region for b in pending) - sum(b.n_region for b in todo)
    report = progress or (lambda _done, _total: None)
    report(done, total)

    def on_block(block: Block, _mapped: int) -> None:
        nonlocal done
        done += block.n_region
        report(done, total)

    threads = torch.get_num_threads()
    try:
        if not todo:
            pass
        elif scheduler is None:  # a loop over blocks; each block predicts `threads` batches at a time
            loop_job = dataclasses.replace(job, batch_threads=threads)
            members = job_members(job)
            for block in todo:
                counted = 0

                def on_pixels(n: int) -> None:
                    nonlocal counted
                    counted += n
                    report(done + counted, total)

                run_block(loop_job, block, members, on_pixels)
                on_block(block, 0)
        elif scheduler in {"threads", "processes"}:
            _run_dask_local(job, todo, str(scheduler), on_block)
        else:
            _run_distributed(job, todo, scheduler, on_block)
    finally:
        torch.set_num_threads(threads)  # run_block set 1 in this process
    n_mapped = write_outputs(plan, vmax)
    shutil.rmtree(plan.blocks_dir, ignore_errors=True)
    png, uncertainty_png = png_paths(plan.out)
    return MapResult(
        out=plan.out,
        png=png,
        uncertainty_png=uncertainty_png,
        year=plan.year,
        width=plan.width,
        height=plan.height,
        n_region_pixels=total,
        n_mapped=n_mapped,
        n_blocks=len(pending),
        n_blocks_resumed=len(pending) - len(todo),
        seconds=time.perf_counter() - started,
        method=job.method,
        model_ids=plan.model_ids,
        warnings=plan.warnings,
    )


# ------------------------------------------------------------------------------------------------ outputs
def _tags(plan: MapPlan) -> dict[str, str]:
    spec = plan.members[0].spec
    target = dict(spec.get("target", {}))
    labels = [lab for lab in plan.job.labels if lab is not None]
    size, steps = plan.job.size, plan.job.steps
    return {
        "year": plan.year,
        "covariate_time_labels": ",".join(labels),
        "depth": _depth_tag(target),
        "target": str(target.get("column", "unknown")),
        "unit": plan.unit,
        "model_ids": ",".join(plan.model_ids),
        "n_models": str(len(plan.members)),
        "loss_type": str(spec.get("loss_type", "unknown")),
        "method": f"{plan.job.method}: "
        + "; ".join(band_descriptions(plan.job.method, len(plan.members), plan.unit)[1:]),
        "window": f"{size}x{size} px x {steps} steps",
        "region": plan.region_name,
        "nodata_policy": (
            "nodata outside the region (pixel centre), where the window is less than "
            f"{plan.job.min_valid_fraction:.0%} valid (filters.min_valid_fraction) or where fewer than half of "
            "the bands have data at the centre pixel in the map year; other missing inputs are filled with the "
            "training mean of their band and step"
        ),
        "socmap_version": __version__,
    }


def _cog_blocksize(width: int, height: int) -> int:
    """Tiles small enough that even a small map gets overviews (GDAL adds levels down to one tile)."""
    largest = max(width, height)
    return 512 if largest >= 4096 else 256 if largest >= 1024 else 128


def write_outputs(plan: MapPlan, vmax: float = 150.0) -> int:
    """Assemble the finished blocks into the COG and render the PNGs (each atomically); returns mapped pixels."""
    blocks_dir, unit = plan.blocks_dir, plan.unit
    assembled = blocks_dir / "assembled.tif"
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": 4,
        "width": plan.width,
        "height": plan.height,
        "crs": plan.job.stack.grid.crs,
        "transform": plan.transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
    }
    n_mapped = 0
    descriptions = band_descriptions(plan.job.method, len(plan.members), unit)
    with rasterio.open(assembled, "w", **profile) as dst:
        for block in plan.blocks:
            h, w = block.shape
            if block.n_region:
                values = np.load(blocks_dir / block.name)
                if values.shape != (4, h, w):
                    raise OutputError(f"block file {blocks_dir / block.name} has shape {values.shape}; rerun")
                n_mapped += int(np.isfinite(values[0]).sum())
            else:
                values = np.full((4, h, w), np.nan, dtype=np.float32)
            window = Window(block.col0 - plan.col_off, block.row0 - plan.row_off, w, h)
            dst.write(
                np.where(np.isnan(values), np.float32(NODATA), values).astype(np.float32), window=window
            )
        dst.descriptions = descriptions
        dst.units = (unit,) * 4
        dst.update_tags(**_tags(plan))
        for i, (name, text) in enumerate(zip(BAND_NAMES, descriptions, strict=True), start=1):
            dst.update_tags(i, name=name, method=text)
    png, uncertainty_png = png_paths(plan.out)
    with atomic_file(plan.out) as tmp:
        tmp.unlink()
        rasterio.shutil.copy(
            assembled,
            tmp,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            OVERVIEW_RESAMPLING="AVERAGE",
            BLOCKSIZE=_cog_blocksize(plan.width, plan.height),
            BIGTIFF="IF_SAFER",
        )
        render_previews(tmp, plan, png, uncertainty_png, vmax)
    assembled.unlink(missing_ok=True)
    return n_mapped


def render_previews(cog: Path, plan: MapPlan, png: Path, uncertainty_png: Path, vmax: float = 150.0) -> None:
    """PNG of the prediction (0..vmax colour scale) and of the uncertainty (Q95-Q05 width, else std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with rasterio.open(cog) as src:
        scale = max(1, math.ceil(max(src.width, src.height) / PNG_MAX_PIXELS))
        shape = (4, math.ceil(src.height / scale), math.ceil(src.width / scale))
        data = src.read(out_shape=shape, masked=True, resampling=Resampling.average)  # from the overviews
        left, bottom, right, top = src.bounds
        crs_name = src.crs.to_string()
    extent = (left, right, bottom, top)
    unit, year, method = plan.unit, plan.year, plan.job.method
    models = plan.model_ids[0] if len(plan.model_ids) == 1 else f"ensemble of {len(plan.model_ids)} models"
    region = plan.job.region

    def figure(
        values: np.ma.MaskedArray[Any, Any] | None,
        title: str,
        label: str,
        cmap: str,
        top_value: float,
        path: Path,
    ) -> None:
        fig, ax = plt.subplots(figsize=(7, 7 * (top - bottom) / max(right - left, 1e-9) + 0.8), dpi=120)
        if values is not None:
            image = ax.imshow(
                values, extent=extent, cmap=cmap, vmin=0, vmax=top_value, interpolation="nearest"
            )
            fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        else:
            ax.text(0.5, 0.5, label, ha="center", va="center", transform=ax.transAxes, wrap=True)
        for poly in getattr(region, "geoms", [region]):
            for ring in [poly.exterior, *poly.interiors]:
                xs, ys = ring.xy
                ax.plot(xs, ys, color="black", lw=0.7)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_aspect("equal")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.set_xlabel(f"x ({crs_name})")
        ax.set_ylabel(f"y ({crs_name})")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)

    figure(data[0], f"SOC {year} ({unit}), {models}", f"SOC ({unit})", "viridis", vmax, png)
    if method == "none":
        text = "no uncertainty: one point-prediction model\n(train --num-runs >= 2 or an interval loss)"
        figure(None, f"SOC {year} uncertainty, {models}", text, "magma", 1.0, uncertainty_png)
        return
    width = data[2] - data[1]
    finite = width.compressed()
    top_value = float(np.percentile(finite, 98)) if finite.size else 1.0
    what = "interval heads" if method == "interval_heads" else "run spread"
    figure(
        width,
        f"SOC {year} Q95 - Q05 width ({unit}, {what}), {models}",
        f"Q95 - Q05 ({unit}; scale capped at its 98th percentile)",
        "magma",
        max(top_value, 1e-6),
        uncertainty_png,
    )
