"""The output: finished blocks assembled into a tiled GeoTIFF, converted to a Cloud-Optimized GeoTIFF
(float32, nodata -9999, DEFLATE, average-resampled overviews) with band descriptions and tags saying how each
band was made; the PNG previews are rendered from the COG before it is renamed into place.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
import torch
from numpy.typing import NDArray
from rasterio.enums import Interleaving
from rasterio.windows import Window

from socmap import __version__
from socmap._atomic import atomic_file, writing
from socmap.errors import OutputError
from socmap.mapping.members import cached_uncertainty
from socmap.mapping.plan import Block, MapPlan, png_paths
from socmap.mapping.previews import ColorLimits, render_previews
from socmap.mapping.uncertainty import N_BANDS, band_descriptions, band_names, model_kinds
from socmap.models import TargetInfo

__all__ = ["LUCAS_DEPTH", "NODATA", "depth_tag", "map_band_names", "map_tags", "write_outputs"]

NODATA = -9999.0
LUCAS_DEPTH = "0-20 cm (LUCAS topsoil)"
STATIC_YEAR = "none (static covariates)"


def depth_tag(target: TargetInfo) -> str:
    """LUCAS topsoil depth only when the target is LUCAS OC in g/kg; nothing else tells the depth.

    Args:
        target: the predicted property.
    """
    unit = target.unit.replace(" ", "").lower()
    return LUCAS_DEPTH if target.column == "OC" and unit == "g/kg" else "unknown"


def map_tags(plan: MapPlan) -> dict[str, str]:
    """Dataset tags: year, covariate years, depth, target, models, method, window, region, nodata policy.

    Args:
        plan: the map's plan.
    """
    job, target = plan.job, plan.target
    labels = [lab for lab in job.labels if lab is not None]
    descriptions = _descriptions(plan)
    return {
        "year": plan.year if plan.year is not None else STATIC_YEAR,
        "covariate_time_labels": ",".join(labels) or STATIC_YEAR,
        "depth": depth_tag(target),
        "target": target.column,
        "unit": plan.unit,
        "model_ids": ",".join(plan.model_ids),
        "n_models": str(len(plan.members)),
        "model_kinds": model_kinds(plan.members),
        "models": "; ".join(m.describe() for m in plan.members),
        "method": f"{job.method}: " + "; ".join(descriptions[1:5]),
        "spread": descriptions[5],
        "aoa": descriptions[7],
        "window": f"{job.size}x{job.size} px x {job.steps} steps",
        "region": plan.region_name,
        "nodata_policy": (
            "nodata outside the region (pixel centre), where the window is less than "
            f"{job.min_valid_fraction:.0%} valid (filters.min_valid_fraction) or where fewer than half of "
            "the bands have data at the centre pixel in the map year; other missing inputs are filled with "
            "training means (deep models: of their band and step; tree and linear models: of each window "
            "feature)"
        ),
        "precision": (
            "fp32"
            if job.precision == "fp32"
            else f"{job.precision}: deep models under torch.autocast (map.precision); other kinds in float64"
        ),
        "socmap_version": __version__,
    }


def _descriptions(plan: MapPlan) -> tuple[str, ...]:
    found = cached_uncertainty(plan.job.run_dir) if plan.job.run_dir else None
    return band_descriptions(plan.job.method, plan.members, plan.unit, plan.target.column, found)


def map_band_names(plan: MapPlan) -> tuple[str, ...]:
    """The COG's band names (the interval's from the calibration's nominal coverage).

    Args:
        plan: the map's plan.
    """
    found = cached_uncertainty(plan.job.run_dir) if plan.job.run_dir else None
    calib = found.calibration if found is not None and plan.job.method == "conformal" else None
    return band_names(calib.nominal if calib is not None else 0.9)


def cog_blocksize(width: int, height: int) -> int:
    """Tiles small enough that even a small map gets overviews (GDAL adds levels down to one tile).

    Args:
        width, height: the map's size in pixels.
    """
    largest = max(width, height)
    return 512 if largest >= 4096 else 256 if largest >= 1024 else 128


def _block_values(plan: MapPlan, block: Block) -> NDArray[np.float32]:
    """A finished block's [8, rows, cols] (NaN = nodata); all NaN for a block off the region."""
    h, w = block.shape
    if not block.n_region:
        return np.full((N_BANDS, h, w), np.nan, dtype=np.float32)
    path = plan.blocks_dir / block.name
    values = np.load(path)
    if values.shape != (N_BANDS, h, w):
        raise OutputError(f"block file {path} has shape {values.shape}; map again with overwrite=True")
    return np.asarray(values, dtype=np.float32)


MOSAIC_TILE = 256  # tile edge of the uncompressed mosaic: edge tiles are padded to it


