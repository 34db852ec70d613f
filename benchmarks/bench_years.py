"""Multi-year mapping: N years in one pass (``socmap map --years``) vs the same N years mapped one by one.

The one-pass map reads every raster of the union of the years' time steps once per block and loads the
models once; the per-year maps read each year's T steps and load the models every time. Both must give the
same bytes (checked). ``python benchmarks/bench_years.py WORKDIR`` or ``python benchmarks/run.py --only years``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, print_table, quick_run

YEARS = (2016, 2023)  # 8 years; windows of 5 steps overlap by 4
BBOX = "700000,5270000,780000,5350000"  # a 40 x 40 px box at 2000 m (south-east: lakes, region edge)


def _cli(*args: str) -> float:
    """Wall time of one ``socmap`` command in a fresh process (as a user runs it)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "socmap.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def run(work: Path) -> list[Row]:
    """Time both ways as CLI commands (fresh processes, alternating A B A B, best of 2) on a 2000 m synthetic
    Bavaria with a one-epoch CNN-LSTM (2 runs); check that the COGs are identical."""
    from socmap.synth import synthesize

    work.mkdir(parents=True, exist_ok=True)
    data = work / "synth-2000"
    if not (data / "samples.csv").exists():
        synthesize(data, resolution=2000.0, n_locations=400, seed=0, overwrite=True)
    run_dir = str(quick_run(data, work / "run", work / "run" / "prepared", {"train.num_runs": 2}))
    years = [str(y) for y in range(YEARS[0], YEARS[1] + 1)]
    common = ["--run", run_dir, "--bbox", BBOX, "--block-size", "64", "--overwrite"]
    one_by_one, one_pass = [], []
    for _ in range(2):
        one_by_one.append(
            sum(
                _cli("map", *common, "--year", y, "--out", str(work / "single" / f"soc_{y}.tif"))
                for y in years
            )
        )
        span = f"{years[0]}:{years[-1]}"
        one_pass.append(_cli("map", *common, "--years", span, "--out", str(work / "years" / "soc.tif")))
    for y in years:
        with (
            rasterio.open(work / "single" / f"soc_{y}.tif") as a,
            rasterio.open(work / "years" / f"soc_{y}.tif") as b,
        ):
            assert np.array_equal(a.read(), b.read()), y
    a, b = min(one_by_one), min(one_pass)
    note = f"{len(years)} years, 40 x 40 px box, CNN-LSTM x2, CLI, best of 2; identical COGs"
    return [
        Row(f"map {len(years)} years one by one (socmap map --year)", a, "s", note=note),
        Row(f"map {len(years)} years in one pass (--years, + cube)", b, "s", note=note),
        Row("multi-year speed-up (one by one / one pass)", a / b, "x", "> 1", a > b),
    ]


if __name__ == "__main__":
    print_table(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-years")))
