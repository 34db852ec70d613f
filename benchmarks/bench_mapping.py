"""Mapping speed: synthetic Bavaria at 250 m, 2023, an ensemble of two 1-epoch CNN-LSTM runs, end to end.

Figures: pixels/s of the whole map (read, predict, COG, PNGs) in a fresh process, which also gives its peak RSS
and its own fp32 matmul rate; model FLOPs per pixel (FlopCounterMode for the convolutions and linear layers,
plus the LSTM counted analytically because FlopCounterMode does not see ``aten.lstm``); the achieved FLOP rate
as a share of the matmul rate; the speed-up over a naive seed-style mapper (per-pixel Dataset + DataLoader,
batch 256, every window read separately; timed on a subset of pixels, compared per pixel, values checked equal);
and 1 vs 2 Dask workers (LocalCluster) on a 80 x 80 km box. The model is barely trained: only its speed matters.

Other model kinds on the same 250 m grid and box, each map in a fresh process (px/s, peak RSS, and the ratio
of its px/s to the CNN-LSTM ensemble's on the same box): a quantile regression forest (``qrf``, default 300
trees, bands 2/3 from its own quantiles) and a mean blend of CNN-LSTM, random forest and XGBoost
(``ensemble``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from socmap.config import MapConfig, load_config
from socmap.data import RasterStack, discover_stack
from socmap.mapping import map_soc
from socmap.models import SocModel, load_model
from socmap.models.deep import DeepModel
from socmap.synth import synthesize
from socmap.windows import window_offsets

from common import Row, quick_run

YEAR = 2023
NAIVE_PIXELS = 1500
DASK_BOX = [640_000.0, 5_400_000.0, 720_000.0, 5_480_000.0]  # 320 x 320 px at 250 m, inside Bavaria
# model kinds compared with the CNN-LSTM ensemble on DASK_BOX (train overrides; one run each)
KINDS: dict[str, dict[str, object]] = {
    "qrf": {"train.model": "qrf"},
    "ensemble": {
        "train.model": "ensemble",
        "models": {"ensemble": {"members": ["cnn_lstm", "rf", "xgb"], "blend": "mean"}},
    },
}

# The full map runs in a fresh process: its peak RSS is the map's alone, and it measures its own matmul rate.
MAP_SCRIPT = """
import json, resource, sys, time
import torch
from socmap.config import MapConfig
from socmap.mapping import map_soc, parse_bbox

def matmul_rate():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best

before = matmul_rate()
bbox = parse_bbox(sys.argv[4]) if len(sys.argv) > 4 else None
result = map_soc(MapConfig(year=sys.argv[2], bbox=bbox), sys.argv[1], sys.argv[3], overwrite=True)
after = matmul_rate()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "seconds": result.seconds, "n_region": result.n_region_pixels, "n_mapped": result.n_mapped,
    "n_blocks": result.n_blocks, "matmul": max(before, after), "matmul_before": before, "matmul_after": after,
    "max_rss_kb": usage.ru_maxrss, "cpu_seconds": usage.ru_utime + usage.ru_stime,
    "threads": torch.get_num_threads(), "method": result.method, "kinds": result.model_kinds,
}))
"""


def model_flops_per_pixel(model: SocModel) -> tuple[float, float]:
    """(total, lstm part) FLOPs of one forward pass per window: FlopCounterMode + the LSTM analytically.
    Counted with gradients on (evaluation mode), so the CNN-LSTM counts the convolutions that the map's frozen
    graph runs, not the matrix products of its eager inference (``networks.DENSE_MAX_WINDOW``)."""
    assert isinstance(model, DeepModel) and model.net is not None
    channels, size, _, steps = model.require_inputs().window_shape
    batch = torch.randn(64, channels, size, size, steps)
    counter = FlopCounterMode(display=False)
    with counter:
        model.net.eval()(batch)
    lstm_flops = 0.0
    for module in model.net.modules():
        if isinstance(module, torch.nn.LSTM):
            h = module.hidden_size
            for layer in range(module.num_layers):
                inputs = module.input_size if layer == 0 else h
                lstm_flops += (
                    steps * 2 * 4 * h * (inputs + h)
                )  # x W_ih + h W_hh per step (elementwise ignored)
    return counter.get_total_flops() / 64 + lstm_flops, lstm_flops


class PixelWindows(Dataset[torch.Tensor]):
    """The seed project's way: one item per pixel, its window read band by band and step by step."""

    def __init__(self, stack: RasterStack, rows: np.ndarray, cols: np.ndarray, size: int, steps: int) -> None:
        self.stack, self.rows, self.cols, self.size = stack, rows, cols, size
        self.labels = stack.sequence(str(YEAR), steps)
        self.files: dict[tuple[str, str | None], rasterio.io.DatasetReader] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _src(self, band: str, label: str | None) -> rasterio.io.DatasetReader:
        if (band, label) not in self.files:  # opened once (kinder to the naive mapper than reopening)
            self.files[(band, label)] = rasterio.open(self.stack.files[(band, label)])
        return self.files[(band, label)]

    def __getitem__(self, i: int) -> torch.Tensor:
        before, _ = window_offsets(self.size)
        bands = self.stack.bands
        out = np.full((len(bands), self.size, self.size, len(self.labels)), np.nan, dtype=np.float32)
        window = Window(int(self.cols[i]) - before, int(self.rows[i]) - before, self.size, self.size)
        for ch, band in enumerate(bands):
            static = band in self.stack.static
            for k, label in enumerate([None] * len(self.labels) if static else self.labels):
                if (band, label) not in self.stack.files:
                    continue
                src = self._src(band, label)
                data = src.read(1, window=window, out_dtype="float32")  # interior pixels: never clipped
                data[data == np.float32(src.nodata)] = np.nan
                out[ch, :, :, k] = data
        return torch.from_numpy(out)


