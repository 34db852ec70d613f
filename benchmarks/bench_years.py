"""Multi-year mapping: N years in one pass (``socmap map --years``) vs the same N years mapped one by one.

The one-pass map reads every raster of the union of the years' time steps once per block and loads the
models once; the per-year maps read each year's T steps and load the models every time. Both must give the
same bytes (checked). ``python benchmarks/bench_years.py WORKDIR`` or ``python benchmarks/run.py --only years``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, print_table, quick_run

YEARS = [str(y) for y in range(2016, 2024)]  # 8 years; windows of 5 steps overlap by 4


def run(work: Path) -> list[Row]:
    """Time both ways on a 2000 m synthetic Bavaria with a one-epoch CNN-LSTM (2 runs)."""
    from socmap.config import MapConfig
    from socmap.mapping import map_soc
    from socmap.mapping.years import map_years
    from socmap.synth import synthesize

    work.mkdir(parents=True, exist_ok=True)
    data = work / "synth-2000"
    if not (data / "samples.csv").exists():
        synthesize(data, resolution=2000.0, n_locations=400, seed=0, overwrite=True)
    run_dir = quick_run(data, work / "run", work / "run" / "prepared", {"train.num_runs": 2})
    options = MapConfig(block_size=64)
    started = time.perf_counter()
    result = map_years(options, YEARS, run_dir, work / "years" / "soc.tif", overwrite=True)
    one_pass = time.perf_counter() - started
    started = time.perf_counter()
    for year in YEARS:
        single = map_soc(
            options.model_copy(update={"year": year}),
            run_dir,
            work / "single" / f"soc_{year}.tif",
            overwrite=True,
        )
        with rasterio.open(single.out) as a, rasterio.open(result.outs[year]) as b:
            assert np.array_equal(a.read(), b.read()), year
    one_by_one = time.perf_counter() - started
    note = f"{len(YEARS)} years x {result.n_region_pixels:,} px, CNN-LSTM x2, identical bytes"
    return [
        Row(f"map {len(YEARS)} years one by one", one_by_one, "s", note=note),
        Row(f"map {len(YEARS)} years in one pass (+ NetCDF cube)", one_pass, "s", note=note),
        Row(
            "multi-year speed-up (one by one / one pass)",
            one_by_one / one_pass,
            "x",
            "> 1",
            one_by_one > one_pass,
        ),
    ]


if __name__ == "__main__":
    print_table(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-years")))
