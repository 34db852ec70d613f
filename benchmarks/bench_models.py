"""Map speed of every registered model kind and of the default ensemble, with and without the interval + AOA
bands, each map in a fresh process (its own peak RSS); bf16 vs fp32 for the deep kinds.

Grid (``SOCMAP_BENCH_GRID`` or ``--grid``): ``small`` (a 40 x 40 km box of synthetic Bavaria at 250 m, 25,600
px: ``make bench``), ``box`` (80 x 80 km, 102,400 px) or ``region`` (all of Bavaria, 1.12 M px). Kinds
(``SOCMAP_BENCH_KINDS`` or ``--kinds``, comma-separated): default every registered kind plus ``ensemble``
(the registry's default blend: cnn_lstm + rf + xgb, stacking).

Every kind is trained once (1 epoch for deep kinds; ``uncertainty.calibration_folds: 2`` to keep training
short: the calibration's cost at map time does not depend on its folds) and mapped twice:

- ``bands``: the run folder as trained: conformal interval (bands 2-5) and DI / AOA (bands 7-8);
- ``plain``: a copy without ``calibration.json`` / ``aoa.json``: the mean only, or the model's own quantiles
  for kinds that give them (qrf, ok, rk).

A map's px/s counts its region pixels over the time of ``map_soc`` with the models already loaded in that
process (read, features, predict, bands, blocks, COG and PNGs); loading the models (skops forests take
seconds) is printed apart, so a small grid measures the per-pixel cost rather than the start-up.

The reference of each row (same windows, same process kind):

- deep kinds: the share of the machine's fp32 matmul rate (measured in the map's process) that the model's
  FLOPs per pixel reach (FlopCounterMode plus the LSTM counted analytically, see bench_mapping);
- tree and linear kinds: the library's own batch predict of the same windows' features in one call, on every
  core (``n_jobs``; qrf: ``predict`` for the mean plus ``predict(quantiles=...)``), timed apart from the
  feature building; the ratio is the map's px/s over the library's predict px/s (a map also reads rasters,
  builds features and writes the COG, so 1.0 would mean those cost nothing);
- kriging and the ensemble: the model's own one-call ``predict_with_quantiles`` of the same windows.

bf16: every deep kind's ``plain`` map again with ``map.precision: bf16``: speed-up, largest and mean absolute
change of band 1 over the whole map, and the largest change as a share of the target's interquartile range.
CPU time (user + system) is printed next to wall time: on a machine shared with other jobs wall time is
distorted, the CPU seconds per pixel much less so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio

from socmap.models import available_models, load_model
from socmap.synth import synthesize

from common import Row, quick_run

YEAR = "2023"
GRIDS: dict[str, list[float] | None] = {
    "small": [660_000.0, 5_420_000.0, 700_000.0, 5_460_000.0],  # 160 x 160 px at 250 m
    "box": [640_000.0, 5_400_000.0, 720_000.0, 5_480_000.0],  # 320 x 320 px (bench_mapping's Dask box)
    "region": None,  # all of Bavaria
}
DEEP = {"cnn_lstm", "transformer", "cnn3d"}
TREES = {"rf", "qrf", "xgb", "linear"}
REF_PIXELS = 60_000  # windows of the library reference (features of the first blocks of the grid)

MAP_SCRIPT = """
import json, resource, sys, time
import torch
from socmap.config import MapConfig
from socmap.mapping import map_soc, parse_bbox
from socmap.mapping.plan import plan_map

def matmul_rate():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best