def naive_map(stack: RasterStack, members: list[SocModel], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Ensemble-mean predictions of the given pixels, the seed way (DataLoader, batch 256)."""
    inputs = members[0].require_inputs()
    dataset = PixelWindows(stack, rows, cols, inputs.window_size, inputs.time_steps)
    out = []
    for batch in DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0):
        out.append(np.mean([m.predict(batch.numpy()) for m in members], axis=0))
    return np.concatenate(out)


def _dask_seconds(run_dir: Path, out: Path, workers: int) -> tuple[float, int]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        started = time.perf_counter()
        options = MapConfig(year=str(YEAR), bbox=DASK_BOX, block_size=64, scheduler=cluster.scheduler_address)
        result = map_soc(options, run_dir, out, overwrite=True)
        return time.perf_counter() - started, result.n_mapped


def map_in_fresh_process(run_dir: Path, out: Path, bbox: list[float] | None = None) -> dict[str, Any]:
    """Map ``run_dir`` (the region, or ``bbox``) with MAP_SCRIPT in a new process; its measurements."""
    args = [sys.executable, "-c", MAP_SCRIPT, str(run_dir), str(YEAR), str(out)]
    if bbox is not None:
        args.append(",".join(str(v) for v in bbox))
    proc = subprocess.run(args, check=True, capture_output=True, text=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def kind_rows(
    work: Path, data: Path, cnn_run: Path, bbox: list[float] = DASK_BOX, kinds: dict[str, Any] = KINDS
) -> list[Row]:
    """Tree and ensemble maps vs the CNN-LSTM ensemble on the same box of the same grid, each in a fresh
    process: px/s (region pixels), peak RSS and the px/s ratio to the CNN-LSTM map."""
    cnn = map_in_fresh_process(cnn_run, work / "kind_cnn_lstm.tif", bbox)
    cnn_rate = cnn["n_region"] / cnn["seconds"]
    rows = [
        Row(
            "map box, CNN-LSTM x2 (reference)",
            cnn_rate,
            "px/s",
            note=f"{cnn['n_region']:,} region px, {cnn['max_rss_kb'] / 1024**2:.2f} GB peak RSS, "
            f"{cnn['method']}",
        )
    ]
    for name, overrides in kinds.items():
        run_dir = quick_run(data, work / f"run-{name}", data.parent / "prepared-kinds", overrides)
        m = map_in_fresh_process(run_dir, work / f"kind_{name}.tif", bbox)
        rate, rss_gb = m["n_region"] / m["seconds"], m["max_rss_kb"] / 1024**2
        rows += [
            Row(
                f"map box, {name}",
                rate,
                "px/s",
                note=f"{m['kinds']}, bands 2-4: {m['method']}; {m['seconds']:.1f} s, {m['threads']} cores, "
                f"{m['cpu_seconds'] / m['seconds']:.2f} cores busy",
            ),
            Row(f"map box, {name} peak RSS", rss_gb, "GB", target="<= 3 GB", met=rss_gb <= 3),
            Row(f"map box, {name} px/s / CNN-LSTM x2 px/s", rate / cnn_rate, "x"),
        ]
    return rows


def run(work: Path) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    bench_started = time.perf_counter()
    load_before = os.getloadavg()[0]
    data = work / "synth-250"
    if not (data / "samples.csv").exists():
        synthesize(data, resolution=250.0, n_locations=2000, seed=0, overwrite=True)
    run_dir = quick_run(data, work / "run", work / "run" / "prepared", {"train.num_runs": 2})
    members = [load_model(run_dir / "runs" / f"run_{i}") for i in range(2)]
    flops, lstm_flops = model_flops_per_pixel(members[0])

    # the whole region, end to end, in a fresh process
    out = work / "soc_2023.tif"
    m = map_in_fresh_process(run_dir, out)
    px_rate = m["n_region"] / m["seconds"]
    flop_rate = m["n_mapped"] * len(members) * flops / m["seconds"]
    share = flop_rate / m["matmul"]
    rss_gb = m["max_rss_kb"] / 1024**2

    # naive per-pixel mapper on a random subset of mapped pixels; values must agree with the map
    stack = discover_stack(load_config(run_dir / "config.yaml"))
    with rasterio.open(out) as src:
        values = src.read(1)
        g, t = stack.grid.transform, src.transform
        row_off, col_off = round((t.f - g.f) / g.e), round((t.c - g.c) / g.a)
    r, c = np.nonzero(values != -9999.0)
    pick = np.random.default_rng(0).choice(r.size, NAIVE_PIXELS, replace=False)
    started = time.perf_counter()
    naive = naive_map(stack, members, r[pick] + row_off, c[pick] + col_off)
    naive_seconds = time.perf_counter() - started
    np.testing.assert_allclose(naive, values[r[pick], c[pick]], rtol=1e-5, atol=1e-4)
    naive_rate = NAIVE_PIXELS / naive_seconds
    ours_rate = m["n_mapped"] / m["seconds"]
    ratio = ours_rate / naive_rate

    # Dask scaling on a box (LocalCluster, one thread per worker)
    one, n_box = _dask_seconds(run_dir, work / "box1.tif", 1)
    two, _ = _dask_seconds(run_dir, work / "box2.tif", 2)
    load = f"1-min load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"

    kinds = kind_rows(work, data, run_dir)
    return [
        Row(
            f"map Bavaria 250 m {YEAR}, {len(members)} models, end to end",
            m["seconds"],
            "s",
            note=f"{m['n_region']:,} region px ({m['n_mapped']:,} mapped), {m['n_blocks']} blocks, "
            f"{m['threads']} cores, {m['cpu_seconds'] / m['seconds']:.2f} cores busy on average; {load}",
        ),
        Row("map throughput (region pixels)", px_rate, "px/s"),
        Row(
            "map model FLOPs per pixel and model",
            flops,
            "FLOP",
            note=f"LSTM {lstm_flops / flops:.0%} (analytic), rest FlopCounterMode; x{len(members)} models",
        ),
        Row(
            "map achieved FLOP rate / fp32 matmul",
            100 * share,
            "%",
            target=">= 70%",
            met=share >= 0.7,
            note=f"{flop_rate / 1e9:.1f} GFLOP/s vs matmul {m['matmul'] / 1e9:.1f} GFLOP/s "
            f"(before {m['matmul_before'] / 1e9:.0f}, after {m['matmul_after'] / 1e9:.0f})",
        ),
        Row(
            f"map naive per-pixel mapper ({NAIVE_PIXELS} px)",
            naive_seconds,
            "s",
            note=f"{naive_rate:,.0f} px/s; values equal the map's",
        ),
        Row("map speed-up vs naive (per mapped pixel)", ratio, "x", target=">= 10x", met=ratio >= 10),
        Row("map peak RSS (whole map process)", rss_gb, "GB", target="<= 3 GB", met=rss_gb <= 3),
        Row(
            "map Dask LocalCluster 2 vs 1 workers",
            one / two,
            "x",
            note=f"{n_box:,} px box: 1 worker {one:.1f} s, 2 workers {two:.1f} s",
        ),
        *kinds,
        Row(
            "map benchmark module total (synth + train + all maps)", time.perf_counter() - bench_started, "s"
        ),
    ]


if __name__ == "__main__":
    import tempfile

    from common import print_table

    os.environ.setdefault("WANDB_MODE", "disabled")
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="socmap-bench-map-"))
    print_table(run(folder))
