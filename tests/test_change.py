"""Change maps: rho and k recover known values on simulated repeat visits, the cross-fitted intervals cover
the nominal share, the change COG equals an independent computation from the two maps, and the fallback without
repeat visits is the conservative rho = 0 with a warning (non-Bavaria fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from socmap.change import MIN_PAIRS, calibrate_change, change_map, fit_change, repeat_pairs, validate_change
from socmap.config import MapConfig
from socmap.errors import InputError
from socmap.mapping.years import YearsResult, map_years

from tests.conftest import run_cli
from tests.data.temporal.data import train_run


def _pairs(n: int, rho: float, sigma: float, seed: int = 0) -> pd.DataFrame:
    """Repeat-visit pairs with Gaussian errors of sd sigma and correlation rho; h = 1.645 sigma (a 90 % PI)."""
    rng = np.random.default_rng(seed)
    e = rng.multivariate_normal([0, 0], sigma**2 * np.array([[1, rho], [rho, 1]]), n)
    pred = rng.uniform(10, 30, (n, 2))
    h = np.full(n, 1.6449 * sigma)
    return pd.DataFrame(
        {
            "sample_id": [f"P{i}" for i in range(n)],
            "time_a": "2015",
            "time_b": "2018",
            "observed_a": pred[:, 0] + e[:, 0],
            "observed_b": pred[:, 1] + e[:, 1],
            "predicted_a": pred[:, 0],
            "predicted_b": pred[:, 1],
            "h_a": h,
            "h_b": h,
        }
    )


def test_fit_recovers_rho_and_k_and_cross_fitted_coverage_is_nominal() -> None:
    pairs = _pairs(4000, rho=0.6, sigma=2.0)
    rho, k = fit_change(pairs, 0.9)
    # Gaussian errors: d_obs - d_hat ~ N(0, 2 sigma^2 (1 - rho)) and H = k sqrt(2 h^2 (1 - rho)) -> k = 1
    assert abs(rho - 0.6) < 0.03 and abs(k - 1.0) < 0.05
    stats = validate_change(pairs, 0.9)
    assert 0.88 <= stats["picp_observed"] <= 0.92
    # assuming rho = 0 would widen the interval by sqrt(1 / (1 - rho)): conservative for positive rho
    wide = 1.6449 * np.sqrt(2) * 1.6449 * 2.0
    assert stats["mean_half_width"] < wide / 1.5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("change"))


@pytest.fixture(scope="module")
def maps(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> YearsResult:
    return map_years(
        MapConfig(block_size=32), ["2014", "2022"], run_dir, tmp_path_factory.mktemp("m") / "s.tif"
    )


def test_repeat_pairs_come_from_the_calibration_oof(run_dir: Path) -> None:
    found = repeat_pairs(run_dir)
    assert found is not None
    pairs, nominal = found
    oof = pd.read_csv(run_dir / "calibration_oof.csv")
    visits = oof.groupby("sample_id").size()
    assert len(pairs) == int((visits * (visits - 1) // 2).sum()) >= MIN_PAIRS and nominal == 0.9
    assert (pairs["time_a"] < pairs["time_b"]).all() and (pairs["h_a"] > 0).all()
    truth = pd.read_csv(run_dir.parent / "data" / "true_soc.csv").rename(columns={"year": "time"})
    stats = validate_change(pairs, nominal, truth=truth)
    assert stats["r_true"] > 0.8  # the fixture's NDVI trend is learned: predicted change follows true change


def test_change_cog_equals_independent_computation(run_dir: Path, maps: YearsResult, tmp_path: Path) -> None:
    result = change_map(maps.outs["2014"], maps.outs["2022"], tmp_path / "c.tif", run_dir)
    cal = result.calibration
    assert cal.n_pairs >= MIN_PAIRS and not cal.warnings and result.unit == "%"

    def read(path: Path) -> np.ndarray:
        with rasterio.open(path) as src:
            return src.read(masked=True).astype(np.float64).filled(np.nan)

    a, b, c = read(maps.outs["2014"]), read(maps.outs["2022"]), read(result.out)
    d = b[0] - a[0]
    ha, hb = (a[3] - a[1]) / 2, (b[3] - b[1]) / 2
    half = cal.k * np.sqrt(ha**2 + hb**2 - 2 * cal.rho * ha * hb)
    np.testing.assert_allclose(c[0], d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c[3], 2 * half, rtol=1e-5)
    np.testing.assert_allclose(c[1], d - half, rtol=1e-5, atol=1e-5)
    expected_direction = np.where(d - half > 0, 1, np.where(d + half < 0, -1, 0))
    ok = np.isfinite(d)
    np.testing.assert_array_equal(c[4][ok], expected_direction[ok])
    with rasterio.open(result.out) as src:
        tags = src.tags()
    assert (
        tags["year_a"] == "2014"
        and tags["year_b"] == "2022"
        and float(tags["rho"]) == pytest.approx(cal.rho, abs=1e-4)
    )


def test_without_a_run_rho_zero_is_assumed_and_wider(
    run_dir: Path, maps: YearsResult, tmp_path: Path
) -> None:
    fallback = calibrate_change(None)
    assert fallback.rho == 0 and fallback.k == 1 and "conservative" in fallback.warnings[0]
    calibrated = change_map(maps.outs["2014"], maps.outs["2022"], tmp_path / "c.tif", run_dir)
    assumed = change_map(maps.outs["2014"], maps.outs["2022"], tmp_path / "a.tif")
    # the fixture's two visits share the model's bias at a place: positive rho, so rho = 0 is wider
    assert calibrated.calibration.rho > 0.1 and assumed.mean_width > calibrated.mean_width
    proc = run_cli("change", str(maps.outs["2014"]), str(maps.outs["2022"]), "--out", str(tmp_path / "x.tif"))
    assert proc.returncode == 0 and "warning" in proc.stderr and "rho = 0" in proc.stderr


def test_refusals(maps: YearsResult, tmp_path: Path) -> None:
    other = tmp_path / "other.tif"
    with rasterio.open(maps.outs["2014"]) as src:
        profile = {**src.profile, "width": src.width - 1}
        data = src.read()[:, :, :-1]
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(InputError, match="different grids"):
        change_map(maps.outs["2014"], other, tmp_path / "c.tif")
    with pytest.raises(InputError, match="does not exist"):
        change_map(tmp_path / "nope.tif", other, tmp_path / "c.tif")


def test_report_shows_time_series_change_and_stock(run_dir: Path, maps: YearsResult, tmp_path: Path) -> None:
    from socmap.report import build_report
    from socmap.report_time import regional_means
    from socmap.stocks import Source, stock_map

    change = change_map(maps.outs["2014"], maps.outs["2022"], tmp_path / "c.tif", run_dir).out
    stock = stock_map(maps.outs["2022"], tmp_path / "s.tif", depth=(0, 30), bd=Source(1.2)).out
    plain = build_report(run_dir, tmp_path / "plain.html").read_text()
    assert "<h2>Time series</h2>" not in plain and "<h2>Stock</h2>" not in plain  # only when given
    page = build_report(run_dir, tmp_path / "r.html", cube=maps.cube, change=change, stock=stock).read_text()
    for title in ("Time series", "Change", "Stock"):
        assert f"<h2>{title}</h2>" in page and f'href="#{title.lower().replace(" ", "-")}"' in page
    means = regional_means(maps.cube)
    with rasterio.open(maps.outs["2022"]) as src:
        band = src.read(1, masked=True)
    assert means["year"].tolist() == ["2014", "2022"]
    np.testing.assert_allclose(means["mean"].iloc[1], band.mean(), rtol=1e-6)
    assert "s_totals.csv" not in page and "total_Tg" in page  # the totals table is embedded