before = matmul_rate()
bbox = parse_bbox(sys.argv[3]) if sys.argv[3] else None
options = MapConfig(year=sys.argv[4], bbox=bbox, precision=sys.argv[5])
started, cpu0 = time.perf_counter(), time.process_time()
plan_map(options, sys.argv[1], sys.argv[2])  # loads the members into this process's cache
load, load_cpu = time.perf_counter() - started, time.process_time() - cpu0
cpu0 = time.process_time()
result = map_soc(options, sys.argv[1], sys.argv[2], overwrite=True)  # members loaded: the map itself
cpu = time.process_time() - cpu0
after = matmul_rate()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "seconds": result.seconds, "cpu_seconds": cpu, "load_seconds": load, "load_cpu": load_cpu,
    "n_region": result.n_region_pixels, "n_mapped": result.n_mapped,
    "matmul": max(before, after), "max_rss_kb": usage.ru_maxrss, "threads": torch.get_num_threads(),
    "method": result.method, "kinds": result.model_kinds, "warnings": result.warnings,
}))
"""

# the library's own batch predict of the same windows (first blocks of the grid, up to REF_PIXELS), one call
REF_SCRIPT = """
import json, sys, time
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from socmap.config import MapConfig
from socmap.mapping import parse_bbox
from socmap.mapping.blocks import _cut_windows, pixel_centres, read_inputs, valid_pixels
from socmap.mapping.plan import plan_map, region_mask
from socmap.mapping.uncertainty import LEVELS
from socmap.models import load_model, predict_located
from socmap.models.trees import FeatureModel, QuantileForestModel, default_jobs

run, bbox, year, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
plan = plan_map(MapConfig(year=year, bbox=parse_bbox(bbox) if bbox else None), run, "/tmp/ref-unused.tif")
job = plan.job
windows, xys = [], []
for block in [b for b in plan.blocks if b.n_region]:
    data = read_inputs(job.stack, job.labels, job.size, block.row0, block.row1, block.col0, block.col1)
    mask = region_mask(job.region, job.stack.grid.transform, block.row0, block.row1, block.col0, block.col1)
    ri, ci = np.nonzero(mask & valid_pixels(data, job.size, job.min_valid_fraction))
    views = sliding_window_view(data, (job.size, job.size), axis=(2, 3))
    windows.append(_cut_windows(views, ri, ci, slice(0, ri.size)))
    xys.append(pixel_centres(job.stack.grid.transform, block.row0 + ri, block.col0 + ci))
    if sum(len(w) for w in windows) >= limit:
        break
windows, xy = np.concatenate(windows)[:limit], np.concatenate(xys)[:limit]
model = load_model(plan.job.model_dirs[0])
n = len(windows)
out = {"n": n}
if isinstance(model, FeatureModel) and model.features is not None:
    if "n_jobs" in model.estimator.get_params():
        model.estimator.set_params(n_jobs=default_jobs())
    started = time.perf_counter()
    features = model.features.transform(windows)
    out["features_seconds"] = time.perf_counter() - started
    started, cpu0 = time.perf_counter(), time.process_time()
    model.estimator.predict(features)
    if isinstance(model, QuantileForestModel):
        model.estimator.predict(features, quantiles=list(LEVELS))
    out["predict_seconds"] = time.perf_counter() - started
    out["predict_cpu"] = time.process_time() - cpu0
    out["jobs"] = default_jobs()
else:
    started, cpu0 = time.perf_counter(), time.process_time()
    predict_located(model, windows, xy, LEVELS if model.gives_quantiles(LEVELS) else None, n)
    out["predict_seconds"] = time.perf_counter() - started
    out["predict_cpu"] = time.process_time() - cpu0
