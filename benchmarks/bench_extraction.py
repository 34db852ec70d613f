"""P1 window extraction: the fast path for all synthetic-Bavaria samples vs the naive per-sample reader.

The naive reference (open the file and read one window per sample, band and step) is timed on a random subset
and compared per sample, since on all ~16k samples it would take many minutes; both outputs are checked equal.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyproj import Transformer

from socmap.config import load_config
from socmap.data import discover_stack
from socmap.synth import synthesize
from socmap.windows import extract_windows, extract_windows_naive

from common import Row

NAIVE_SUBSET = 400


def run(work: Path) -> list[Row]:
    data = work / "synth"
    if not (data / "samples.csv").exists():
        synthesize(data, overwrite=True)
    config = load_config(
        None, {"samples.path": str(data / "samples.csv"), "covariates.root": str(data / "covariates")}
    )
    stack = discover_stack(config)
    samples = pd.read_csv(data / "samples.csv")
    x, y = Transformer.from_crs(4326, 25832, always_xy=True).transform(
        samples["GPS_LONG"], samples["GPS_LAT"]
    )
    x, y = np.asarray(x), np.asarray(y)
    rows, cols = stack.grid.rowcol(x, y)
    times = [str(v) for v in samples["year"]]
    n = len(samples)

    best = float("inf")
    fast = np.empty(0, np.float32)
    for _ in range(3):
        started = time.perf_counter()
        fast = extract_windows(stack, rows, cols, times, 5, 5)
        best = min(best, time.perf_counter() - started)

    subset = np.random.default_rng(0).choice(n, NAIVE_SUBSET, replace=False)
    started = time.perf_counter()
    naive = extract_windows_naive(stack, x[subset], y[subset], [times[i] for i in subset], 5, 5)
    naive_seconds = time.perf_counter() - started
    np.testing.assert_array_equal(fast[subset], naive)

    fast_per_sample = best / n
    naive_per_sample = naive_seconds / NAIVE_SUBSET
    ratio = naive_per_sample / fast_per_sample
    return [
        Row(f"P1 extract {n} x {list(fast.shape[1:])} fast", best, "s", note=f"{n / best:,.0f} samples/s"),
        Row(
            f"P1 naive per-sample reader ({NAIVE_SUBSET} samples)",
            naive_seconds,
            "s",
            note=f"{NAIVE_SUBSET / naive_seconds:,.0f} samples/s; output identical",
        ),
        Row("P1 speed-up fast vs naive", ratio, "x", target=">= 30x", met=ratio >= 30),
    ]
