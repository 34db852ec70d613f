"""Window tensors: [N, C, H, W, T] stacks cut around every sample, fast, and cached as a prepared folder.

Fast path: every raster file is opened once and read in row strips that hold samples; all windows of a strip
are cut at once with a sliding-window view (no Python loop over samples). ``extract_windows_naive`` is the
per-sample rasterio reference used by the tests and the benchmark to prove the fast path returns identical
arrays.

Nodata policy: nodata pixels, pixels outside the rasters and missing time steps (a missing file, or a step
before the first time label) are NaN in ``windows.npy``; each sample's ``valid_fraction`` (share of finite
values over all bands, pixels and steps) is stored, samples below ``filters.min_valid_fraction`` are dropped,
and at training and mapping time NaN becomes the training mean of its band and step (0 after normalisation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from pyproj import Transformer

from socmap import __version__
from socmap._atomic import atomic_dir, check_free_space, check_output_dir, write_json
from socmap.config import SocmapConfig, dump_config
from socmap.coordinates import coordinate_values
from socmap.data import (
    DROP_REASONS,
    GridSpec,
    RasterStack,
    discover_stack,
    load_samples,
    mask_and_scale,
    read_block,
)
from socmap.errors import InputError, OutputError
from socmap.models.base import EpochCallback, FitData, InputSpec, TargetInfo

__all__ = [
    "PreparedData",
    "PreparedMeta",
    "extract_windows",
    "extract_windows_naive",
    "load_prepared",
    "prepare",
    "window_offsets",
]

STRIP_ROWS = 512  # rows of sample centres read per strip (bounded memory on large rasters)


def window_offsets(size: int) -> tuple[int, int]:
    """Pixels before and after the centre: odd sizes are centred, even ones have the centre at size//2."""
    before = size // 2
    return before, size - 1 - before


@dataclass
class ExtractionPlan:
    """Which samples need which (band, time label) file, and at which time step of their sequence."""

    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    tasks: dict[tuple[str, str | None], list[tuple[NDArray[np.int64], int]]]
    n: int
    channels: list[str]
    size: int
    steps: int


def plan_extraction(
    stack: RasterStack,
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    times: list[str],
    size: int,
    steps: int,
) -> ExtractionPlan:
    """Group the (sample, step) pairs by file so each file is read once."""
    tasks: dict[tuple[str, str | None], list[tuple[NDArray[np.int64], int]]] = defaultdict(list)
    n = rows.size
    for band in stack.static:  # read once, copied to every step
        tasks[(band, None)].append((np.arange(n), 0))
    if stack.temporal:
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(times):
            by_label[label].append(i)
        for label, members in by_label.items():
            idx = np.asarray(members, dtype=np.int64)
            for k, step_label in enumerate(stack.sequence(label, steps)):
                if step_label is None:
                    continue
                for band in stack.temporal:
                    if (band, step_label) in stack.files:
                        tasks[(band, step_label)].append((idx, k))
    return ExtractionPlan(rows, cols, dict(tasks), n, stack.bands, size, steps)


