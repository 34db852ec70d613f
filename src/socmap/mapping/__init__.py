"""Mapping: a soil property for every pixel of a region from a run's models, as a Cloud-Optimized GeoTIFF.

:func:`map_soc` is the stage. How it works, one module per step:

- :mod:`~socmap.mapping.plan`: the output grid is the covariate working grid cut to the region's bounding
  box (optionally to ``map.bbox``) and split into square blocks; a manifest makes a map resumable. The region
  is ``map.region``, else ``filters.region``, else the covariate grid's footprint (never a built-in region).
- :mod:`~socmap.mapping.members`: every model of the run (any :class:`~socmap.models.SocModel`), loaded
  once per process and made fast with :meth:`~socmap.models.SocModel.for_inference` (TorchScript,
  one-thread forests).
- :mod:`~socmap.mapping.blocks`: a block reads its rasters once with a half-window halo, cuts all windows at
  once, applies the nodata policy, predicts batch by batch and writes one ``.npy`` atomically into
  ``<out>.blocks/``.
- :mod:`~socmap.mapping.schedulers`: blocks run in a loop in this process, as Dask tasks on threads or
  processes, or on a dask.distributed cluster; each torch op and tree predict runs on one thread, so a map
  is bit-identical whichever scheduler computed its blocks; memory is bounded by block and batch size.
- :mod:`~socmap.mapping.uncertainty`: eight bands named like SoilGrids products: ``mean``, ``Q0.05``,
  ``Q0.5``, ``Q0.95`` (the calibrated prediction interval, ``conformal``; else the models' own, uncalibrated,
  ``model_intervals``; else nodata), ``PI90_width``, ``model_spread_sd`` (the spread between runs/models, not
  an interval), ``DI`` and ``AOA`` (the area of applicability, :mod:`socmap.uncertainty.aoa`).
- :mod:`~socmap.mapping.cog` and :mod:`~socmap.mapping.previews`: the assembled COG (float32, nodata -9999,
  DEFLATE, average overviews, descriptions and tags saying how each band was made; tag ``aoa_share_inside``)
  and PNG previews: prediction, interval width and the AOA (colour scale: the 2nd-98th percentile of the
  mapped values; titles name the target and its unit).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from socmap._atomic import check_free_space
from socmap.config import MapConfig
from socmap.mapping.blocks import compute_block, predict_members, read_inputs, run_block, valid_pixels
from socmap.mapping.cog import (
    LUCAS_DEPTH,
    NODATA,
    depth_tag,
    map_band_names,
    map_space_needed,
    map_tags,
    write_outputs,
)
from socmap.mapping.members import cached_member, load_members
from socmap.mapping.plan import Block, MapJob, MapPlan, open_blocks_dir, parse_bbox, plan_map, png_paths
from socmap.mapping.previews import ColorLimits, aoa_png_path, color_limits, render_previews
from socmap.mapping.schedulers import PixelProgress, ProgressCallback, run_blocks
from socmap.mapping.uncertainty import (
    BAND_NAMES,
    LEVELS,
    METHODS,
    N_BANDS,
    band_descriptions,
    band_names,
    combine,
    model_kinds,
    uncertainty_method,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "BAND_NAMES",
    "LEVELS",
    "LUCAS_DEPTH",
    "METHODS",
    "NODATA",
    "N_BANDS",
    "Block",
    "ColorLimits",
    "MapJob",
    "MapPlan",
    "MapResult",
    "ProgressCallback",
    "aoa_png_path",
    "band_descriptions",
    "band_names",
    "cached_member",
    "color_limits",
    "combine",
    "compute_block",
    "depth_tag",
    "load_members",
    "map_soc",
    "map_tags",
    "model_kinds",
    "parse_bbox",
    "plan_map",
    "png_paths",
    "predict_members",
    "read_inputs",
    "render_previews",
    "run_block",
    "uncertainty_method",
    "valid_pixels",
    "write_outputs",
]


@dataclass
class MapResult:
    """What a finished map wrote and how it went.

    Args:
        out: the COG.
        png: the prediction preview.
        uncertainty_png: the uncertainty preview.
        year: the mapped time label (None: static covariates).
        width, height: the map's size in pixels.
        n_region_pixels: pixels whose centre lies in the region.
        n_mapped: pixels with a prediction (the rest is nodata).
        n_blocks: blocks with region pixels.
        n_blocks_resumed: of those, blocks kept from an interrupted map.
        seconds: wall time of the call.
        method: the interval method (``conformal``, ``model_intervals`` or ``none``).
        model_ids: every member's id.
        model_kinds: the members' kinds (e.g. ``qrf`` or ``ensemble of rf+linear``).
        warnings: notes for the user (e.g. another resolution than in training).
        region: what was mapped: the region file, or ``covariate grid footprint (no map.region /
            filters.region set)``.
        aoa_png: the AOA preview (None: the run has no area of applicability).
        aoa_share: the share of mapped pixels inside the area of applicability (None: no AOA).
        bands: the COG's band names.
    """

    out: Path
    png: Path
    uncertainty_png: Path
    year: str | None
    width: int
    height: int
    n_region_pixels: int
    n_mapped: int
    n_blocks: int
    n_blocks_resumed: int
    seconds: float
    method: str
    model_ids: list[str]
    model_kinds: str
    warnings: list[str]
    region: str = ""
    aoa_png: Path | None = None
    aoa_share: float | None = None
    bands: tuple[str, ...] = ()


def map_soc(
    options: MapConfig,
    run_dir: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    client: Client | None = None,
    limits: ColorLimits | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> MapResult:
    """Map ``map.year`` over the region with every model of ``run_dir``; write ``out`` (COG) and two PNGs.

    Args:
        options: the ``map`` section: ``year`` (None only for stacks without temporal bands), ``region``
            (None: the run config's ``filters.region``, else the covariate grid's footprint, whose pixels
            without data are nodata), ``resolution``,
            ``bbox`` (grid CRS), ``block_size``, ``batch_size`` and ``scheduler`` (None: this process;
            ``threads`` / ``processes``: Dask's local schedulers; ``tcp://host:port``: that cluster, whose
            workers must see the same file system).
        run_dir: a ``socmap train`` run folder (its ``runs/run_<i>`` models are the members).
        out: the output COG (``.tif``); ``<stem>.png`` and ``<stem>_uncertainty.png`` are written beside it.
        resume: continue an interrupted map from its finished blocks (same plan only).
        overwrite: replace existing outputs (only once the new ones are complete).
        progress: ``progress(done, total)`` in region pixels.
        client: a connected ``distributed.Client`` to run the blocks on (instead of ``map.scheduler``).
        limits: (vmin, vmax) of the prediction preview's colour scale; None: the 2nd and 98th percentiles
            of the mapped values.
        on_warning: called at once with an early warning (too little free space for the blocks, the mosaic
            and the COG); None: the warning joins ``MapResult.warnings``.
    """
    started = time.perf_counter()
    plan = plan_map(options, run_dir, out)
    open_blocks_dir(plan, resume, overwrite)
    pending = [b for b in plan.blocks if b.n_region]
    todo = [b for b in pending if not (plan.blocks_dir / b.name).is_file()]
    counter = PixelProgress(
        plan.n_region, sum(b.n_region for b in pending) - sum(b.n_region for b in todo), progress
    )
    short = check_free_space(
        plan.blocks_dir.parent,
        map_space_needed(plan, sum(b.shape[0] * b.shape[1] for b in todo)),
        f"map {plan.out} (blocks, mosaic and COG)",
        refuse=False,
    )
    if short is not None:
        (on_warning or plan.warnings.append)(f"{short}; the map may stop when the disk is full")
    counter.report()
    run_blocks(plan.job, todo, options.scheduler, client, counter)
    n_mapped = write_outputs(plan, limits)
    shutil.rmtree(plan.blocks_dir, ignore_errors=True)
    png, uncertainty_png = png_paths(plan.out)
    aoa_share = _aoa_share(plan.out)
    return MapResult(
        out=plan.out,
        png=png,
        uncertainty_png=uncertainty_png,
        year=plan.year,
        width=plan.width,
        height=plan.height,
        n_region_pixels=plan.n_region,
        n_mapped=n_mapped,
        n_blocks=len(pending),
        n_blocks_resumed=len(pending) - len(todo),
        seconds=time.perf_counter() - started,
        method=plan.job.method,
        model_ids=plan.model_ids,
        model_kinds=model_kinds(plan.members),
        warnings=plan.warnings,
        region=plan.region_name,
        aoa_png=aoa_png_path(plan.out) if aoa_share is not None else None,
        aoa_share=aoa_share,
        bands=map_band_names(plan),
    )


def _aoa_share(cog: Path) -> float | None:
    """The COG's ``aoa_share_inside`` tag (None without an AOA)."""
    import rasterio

    with rasterio.open(cog) as src:
        value = src.tags().get("aoa_share_inside")
    return float(value) if value is not None else None
