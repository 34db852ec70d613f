#!/usr/bin/env python3
"""Generate a small multi-year fixture outside Bavaria (run: python tests/data/temporal/data.py OUT; tests
call make()).

Soil organic carbon in % on a UTM 37 South grid (EPSG:32737, 100 m, 36 x 40 px) near Nakuru, Kenya, with a
static ``Elevation`` and a yearly ``NDVI`` (2012..2022). NDVI has a spatially varying linear trend (greening in
the west, browning in the east), and the truth follows the mean NDVI of the sample year and the year before,
so the true SOC changes over time, by a known amount per pixel:

    truth(pixel, Y) = exp(0.9 + 0.25 z_elev + 1.6 (ndvi(Y) + ndvi(Y - 1)) / 2 - 0.8)        (%)

Samples: 90 locations, each visited in 2 or 3 different years (repeat visits of the same ``sample_id``),
observed = truth x exp(N(0, 0.08)); ``true_soc.csv`` holds the noise-free value of every sample.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import Affine

CRS = "EPSG:32737"
X0, Y_TOP, RES, WIDTH, HEIGHT = 820_000.0, 9_970_000.0, 100.0, 40, 36
YEARS = list(range(2012, 2023))
NODATA = -9999.0
UNIT = "%"
TARGET = "SOC"
TRANSFORM = Affine(RES, 0.0, X0, 0.0, -RES, Y_TOP)


def elevation() -> np.ndarray:
    """[rows, cols] elevation in m: a smooth ramp plus a hill."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    return 1850.0 + 4.0 * rows + 60.0 * np.exp(-((rows - 12) ** 2 + (cols - 25) ** 2) / 60.0)


def ndvi(year: int) -> np.ndarray:
    """[rows, cols] NDVI of ``year``: a base pattern plus a west-east varying trend and a yearly wobble."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    base = 0.45 + 0.1 * np.sin(rows / 6.0) * np.cos(cols / 7.0)
    trend = 0.012 * (1.0 - cols / (WIDTH / 2.0))  # per year: +0.012 in the west, -0.012 in the east
    wobble = 0.01 * np.sin(1.3 * year)
    return base + trend * (year - YEARS[0]) + wobble


def truth(year: int) -> np.ndarray:
    """[rows, cols] true SOC (%) of ``year`` (needs NDVI of ``year - 1``)."""
    elev = elevation()
    z = (elev - elev.mean()) / elev.std()
    return np.exp(0.9 + 0.25 * z + 1.6 * (ndvi(year) + ndvi(year - 1)) / 2.0 - 0.8)


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": 1,
        "width": WIDTH,
        "height": HEIGHT,
        "crs": CRS,
        "transform": TRANSFORM,
        "nodata": NODATA,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.float32), 1)


def config_text() -> str:
    return (
        "name: nakuru-soc-percent\n"
        "samples:\n  path: samples.csv\n  id: sample_id\n  x: easting\n  y: northing\n"
        f'  crs: {CRS}\n  target: {TARGET}\n  target_unit: "{UNIT}"\n  year: year\n'
        "filters:\n  max_target: null\n"
        "covariates:\n  root: covariates\n  static: [Elevation]\n  temporal: [NDVI]\n"
        "windows:\n  size: 3\n  time_steps: 2\n"
        "split:\n  distance_km: 0.1\n  val_ratio: 0.15\n  block_size_km: 1.0\n"
    )


def make(root: str | Path, seed: int = 0, n_locations: int = 90) -> Path:
    """Write covariates, samples.csv, true_soc.csv and config.yaml into ``root``; returns the config."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write(root / "covariates" / "static" / "Elevation.tif", elevation())
    for year in YEARS:
        _write(root / "covariates" / "yearly" / "NDVI" / f"{year}.tif", ndvi(year))
    rows = rng.integers(2, HEIGHT - 2, n_locations)
    cols = rng.integers(2, WIDTH - 2, n_locations)
    records = []
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        visits = rng.choice(YEARS[1:], size=int(rng.integers(2, 4)), replace=False)
        for year in sorted(visits):
            true = float(truth(int(year))[r, c])
            records.append(
                {
                    "sample_id": f"NK{i:03d}",
                    "easting": X0 + (c + 0.5) * RES,
                    "northing": Y_TOP - (r + 0.5) * RES,
                    "year": int(year),
                    TARGET: round(true * float(np.exp(rng.normal(0.0, 0.08))), 3),
                    "truth": true,
                }
            )
    table = pd.DataFrame(records)
    table.drop(columns="truth").to_csv(root / "samples.csv", index=False)
    table[["sample_id", "year", "truth"]].to_csv(root / "true_soc.csv", index=False)
    (root / "config.yaml").write_text(config_text(), encoding="utf-8")
    return root / "config.yaml"


def train_run(root: str | Path, model: str = "linear", calibration_folds: int = 3) -> Path:
    """Write the fixture into ``root / data`` and train a calibrated run into ``root / run`` (seconds)."""
    import torch

    from socmap.config import load_config
    from socmap.train import train

    root = Path(root)
    config = make(root / "data")
    overrides = {
        "train.model": model,
        "train.num_runs": 1,
        "train.wandb_mode": "disabled",
        "train.threads": 1,
        "uncertainty.calibration_folds": calibration_folds,
    }
    threads = torch.get_num_threads()
    try:
        train(load_config(config, overrides), root / "run")
    finally:
        torch.set_num_threads(threads)
    return root / "run"


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "temporal-example"))
