"""One block: read its inputs once, apply the nodata policy, predict every pixel with every member, save.

A block reads every (band, time label) raster once for its rows and columns plus a halo of half the window,
cuts the ``[C, size, size, T]`` windows of all its valid pixels with a sliding-window view (the layout of
:func:`socmap.windows.extract_windows`), predicts them batch by batch and writes one ``.npy`` atomically.

Nodata policy: a pixel is nodata when its centre lies outside the region, when its window (all bands, pixels
and steps, counted exactly as ``valid_fraction`` in training) is less than ``filters.min_valid_fraction``
finite, or when fewer than half of the bands have data at the centre pixel in the map year (so lakes are
nodata, not guessed). Other NaN inputs are filled by each model exactly as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from rasterio.transform import Affine

from socmap._allocator import undo_dask_malloc_trim
from socmap._atomic import atomic_file
from socmap.coordinates import coordinate_values
from socmap.data import RasterStack, read_block
from socmap.mapping.members import cached_member, cached_uncertainty
from socmap.mapping.plan import Block, MapJob, region_mask
from socmap.mapping.uncertainty import LEVELS, N_BANDS, asks_quantiles, combine
from socmap.models import SocModel, predict_located
from socmap.models.base import FloatArray
from socmap.uncertainty.runcal import RunUncertainty
from socmap.windows import window_offsets

__all__ = [
    "InputReader",
    "compute_block",
    "job_members",
    "pixel_centres",
    "predict_members",
    "read_inputs",
    "run_block",
    "save_block",
    "valid_pixels",
]

PixelCallback = Callable[[int], None]
InputReader = Callable[[RasterStack, Sequence[str | None], int, int, int, int, int], NDArray[np.float32]]


def job_members(job: MapJob) -> list[SocModel]:
    """The job's models as every block uses them (Dask workers load them on their first block).

    Args:
        job: the map's job.
    """
    return [cached_member(d, job.stack.bands, job.precision) for d in job.model_dirs]


def read_inputs(
    stack: RasterStack, labels: Sequence[str | None], size: int, row0: int, row1: int, col0: int, col1: int
) -> NDArray[np.float32]:
    """[C, T, rows + size - 1, cols + size - 1] float32 (NaN = nodata) for grid rows [row0, row1) x cols
    [col0, col1) plus the window halo; static bands repeat over the steps, missing files are NaN.

    Args:
        stack: the covariate stack.
        labels: the time label of every step (None: no data for that step).
        size: the window edge in pixels.
        row0, row1, col0, col1: the grid window of the pixels to predict.
    """
    before, after = window_offsets(size)
    r0, r1, c0, c1 = row0 - before, row1 + after, col0 - before, col1 + after
    data = np.full((len(stack.bands), len(labels), r1 - r0, c1 - c0), np.nan, dtype=np.float32)
    for ch, band in enumerate(stack.bands):
        if band in stack.coordinates:  # generated from the pixel centres, as in prepare
            grid = stack.grid
            rr, cc = np.mgrid[r0:r1, c0:c1]
            data[ch] = coordinate_values(band, tuple(grid.transform), (grid.height, grid.width), rr, cc)
            continue
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
    ``valid_fraction``) and at least half of the bands finite at the centre pixel in the last step.

    Args:
        data: the block's inputs from :func:`read_inputs`.
        size: the window edge in pixels.
        min_valid_fraction: ``filters.min_valid_fraction``.
    """
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
    members: Sequence[SocModel],
    windows: NDArray[np.float32],
    method: str,
    batch_size: int,
    xy: FloatArray | None = None,
    found: RunUncertainty | None = None,
) -> FloatArray:
    """[8, N] float64 bands (:data:`socmap.mapping.uncertainty.BAND_NAMES`) of raw windows [N, C, H, W, T].

    Args:
        members: the models.
        windows: raw windows (NaN = nodata).
        method: the uncertainty method (quantiles are asked only when the bands need them).
        batch_size: windows per model call.
        xy: [N, 2] pixel-centre x/y in the grid CRS (passed to models that use locations, e.g. kriging).
        found: the run's calibration and AOA (None: none).
    """
    points: list[FloatArray] = []
    quantiles: list[FloatArray | None] = []
    ask = asks_quantiles(method, found)
    for m in members:
        point, q = predict_located(m, windows, xy, LEVELS if ask else None, batch_size)
        points.append(np.asarray(point, np.float64))
        quantiles.append(q)
    di = found.aoa.di(windows) if found is not None and found.aoa is not None else None
    return combine(points, quantiles, method, found, di)


def _cut_windows(
    views: NDArray[np.float32], ri: NDArray[np.intp], ci: NDArray[np.intp], sel: slice
) -> NDArray[np.float32]:
    """Contiguous [n, C, size, size, T] windows of the selected pixels (view: [C, T, rows, cols, s, s])."""
    return np.ascontiguousarray(views[:, :, ri[sel], ci[sel]].transpose(2, 0, 3, 4, 1))