print(json.dumps(out))
"""


def _child(script: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False, env=os.environ
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def map_child(run: Path, out: Path, bbox: list[float] | None, precision: str = "fp32") -> dict[str, Any]:
    """Map ``run`` in a fresh process; its wall and CPU seconds, pixels, peak RSS and matmul rate."""
    text = ",".join(str(v) for v in bbox) if bbox else ""
    return _child(MAP_SCRIPT, str(run), str(out), text, YEAR, precision)


def plain_copy(run: Path) -> Path:
    """The run folder without its calibration and AOA (maps without the interval / AOA bands)."""
    target = run.with_name(run.name + "-plain")
    if not (target / "metrics.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("calibration*", "aoa*", "*.tif*"))
    return target


def _train(data: Path, work: Path, kind: str, extra: dict[str, object] | None = None) -> Path:
    """One quick run of ``kind`` (reused when finished); ``extra`` overrides name their own run folder."""
    overrides: dict[str, object] = {"train.model": kind, "uncertainty.calibration_folds": 2}
    if kind in DEEP:
        overrides["train.seed_models"] = 1
    tag = "".join(f"-{k}={v}" for k, v in (extra or {}).items())
    return quick_run(data, work / f"run-{kind}{tag}", work / "prepared", {**overrides, **(extra or {})})


def _kinds(selected: str | None) -> list[str]:
    if selected:
        return [k.strip() for k in selected.split(",") if k.strip()]
    return list(available_models())  # every registered kind; ``ensemble`` is the registry's default blend


def _reference(kind: str, m: dict[str, Any], run: Path, bbox: list[float] | None) -> tuple[float, str]:
    """(map px/s over the reference's px/s or share of matmul, note)."""
    rate = m["n_mapped"] / m["seconds"]
    if kind in DEEP:
        import bench_mapping

        flops, _ = bench_mapping.model_flops_per_pixel(load_model(run / "runs" / "run_0"))
        share = rate * flops / m["matmul"]
        return (
            share,
            f"{flops / 1e6:.2f} MFLOP/px; {rate * flops / 1e9:.1f} of {m['matmul'] / 1e9:.0f} GFLOP/s",
        )
    text = ",".join(str(v) for v in bbox) if bbox else ""
    ref = _child(REF_SCRIPT, str(run), text, YEAR, str(REF_PIXELS))
    ref_rate = ref["n"] / ref["predict_seconds"]
    what = "library predict" if kind in TREES else "model's one-call predict"
    note = f"{what}: {ref_rate:,.0f} px/s ({ref['n']:,} windows"
    if "features_seconds" in ref:
        note += f", {ref.get('jobs', 1)} jobs; features {ref['n'] / ref['features_seconds']:,.0f} px/s"
    return rate / ref_rate, note + ")"


def _iqr(data: Path, run: Path) -> float:
    column = load_model(run / "runs" / "run_0").require_inputs().target.column
    target = pd.read_csv(data / "samples.csv")[column].dropna()
    return float(target.quantile(0.75) - target.quantile(0.25))


def _bf16_rows(
    kind: str, run: Path, fp32: dict[str, Any], work: Path, bbox: list[float] | None, iqr: float
) -> list[Row]:
    m = map_child(run, work / f"{kind}-bf16.tif", bbox, "bf16")
    with rasterio.open(work / f"{kind}-plain.tif") as a, rasterio.open(work / f"{kind}-bf16.tif") as b:
        x, y = a.read(1), b.read(1)
    valid = (x != -9999.0) & (y != -9999.0)
    change = np.abs(x[valid].astype(np.float64) - y[valid])
    speed = fp32["seconds"] / m["seconds"]
    cpu_speed = fp32["cpu_seconds"] / m["cpu_seconds"]
    share = change.max() / iqr
    warn = "; ".join(w for w in m["warnings"] if "bf16" in w)
    return [
        Row(
            f"models: {kind} bf16 / fp32 speed",
            speed,
            "x",
            note=f"CPU-time ratio {cpu_speed:.2f}x; {m['n_mapped']:,} px{'; ' + warn if warn else ''}",
        ),
        Row(
            f"models: {kind} bf16 largest change",
            float(change.max()),
            "target unit",
            target="<= 1% of IQR",
            met=share <= 0.01,
            note=f"{100 * share:.2f} % of the target IQR {iqr:.3g}; mean |change| {change.mean():.3g}",
        ),
    ]


def run(
    work: Path,
    grid: str | None = None,
    kinds: str | None = None,
    bf16: bool = True,
    extra: dict[str, object] | None = None,
) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    grid = grid or os.environ.get("SOCMAP_BENCH_GRID", "small")
    bbox = GRIDS[grid]
    selected = _kinds(kinds or os.environ.get("SOCMAP_BENCH_KINDS"))
    shared = work.parent / "mapping" / "synth-250"  # bench_mapping's, when both suites run
    data = shared if (shared / "samples.csv").exists() else work / "synth-250"
    if not (data / "samples.csv").exists():
        synthesize(data, resolution=250.0, n_locations=2000, seed=0, overwrite=True)
    rows: list[Row] = []
    results: dict[str, dict[str, Any]] = {}
    for kind in selected:
        started = time.perf_counter()
        run_dir = _train(data, work, kind, extra)
        trained = time.perf_counter() - started
        for variant, folder in (("plain", plain_copy(run_dir)), ("bands", run_dir)):
            m = map_child(folder, work / f"{kind}-{variant}.tif", bbox)
            results[f"{kind}-{variant}"] = m
            ratio, note = _reference(kind, m, folder, bbox)
            rate, cpu_rate = m["n_region"] / m["seconds"], m["n_region"] / m["cpu_seconds"]
            label = "share of matmul" if kind in DEEP else "x reference"
            rows.append(
                Row(
                    f"models: {kind} map {variant} px/s",
                    rate,
                    "px/s",
                    note=f"{m['seconds']:.1f} s (+ {m['load_seconds']:.1f} s loading the models), "
                    f"{cpu_rate:,.0f} px per CPU-s, peak RSS "
                    f"{m['max_rss_kb'] / 1024**2:.2f} GB; {m['method']}; {m['kinds']}",
                )
            )
            value = 100 * ratio if kind in DEEP else ratio
            rows.append(
                Row(f"models: {kind} map {variant} {label}", value, "%" if kind in DEEP else "x", note=note)
            )
            print(
                f"[models] {kind} {variant}: {rate:,.0f} px/s ({m['seconds']:.1f} s, {cpu_rate:,.0f} px/CPU-s, "
                f"{m['max_rss_kb'] / 1024**2:.2f} GB), {label} {value:.3g}; {note}",
                flush=True,
            )
        plain, bands = results[f"{kind}-plain"], results[f"{kind}-bands"]
        rss = max(plain["max_rss_kb"], bands["max_rss_kb"]) / 1024**2
        rows.append(
            Row(
                f"models: {kind} bands / plain time",
                bands["seconds"] / plain["seconds"],
                "x",
                note=f"CPU {bands['cpu_seconds'] / plain['cpu_seconds']:.2f}x; trained in {trained:.0f} s",
            )
        )
        rows.append(Row(f"models: {kind} peak RSS", rss, "GB", target="<= 2 GB", met=rss <= 2.0))
        if kind in DEEP and bf16:
            rows += _bf16_rows(kind, plain_copy(run_dir), plain, work, bbox, _iqr(data, run_dir))
    if "qrf-bands" in results and "cnn_lstm-bands" in results:
        qrf, cnn = results["qrf-bands"], results["cnn_lstm-bands"]
        ratio = qrf["seconds"] / cnn["seconds"]
        rows.append(
            Row(
                "models: qrf / cnn_lstm map time (with bands)",
                ratio,
                "x",
                target="<= 2x",
                met=ratio <= 2,
                note=f"CPU {qrf['cpu_seconds'] / cnn['cpu_seconds']:.2f}x; grid {grid}",
            )
        )
    print(f"[models] grid {grid} ({'whole region' if bbox is None else bbox}), kinds {', '.join(selected)}")
    return rows


if __name__ == "__main__":
    import argparse

    from common import print_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("work", type=Path, help="scratch folder (runs are reused when finished)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None)
    parser.add_argument(
        "--kinds", default=None, help="comma-separated kinds (default: every registered kind)"
    )
    parser.add_argument(
        "--no-bf16", action="store_true", help="skip the bf16 maps (slow on CPUs that emulate it)"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="config overrides KEY=VALUE of the trained runs (YAML values)"
    )
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from socmap.config import parse_override

    overrides = dict(parse_override(item) for item in args.set)
    print_table(run(args.work, args.grid, args.kinds, bf16=not args.no_bf16, extra=overrides))
