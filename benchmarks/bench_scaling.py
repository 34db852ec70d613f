"""Scaling curve: mapping time and peak memory at 1000, 500 and 250 m (one model trained at 1000 m; the finer
grids warp the same covariates). Cost must grow linearly with pixels and memory must stay flat."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from socmap.synth import synthesize

from common import Row, quick_run

RESOLUTIONS = (1000.0, 500.0, 250.0)


def _map_in_child(run: Path, out: Path, resolution: float) -> tuple[float, float, int]:
    """Map in a fresh process; returns (seconds, peak RSS in GB, region pixels)."""
    code = (
        "import sys; from socmap.config import MapConfig; from socmap.mapping import map_soc; "
        f"r = map_soc(MapConfig(year='2023', resolution={resolution}), {str(run)!r}, {str(out)!r}, overwrite=True); "
        "print(r.n_region_pixels)"
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    assert proc.stdout is not None
    pixels = int(proc.stdout.read().strip().splitlines()[-1])
    if status != 0:
        raise RuntimeError(f"mapping at {resolution} m failed")
    return seconds, usage.ru_maxrss / 1024**2, pixels


def run(work: Path) -> list[Row]:
    data = work / "synth"
    if not (data / "samples.csv").exists():
        synthesize(data, overwrite=True)
    run_dir = quick_run(data, work / "run", work / "prepared")
    rows: list[Row] = []
    base: tuple[float, int] | None = None
    for res in RESOLUTIONS:
        seconds, rss, pixels = _map_in_child(run_dir, work / f"soc_{res:g}.tif", res)
        per_px = seconds / pixels
        if base is None:
            base = (per_px, pixels)
        note = f"{pixels:,} px, {pixels / seconds:,.0f} px/s, peak RSS {rss:.2f} GB"
        rows.append(Row(f"scaling: map at {res:g} m", seconds, "s", note=note))
    assert base is not None
    last_per_px = float(rows[-1].value) / int(rows[-1].note.split(" px")[0].replace(",", ""))
    rows.append(
        Row(
            "scaling: time per pixel 250 m / 1000 m",
            last_per_px / base[0],
            "x",
            target="~1 (linear)",
            met=last_per_px / base[0] < 1.5,
        )
    )
    return rows