def pixel_centres(transform: Affine, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> FloatArray:
    """[n, 2] x/y in the grid CRS of the centres of absolute grid pixels (rows, cols) (``transform``: the
    working grid's affine)."""
    t = transform
    c, r = cols + 0.5, rows + 0.5
    return np.column_stack([t.c + t.a * c + t.b * r, t.f + t.d * c + t.e * r]).astype(np.float64)


def compute_block(
    job: MapJob,
    block: Block,
    members: Sequence[SocModel] | None = None,
    on_pixels: PixelCallback | None = None,
    read: InputReader = read_inputs,
) -> NDArray[np.float32]:
    """[8, rows, cols] float32 (NaN = nodata) for one block; ``on_pixels`` gets each batch's pixel count.

    Args:
        job: the map's job.
        block: the tile to compute.
        members: the models (default: :func:`job_members`).
        on_pixels: progress callback, called in this thread.
        read: reads the inputs (default :func:`read_inputs`; a multi-year map slices one shared read).
    """
    members = members if members is not None else job_members(job)
    h, w = block.shape
    result = np.full((N_BANDS, h, w), np.nan, dtype=np.float32)
    found = cached_uncertainty(job.run_dir) if job.run_dir else None
    mask = region_mask(job.region, job.stack.grid.transform, block.row0, block.row1, block.col0, block.col1)
    if not mask.any():
        return result
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r_lo, r_hi, c_lo, c_hi = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    r0, c0 = block.row0, block.col0
    data = read(job.stack, job.labels, job.size, r0 + r_lo, r0 + r_hi, c0 + c_lo, c0 + c_hi)
    channels = job.stack.data_channels  # generated coordinates never count as data
    observed = data if len(channels) == data.shape[0] else data[channels]
    valid = mask[r_lo:r_hi, c_lo:c_hi] & valid_pixels(observed, job.size, job.min_valid_fraction)
    ri, ci = np.nonzero(valid)
    xy = (
        pixel_centres(job.stack.grid.transform, r0 + r_lo + ri, c0 + c_lo + ci)
        if any(m.uses_xy() for m in members)
        else None
    )
    views = sliding_window_view(data, (job.size, job.size), axis=(2, 3))  # [C, T, rows, cols, size, size]
    values = np.empty((N_BANDS, ri.size))

    def predict_batch(start: int) -> int:
        if torch.get_num_threads() != 1:  # a pool thread starts with OpenMP's default thread count
            torch.set_num_threads(1)
        sel = slice(start, start + job.batch_size)
        windows = _cut_windows(views, ri, ci, sel)
        values[:, sel] = predict_members(
            members, windows, job.method, job.batch_size, xy[sel] if xy is not None else None, found
        )
        return windows.shape[0]

    starts = range(0, ri.size, job.batch_size)
    with ThreadPoolExecutor(max(1, min(job.batch_threads, len(starts)))) as pool:
        for n in pool.map(predict_batch, starts):  # results in order, reported from this thread
            if on_pixels is not None:
                on_pixels(n)
    result[:, r_lo + ri, c_lo + ci] = values
    return result


def single_thread_blas() -> None:
    """numpy's BLAS on one thread in this process (the AOA's distance products): a map runs batches or blocks
    side by side, one per core, and a multi-threaded BLAS under each of them oversubscribes the cores (OpenBLAS
    threads spin while they wait). The in-process scheduler restores the count afterwards
    (:func:`socmap.mapping.schedulers.run_blocks`)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    if any(p.get("num_threads", 1) != 1 for p in threadpool_info() if p.get("user_api") == "blas"):
        threadpool_limits(1, user_api="blas")


def save_block(path: Path, values: NDArray[np.float32]) -> None:
    """Write one block's result atomically (a killed task leaves only a temporary file, never a block).

    Args:
        path: ``<blocks_dir>/<block.name>``.
        values: the block's [8, rows, cols] result.
    """
    with atomic_file(path, "map block", need=values.nbytes + 128) as tmp:
        np.save(tmp, values)


def run_block(
    job: MapJob,
    block: Block,
    members: Sequence[SocModel] | None = None,
    on_pixels: PixelCallback | None = None,
) -> int:
    """The task: compute one block and write ``<blocks_dir>/<block.name>``; returns its mapped pixels.

    torch runs every op on one thread, whatever the scheduler: torch's multi-threaded kernels may round
    differently with another thread count, and a map must not depend on where its blocks ran (tree models
    predict on one thread too, see :meth:`SocModel.for_inference`, and so does numpy's BLAS). Parallelism comes from
    ``job.batch_threads`` batches at a time, or from Dask running several blocks at once.

    Args:
        job: the map's job.
        block: the tile to compute.
        members: the models (default: :func:`job_members`).
        on_pixels: progress callback (pixels of each finished batch).
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    single_thread_blas()
    undo_dask_malloc_trim()
    values = compute_block(job, block, members, on_pixels)
    save_block(Path(job.blocks_dir) / block.name, values)
    return int(np.isfinite(values[0]).sum())