def mosaic_bytes(plan: MapPlan) -> int:
    """Bytes of the uncompressed mosaic (``assembled.tif``) the COG is copied from: the largest write of a map."""
    tiles = -(-plan.width // MOSAIC_TILE) * -(-plan.height // MOSAIC_TILE)
    return N_BANDS * 4 * tiles * MOSAIC_TILE**2


def map_space_needed(plan: MapPlan, todo_pixels: int) -> int:
    """Bytes a map still needs at its peak: its remaining blocks, the uncompressed mosaic and the COG (at
    most as large as the mosaic; DEFLATE usually makes it much smaller)."""
    return N_BANDS * 4 * todo_pixels + 2 * mosaic_bytes(plan)


def check_complete(path: Path) -> None:
    """Raise ENOSPC when the GeoTIFF ``path`` ends before its last tile: libtiff reports a full disk only on
    stderr and GDAL's write returns normally, so a truncated file is caught here, before it gets a final name."""
    size = path.stat().st_size
    try:
        with rasterio.open(path) as src:
            bands = [1] if src.interleaving == Interleaving.pixel else list(range(1, src.count + 1))
            bh, bw = src.block_shapes[0]
            ends = [
                int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b) or 0)
                + int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b) or 0)
                for b in bands
                for y in range(-(-src.height // bh))
                for x in range(-(-src.width // bw))
            ]
    except rasterio.errors.RasterioError:
        ends = [size + 1]  # not even its directory could be read
    if max(ends, default=0) > size:
        raise OSError(errno.ENOSPC, f"{path} is truncated ({size} bytes, tiles end at {max(ends)})")


def assemble(plan: MapPlan, path: Path) -> int:
    """Write every block into a tiled GeoTIFF ``path`` (descriptions, units, tags); returns mapped pixels.

    Args:
        plan: the map's plan (every block with region pixels finished).
        path: the GeoTIFF to write.
    """
    with writing(path, "map mosaic", need=mosaic_bytes(plan)):
        try:
            n_mapped = _write_mosaic(plan, path)
            check_complete(path)
        except BaseException:
            path.unlink(missing_ok=True)  # a truncated mosaic must not fill the disk of the resumed run
            raise
    return n_mapped


def _write_mosaic(plan: MapPlan, path: Path) -> int:
    """The body of :func:`assemble`."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": N_BANDS,
        "width": plan.width,
        "height": plan.height,
        "crs": plan.job.stack.grid.crs,
        "transform": plan.transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": MOSAIC_TILE,
        "blockysize": MOSAIC_TILE,
        "BIGTIFF": "IF_SAFER",
    }
    n_mapped, n_aoa, n_inside = 0, 0, 0
    descriptions = _descriptions(plan)
    with rasterio.open(path, "w", **profile) as dst:
        for block in plan.blocks:
            values = _block_values(plan, block)
            n_mapped += int(np.isfinite(values[0]).sum())
            n_aoa += int(np.isfinite(values[7]).sum())
            n_inside += int((values[7] == 1).sum())
            h, w = block.shape
            window = Window(block.col0 - plan.col_off, block.row0 - plan.row_off, w, h)
            dst.write(
                np.where(np.isnan(values), np.float32(NODATA), values).astype(np.float32), window=window
            )
        dst.descriptions = descriptions
        dst.units = (plan.unit,) * 6 + ("1", "1")
        dst.update_tags(**map_tags(plan))
        if n_aoa:
            dst.update_tags(aoa_share_inside=f"{n_inside / n_aoa:.6f}")
        for i, (name, text) in enumerate(zip(map_band_names(plan), descriptions, strict=True), start=1):
            dst.update_tags(i, name=name, method=text)
    return n_mapped


def write_outputs(plan: MapPlan, limits: ColorLimits | None = None) -> int:
    """Assemble the finished blocks into the COG and render the PNGs (each atomically); returns mapped pixels.

    Args:
        plan: the map's plan.
        limits: (vmin, vmax) of the prediction preview's colour scale; None: the 2nd and 98th percentiles
            of the mapped predictions (:func:`socmap.mapping.previews.color_limits`).
    """
    assembled = plan.blocks_dir / "assembled.tif"
    n_mapped = assemble(plan, assembled)
    png, uncertainty_png = png_paths(plan.out)
    with atomic_file(plan.out, "map COG") as tmp:
        tmp.unlink()
        rasterio.shutil.copy(
            assembled,
            tmp,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            OVERVIEW_RESAMPLING="AVERAGE",
            BLOCKSIZE=cog_blocksize(plan.width, plan.height),
            BIGTIFF="IF_SAFER",
            NUM_THREADS=str(torch.get_num_threads()),  # deflate on the map's cores: same bytes, ~2x faster
        )
        check_complete(tmp)
        render_previews(tmp, plan, png, uncertainty_png, limits)
    assembled.unlink(missing_ok=True)
    return n_mapped
