"""Ingest of real third-party data from ../shared/data (skipped with a reason when the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from socmap.config import load_config
from socmap.windows import prepare

from tests.conftest import shared_data

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_edgeroi_single_date_static_stack(tmp_path: Path) -> None:
    root = shared_data("edgeroi")
    data, _ = prepare(load_config(CONFIGS / "edgeroi.yaml"), tmp_path / "edgeroi")
    assert data.windows.shape == (341, 5, 5, 5, 1)
    assert data.meta.drops == {}
    profiles = pd.read_csv(root / "edgeroi_splineCarbon.csv")
    np.testing.assert_allclose(data.target, profiles["X0.5.cm"])
    # centre pixel == rasterio's own point sampling at the profile location, for every band
    for ch, band in enumerate(data.bands):
        with rasterio.open(root / f"edgeroiCovariates_{band}.tif") as src:
            ref = np.array([v[0] for v in src.sample(zip(profiles["east"], profiles["north"], strict=True))])
        np.testing.assert_array_equal(data.windows[:, ch, 2, 2, 0], ref.astype(np.float32))


def test_edgeroi_raster_without_crs_needs_assume_crs(tmp_path: Path) -> None:
    root = shared_data("edgeroi")
    overrides = {
        "covariates.static": ["Elevation", "TWI"],
        "covariates.static_pattern": "edgeGrids_{band}.tif",
    }
    import pytest

    from socmap.errors import InputError

    with pytest.raises(InputError, match=r"edgeGrids_Elevation.tif has no CRS; set covariates.assume_crs"):
        prepare(load_config(CONFIGS / "edgeroi.yaml", overrides), tmp_path / "a")
    data, _ = prepare(
        load_config(CONFIGS / "edgeroi.yaml", {**overrides, "covariates.assume_crs": "EPSG:32755"}),
        tmp_path / "b",
    )
    assert data.meta.drops["outside_rasters"] > 0  # the grids cover a small sub-area
    assert root.is_dir()


def test_macedonia_monthly_series_matches_published_regression_matrix(tmp_path: Path) -> None:
    root = shared_data("macedonia")
    data, _ = prepare(load_config(CONFIGS / "macedonia.yaml"), tmp_path / "mkd")
    assert data.windows.shape[1:] == (15, 5, 5, 12)
    assert data.meta.time_labels == [f"{m:02d}" for m in range(1, 13)]
    reg = pd.read_csv(root / "soil" / "MKD_RegMatrix.csv")
    merged = data.samples.reset_index().merge(reg, left_on="sample_id", right_on="id")
    assert len(merged) == len(reg)
    for ch, band in enumerate(data.bands[:13]):
        centre = data.windows[merged["index"].to_numpy(), ch, 2, 2, 0]
        np.testing.assert_allclose(centre, merged[band].astype(float), rtol=1e-6, err_msg=band)
    # the monthly LST-day series: step k is month k+1, read from T{month}MOD3.tif
    t = data.bands.index("T")
    with rasterio.open(root / "covs" / "T07MOD3.tif") as src:
        ref = np.array([v[0] for v in src.sample(zip(merged["X"], merged["Y"], strict=True))])
    np.testing.assert_array_equal(
        data.windows[merged["index"].to_numpy(), t, 2, 2, 6], ref.astype(np.float32)
    )