def extract_windows(
    stack: RasterStack,
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    times: list[str],
    size: int,
    steps: int,
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Cut [N, C, size, size, steps] float32 windows (NaN = nodata) around pixel (row, col) of each sample.

    ``times`` is each sample's time label (ignored for static-only stacks); channels are static bands first,
    then temporal bands. Static bands repeat over the steps.
    """
    plan = plan_extraction(stack, rows, cols, times, size, steps)
    n, c = rows.size, len(stack.bands)
    if out is None:
        out = np.empty((n, c, size, size, steps), dtype=np.float32)
    out[...] = np.nan
    before, after = window_offsets(size)
    offsets = np.arange(size) - before
    for band in stack.coordinates:  # generated from pixel centres: identical to what a map block reads
        grid = stack.grid
        values = coordinate_values(
            band,
            tuple(grid.transform),
            (grid.height, grid.width),
            rows[:, None, None] + offsets[None, :, None],
            cols[:, None, None] + offsets[None, None, :],
        )
        out[:, stack.bands.index(band)] = values[..., None]
    for (band, label), jobs in plan.tasks.items():
        ch = stack.bands.index(band)
        sample_idx = np.concatenate([j[0] for j in jobs])
        step_idx = np.concatenate([np.full(j[0].size, j[1]) for j in jobs])
        order = np.argsort(rows[sample_idx], kind="stable")
        sample_idx, step_idx = sample_idx[order], step_idx[order]
        with stack.open(band, label) as (src, nodata):
            r_sorted = rows[sample_idx]
            start = 0
            while start < sample_idx.size:
                strip_top = r_sorted[start]
                stop = int(np.searchsorted(r_sorted, strip_top + STRIP_ROWS, side="left"))
                sel, ks = sample_idx[start:stop], step_idx[start:stop]
                r, cc = rows[sel], cols[sel]
                row0, row1 = int(r.min()) - before, int(r.max()) + after + 1
                col0, col1 = int(cc.min()) - before, int(cc.max()) + after + 1
                block = read_block(src, nodata, row0, row1, col0, col1)
                views = sliding_window_view(block, (size, size))
                windows = views[r - before - row0, cc - before - col0]  # [n, size, size]
                if band in stack.static:
                    out[sel, ch] = windows[..., None]
                else:
                    out[sel, ch, :, :, ks] = windows
                start = stop
    return out


def extract_windows_naive(
    stack: RasterStack,
    xs: NDArray[np.float64],
    ys: NDArray[np.float64],
    times: list[str],
    size: int,
    steps: int,
) -> NDArray[np.float32]:
    """Reference: for every sample, band and step, open the file and read one window (rasterio's own index)."""
    import rasterio.windows

    before, _ = window_offsets(size)
    out = np.full((xs.size, len(stack.bands), size, size, steps), np.nan, dtype=np.float32)
    grid = stack.grid
    for i in range(xs.size):
        for ch, band in enumerate(stack.bands):
            if band in stack.coordinates:
                row, col = (int(v[0]) for v in grid.rowcol(xs[i : i + 1], ys[i : i + 1]))
                r_idx, c_idx = np.mgrid[
                    row - before : row - before + size, col - before : col - before + size
                ]
                shape = (grid.height, grid.width)
                values = coordinate_values(band, tuple(grid.transform), shape, r_idx, c_idx)
                out[i, ch] = values[..., None]
                continue
            if band in stack.static:
                labels: list[str | None] = [None] * steps
            else:
                labels = list(stack.sequence(times[i], steps))
            for k, label in enumerate(labels):
                if band not in stack.static and (label is None or (band, label) not in stack.files):
                    continue
                with stack.open(band, label) as (src, nodata):
                    row, col = src.index(xs[i], ys[i])
                    win = rasterio.windows.Window(col - before, row - before, size, size)
                    bounded = win.intersection(rasterio.windows.Window(0, 0, src.width, src.height))
                    data = mask_and_scale(src, nodata, src.read(1, window=bounded, out_dtype="float32"))
                    r0, c0 = int(bounded.row_off - win.row_off), int(bounded.col_off - win.col_off)
                    out[i, ch, r0 : r0 + data.shape[0], c0 : c0 + data.shape[1], k] = data
    return out


# --------------------------------------------------------------------------------------------------- prepare
@dataclass
class PreparedMeta:
    """``meta.json`` of a prepared folder: bands, window geometry, grid, target, drops, warnings, fingerprint."""

    name: str
    bands: list[str]
    static_bands: list[str]
    temporal_bands: list[str]
    time_labels: list[str]
    time_steps: int
    window_size: int
    shape: list[int]
    grid: dict[str, Any]
    target: TargetInfo
    n_input_rows: int
    n_samples: int
    n_locations: int
    drops: dict[str, int]
    warnings: list[str]
    fingerprint: dict[str, Any]
    seconds: float = 0.0
    categorical_bands: list[str] = dataclasses.field(default_factory=list)
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    socmap_version: str = __version__
    nodata_policy: str = "NaN in windows.npy; filled with the training mean of band and step when used"

    def input_spec(self) -> InputSpec:
        """What a model fitted on these windows reads (see :class:`socmap.models.InputSpec`)."""
        return InputSpec(
            tuple(self.bands),
            tuple(self.static_bands),
            self.window_size,
            self.time_steps,
            tuple(self.time_labels),
            self.grid,
            self.target,
            tuple(self.categorical_bands),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON written as ``meta.json``."""
        out = dataclasses.asdict(self)
        out["target"] = self.target.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedMeta:
        """Inverse of :meth:`to_json` (unknown keys of older versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["target"] = TargetInfo.from_json(data.get("target", {}))
        return cls(**values)


@dataclass
class PreparedData:
    """A prepared data set: windows (memory-mapped), one row per sample, and its metadata."""

    path: Path
    windows: NDArray[np.float32]
    samples: pd.DataFrame
    meta: PreparedMeta

    @property
    def bands(self) -> list[str]:
        return list(self.meta.bands)

    @property
    def target(self) -> NDArray[np.float64]:
        return self.samples["target"].to_numpy(np.float64)

    @property
    def coords(self) -> NDArray[np.float64]:
        """[N, 2] lon/lat degrees of the samples."""
        return self.samples[["lon", "lat"]].to_numpy(np.float64)

    @property
    def xy(self) -> NDArray[np.float64]:
        """[N, 2] x/y of the samples in the working grid's CRS (what kriging models read)."""
        return self.samples[["x", "y"]].to_numpy(np.float64)

    def sigma(self) -> NDArray[np.float64] | None:
        """Per-sample measurement sd (``samples.uncertainty``), or None."""
        if "uncertainty" not in self.samples.columns:
            return None
        return self.samples["uncertainty"].to_numpy(np.float64)

    def fit_data(
        self,
        train: NDArray[np.int64],
        seed: int,
        workdir: Path | None = None,
        on_epoch: EpochCallback | None = None,
        stop_after_epoch: int | None = None,
    ) -> FitData:
        """The inputs of one fit on rows ``train``, with no monitoring rows: an early-stopping model carves its
        own from ``train``, so test rows are never seen (the one way train, cv, calibration and benchmarks
        build a fit)."""
        return FitData(
            self.windows,
            self.target,
            np.asarray(train, np.int64),
            np.empty(0, np.int64),
            self.meta.input_spec(),
            self.coords,
            self.sigma(),
            seed,
            workdir,
            on_epoch,
            stop_after_epoch,
            xy=self.xy,
        )

    def subset(self, rows: NDArray[np.int64]) -> PreparedData:
        """The same windows with only ``rows`` of the sample table (row positions renumbered from 0)."""
        return PreparedData(
            self.path, self.windows, self.samples.iloc[rows].reset_index(drop=True), self.meta
        )


def _data_hash(config: SocmapConfig) -> str:
    """Hash of everything that determines the prepared windows, with paths resolved to absolute ones (not
    the config file's folder): ``RUN/config.yaml`` (absolute paths) hashes as the config it was written from."""
    keys = ("samples", "filters", "covariates", "windows", "grid")
    payload = {k: getattr(config, k).model_dump(mode="json") for k in keys}
    for key, default in (("coordinates", "none"), ("oblique_angles", 6), ("categorical", [])):
        if payload["covariates"].get(key, default) == default:  # keys added later: old hashes unchanged
            payload["covariates"].pop(key, None)
    for section, key in (("samples", "path"), ("covariates", "root"), ("filters", "region")):
        value = getattr(getattr(config, section), key)
        if value is not None:
            payload[section][key] = str(config.resolve(Path(value)).resolve())
    return "v2-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _same_source(old: dict[str, Any], new: dict[str, Any], config: SocmapConfig) -> bool:
    """Whether a prepared folder's fingerprint is ``new``'s (or, for folders of earlier versions, hashed the
    older way from the same config) with the same input files."""
    if old == new:
        return True
    return old.get("inputs") == new["inputs"] and old.get("config_hash") == config.data_hash()


def _fingerprint(config: SocmapConfig, stack: RasterStack | None = None) -> dict[str, Any]:
    """What the cache depends on: the data config and the size and modification time of every input."""
    files = [config.resolve(config.samples.path)]
    if not files[0].is_file():
        raise InputError(f"samples file {files[0]} does not exist")
    if stack is not None:
        files += sorted(stack.files.values())
    stats = []
    for f in files:
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return {"config_hash": _data_hash(config), "inputs": stats}


def prepare(
    config: SocmapConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: Any = None,
) -> tuple[PreparedData, bool]:
    """Build (or reuse) the prepared folder ``out``; returns (data, reused).

    Writes ``windows.npy`` [N, C, H, W, T] float32, ``samples.parquet``, ``meta.json`` and ``config.yaml``,
    all in a temporary folder renamed when complete.
    """
    out = Path(out)
    say = progress or (lambda _msg: None)
    stack = discover_stack(config)
    fingerprint = _fingerprint(config, stack)
    if (out / "meta.json").is_file():
        reused = _reuse(out, fingerprint, config, overwrite, say)
        if reused is not None:
            return reused, True
    check_output_dir(out, overwrite, marker="meta.json")
    started = time.perf_counter()
    say("reading samples")
    table = load_samples(config)
    frame = table.frame
    grid = stack.grid
    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    x, y = to_grid.transform(frame["lon"].to_numpy(), frame["lat"].to_numpy())
    frame["x"], frame["y"] = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rows, cols = grid.rowcol(frame["x"].to_numpy(), frame["y"].to_numpy())
    frame["row"], frame["col"] = rows, cols
    table.frame = frame
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width) & np.isfinite(frame["x"])
    if not inside.any():
        _raise_all_outside(frame, grid, config)
    table.drop(~inside, "outside_rasters")
    if stack.temporal:
        covered = table.frame["time"].map(stack.has_time).to_numpy(bool)
        if not covered.any():
            span = f"{stack.time_labels[0]}..{stack.time_labels[-1]}"
            raise InputError(
                f"no sample's time lies within the covariates' time labels {span} "
                f"(sample times {table.frame['time'].min()}..{table.frame['time'].max()})"
            )
        table.drop(~covered, "time_outside_covariates")

    frame = table.frame
    size, steps = config.windows.size, config.windows.time_steps
    say(f"cutting {len(frame)} windows of {len(stack.bands)} bands x {size}x{size} x {steps} steps")
    windows = extract_windows(
        stack,
        frame["row"].to_numpy(np.int64),
        frame["col"].to_numpy(np.int64),
        list(frame["time"]),
        size,
        steps,
    )
    valid = np.isfinite(windows[:, stack.data_channels]).mean(axis=(1, 2, 3, 4))  # coordinates never count
    frame["valid_fraction"] = valid
    keep = valid >= config.filters.min_valid_fraction
    if not keep.any():
        raise InputError(
            f"every sample's window is less than {config.filters.min_valid_fraction:.0%} valid "
            "(all nodata?): check the rasters' nodata value and covariates.nodata"
        )
    table.frame = frame
    table.drop(~keep, "mostly_nodata")
    windows = windows[keep]
    frame = table.frame

    drops = {r: table.drops.get(r, 0) for r in DROP_REASONS if table.drops.get(r, 0)}
    meta = PreparedMeta(
        name=config.name,
        bands=stack.bands,
        static_bands=stack.static_bands,
        temporal_bands=stack.temporal,
        time_labels=stack.time_labels,
        time_steps=steps,
        window_size=size,
        shape=list(windows.shape),
        grid=grid.to_json(),
        target=TargetInfo(config.samples.target, config.samples.target_unit),
        n_input_rows=table.n_input,
        n_samples=len(frame),
        n_locations=int(frame[["lon", "lat"]].round(6).drop_duplicates().shape[0]),
        drops=drops,
        warnings=table.warnings + stack.notes + [f"warped {k}: {v}" for k, v in stack.warped.items()],
        fingerprint=fingerprint,
        seconds=round(time.perf_counter() - started, 3),
        categorical_bands=list(stack.categorical),
    )
    columns = [
        "sample_id",
        "lon",
        "lat",
        "x",
        "y",
        "row",
        "col",
        "time",
        "year",
        "target",
        "valid_fraction",
        "source_row",
    ]
    if "uncertainty" in frame.columns:
        columns.append("uncertainty")
    _write_prepared(out, windows, frame[columns], meta, config)
    return load_prepared(out), False


def _write_prepared(
    out: Path, windows: NDArray[np.float32], samples: pd.DataFrame, meta: PreparedMeta, config: SocmapConfig
) -> None:
    """Write the prepared folder atomically; refuse at once when its file system lacks the space.

    ``windows.npy`` is written with ordinary writes (a full disk is an error, not the SIGBUS of a memory map)
    and every file's size (``samples.parquet`` also its SHA-256) is recorded in ``meta.json`` so that
    :func:`load_prepared` can refuse a truncated or edited cache.
    """
    need = windows.nbytes + 1024 * (len(samples) + 64)
    check_free_space(out.absolute().parent, need, f"prepared folder {out} (windows.npy)")
    with atomic_dir(out, overwrite=True, marker="meta.json", what="prepared folder", need=need) as tmp:
        with open(tmp / "windows.npy", "wb") as fh:
            np.save(fh, np.ascontiguousarray(windows, dtype=np.float32), allow_pickle=False)
        samples.to_parquet(tmp / "samples.parquet", index=False)
        meta.files = {name: _file_record(tmp / name) for name in CACHE_FILES}
        write_json(tmp / "meta.json", meta.to_json())
        (tmp / "config.yaml").write_text(dump_config(config), encoding="utf-8")


CACHE_FILES = ("windows.npy", "samples.parquet")


def _file_record(path: Path) -> dict[str, Any]:
    """Size of a cache file, and the SHA-256 of small ones (the sample table; windows are checked by size
    and header, hashing gigabytes on every load would be slow)."""
    record: dict[str, Any] = {"bytes": path.stat().st_size}
    if path.suffix != ".npy":
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return record


def _reuse(
    out: Path, fingerprint: dict[str, Any], config: SocmapConfig, overwrite: bool, say: Any
) -> PreparedData | None:
    """The existing prepared folder ``out`` when it was made from the same config and inputs and is intact;
    None when it is to be rebuilt (``overwrite``); otherwise one line saying why it cannot be used."""
    try:
        old = _read_meta(out)
        if _same_source(old.get("fingerprint", {}), fingerprint, config):
            return load_prepared(out)
    except DamagedCache as exc:
        if not overwrite:
            raise DamagedCache(f"{exc}; pass --overwrite to rebuild it") from None
        say(f"rebuilding: {exc}")
        return None
    if not overwrite:
        raise OutputError(
            f"prepared folder {out} was made from another config or other input files; "
            "pass --overwrite to rebuild it"
        )
    return None


def _raise_all_outside(frame: pd.DataFrame, grid: GridSpec, config: SocmapConfig) -> None:
    """One line: where the samples fell and where the rasters are, both in lon/lat (the rasters also in their
    own CRS), and which config keys read the samples' coordinates."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    south, west, north, east = array_bounds(grid.height, grid.width, grid.transform)
    lon, lat = frame["lon"], frame["lat"]
    try:
        w, s, e, n = transform_bounds(grid.crs, "EPSG:4326", west, south, east, north)
        rasters = f"rasters lon {w:.4g}..{e:.4g}, lat {s:.4g}..{n:.4g} ("
    except Exception:  # a CRS without a lon/lat transform: the grid's own bounds only
        rasters = "rasters ("
    scfg = config.samples
    read = (
        f"samples.x / samples.y in samples.crs {scfg.crs}"
        if scfg.x is not None or scfg.y is not None
        else f"latitude/longitude columns in samples.crs {scfg.crs}"
    )
    raise InputError(
        f"all {len(frame)} samples fall outside the rasters: samples lon {lon.min():.4g}..{lon.max():.4g}, "
        f"lat {lat.min():.4g}..{lat.max():.4g} (read from {read}); {rasters}x {west:.6g}..{east:.6g}, "
        f"y {south:.6g}..{north:.6g} in {grid.crs.to_string()}). Are latitude and longitude swapped, or is "
        "samples.crs wrong? (projected sample coordinates go in samples.x / samples.y with their samples.crs)"
    )


class DamagedCache(InputError):
    """A prepared folder whose files are truncated, edited or unreadable (never used silently)."""


def _read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` of a prepared folder as a dict; unreadable JSON is a :class:`DamagedCache`."""
    path = folder / "meta.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedCache(
            f"prepared folder {folder} is damaged: meta.json is not valid JSON ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise DamagedCache(f"prepared folder {folder} is damaged: meta.json does not hold a JSON object")
    return data


def _check_files(folder: Path, meta: PreparedMeta) -> None:
    """Compare every cache file with the size (and hash) recorded at prepare time (folders of versions
    without ``meta.files`` are checked by shape only)."""
    for name, record in meta.files.items():
        path = folder / name
        size = path.stat().st_size
        if size != record.get("bytes"):
            raise DamagedCache(
                f"prepared folder {folder} is damaged: {name} is {size} bytes, {record.get('bytes')} when "
                "prepared (truncated or edited)"
            )
        digest = record.get("sha256")
        if digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DamagedCache(
                f"prepared folder {folder} is damaged: {name} was edited since it was prepared (its SHA-256 "
                "differs from meta.json)"
            )


def load_prepared(path: str | Path) -> PreparedData:
    """Open a prepared folder; windows are memory-mapped read-only.

    A truncated or edited ``windows.npy`` / ``samples.parquet`` (sizes and hash recorded in ``meta.json``)
    or an unreadable file raises :class:`DamagedCache` with one line: a damaged cache is never used.
    """
    folder = Path(path)
    for name in ("windows.npy", "samples.parquet", "meta.json"):
        if not (folder / name).is_file():
            raise InputError(f"prepared folder {folder}: {name} is missing; run socmap prepare first")
    meta = PreparedMeta.from_json(_read_meta(folder))
    _check_files(folder, meta)
    try:
        windows = np.load(folder / "windows.npy", mmap_mode="r", allow_pickle=False)
        samples = pd.read_parquet(folder / "samples.parquet")
    except (ValueError, OSError) as exc:
        raise DamagedCache(f"prepared folder {folder} is damaged: cannot read it ({exc})") from None
    if list(windows.shape) != list(meta.shape) or windows.dtype != np.float32:
        raise DamagedCache(
            f"prepared folder {folder} is damaged: windows.npy holds {windows.dtype} {list(windows.shape)}, "
            f"meta.json says float32 {meta.shape}"
        )
    if windows.shape[0] != len(samples):
        raise DamagedCache(
            f"prepared folder {folder}: windows.npy has {windows.shape[0]} rows, samples {len(samples)}"
        )
    return PreparedData(folder, windows, samples, meta)


def drops_summary(meta: PreparedMeta) -> str:
    """Human-readable drop counts."""
    drops = Counter(meta.drops)
    total = sum(drops.values())
    parts = ", ".join(f"{k} {v}" for k, v in drops.items())
    return f"kept {meta.n_samples} of {meta.n_input_rows} rows" + (
        f"; dropped {total} ({parts})" if total else ""
    )
