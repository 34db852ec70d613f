"""SOC stocks: the unit conversion and formula, Monte Carlo bands against their analytic values, totals against
an independent sum of the COG bands, zones from polygons and rasters, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import Affine

from socmap.errors import InputError, OutputError
from socmap.stocks import (
    Source,
    conc_factor,
    parse_depth,
    parse_source,
    pixel_area_ha,
    stock_map,
    zone_totals,
)

from tests.conftest import run_cli

CRS = "EPSG:32737"  # UTM 37 South (Kenya): not Bavaria
RES = 100.0  # m: a pixel is exactly 1 ha
T = Affine(RES, 0.0, 820_000.0, 0.0, -RES, 9_970_000.0)
H, W = 20, 30
NAMES = ("mean", "Q0.05", "Q0.5", "Q0.95", "PI90_width", "model_spread_sd", "DI", "AOA")


def _write_map(
    path: Path,
    mean: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    unit: str = "%",
    names: tuple[str, ...] = NAMES,
) -> Path:
    """A socmap-like 8-band map: mean, Q0.05, Q0.5 (= mean), Q0.95, ... with band name tags."""
    bands = [mean, lo, mean, hi, hi - lo, np.zeros_like(mean), np.zeros_like(mean), np.ones_like(mean)]
    profile = {"driver": "GTiff", "dtype": "float32", "count": 8, "width": W, "height": H, "crs": CRS}
    with rasterio.open(path, "w", **profile, transform=T, nodata=-9999.0) as dst:
        for i, (name, values) in enumerate(zip(names, bands, strict=True), start=1):
            dst.write(np.where(np.isnan(values), -9999.0, values).astype(np.float32), i)
            dst.update_tags(i, name=name)
        dst.update_tags(unit=unit, target="SOC", year="2020")
    return path


@pytest.fixture
def conc_map(tmp_path: Path) -> Path:
    """SOC in % with an asymmetric interval and a nodata corner."""
    rows, cols = np.mgrid[0:H, 0:W]
    mean = 1.0 + 0.05 * rows + 0.02 * cols
    mean[:3, :3] = np.nan
    return _write_map(tmp_path / "soc.tif", mean, mean - 0.3, mean + 0.5)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(masked=True).astype(np.float64).filled(np.nan)


def test_formula_units_and_mean_are_exact(conc_map: Path, tmp_path: Path) -> None:
    # 1 % = 10 g/kg; stock = conc * BD * d * (1 - CF) * 0.1; the mean band is analytic (independent factors)
    result = stock_map(conc_map, tmp_path / "stock.tif", depth=(0, 30), bd=Source(1.3), cf=Source(0.1))
    conc = _read(conc_map)
    stock = _read(result.out)
    expected = conc[0] * 10 * 1.3 * 30 * 0.9 * 0.1
    np.testing.assert_allclose(stock[0], expected, rtol=1e-6)
    assert np.isnan(stock[:, :3, :3]).all() and result.n_pixels == H * W - 9
    with rasterio.open(result.out) as src:
        assert (
            src.units == ("t/ha",) * 4 and src.tags()["depth"] == "0-30 cm" and src.tags()["year"] == "2020"
        )
    assert conc_factor("g/kg") == 1.0 and conc_factor("%") == 10.0


def test_monte_carlo_quantiles_match_analytic(conc_map: Path, tmp_path: Path) -> None:
    # with exact BD and CF, the stock's quantiles are the concentration's quantiles times the constant factor
    result = stock_map(conc_map, tmp_path / "s.tif", depth=(10, 30), bd=Source(1.2), draws=4000, seed=3)
    conc, stock = _read(conc_map), _read(result.out)
    factor = 10 * 1.2 * 20 * 0.1
    ok = np.isfinite(stock[0])
    for band, conc_band in ((1, 1), (2, 3)):
        rel = stock[band][ok] / (conc[conc_band][ok] * factor) - 1
        assert abs(np.median(rel)) < 0.01 and np.abs(rel).max() < 0.05
    # a point concentration (no interval) and a normal BD: Q05/Q95 = conc * (BD -+ 1.645 sd) * ...
    point = _write_map(tmp_path / "p.tif", conc[0], conc[0], conc[0])
    out = stock_map(
        point, tmp_path / "p_stock.tif", depth=(0, 20), bd=Source(1.4), bd_sd=Source(0.1), draws=4000
    )
    got = _read(out.out)
    base = conc[0] * 10 * 20 * 0.1
    np.testing.assert_allclose(np.nanmedian(got[1] / base), 1.4 - 1.6449 * 0.1, rtol=0.01)
    np.testing.assert_allclose(np.nanmedian(got[2] / base), 1.4 + 1.6449 * 0.1, rtol=0.01)
    np.testing.assert_allclose(np.nanmedian(got[3] / base), 0.1, rtol=0.05)  # sd of BD x base


def test_totals_equal_numpy_sums_of_the_cog(conc_map: Path, tmp_path: Path) -> None:
    result = stock_map(
        conc_map, tmp_path / "stock.tif", depth=(0, 30), bd=Source(1.3), bd_sd=Source(0.1), cf=Source(0.05)
    )
    stock = _read(result.out)
    row = result.table.iloc[0]
    area_ha = RES * RES / 1e4
    assert row["zone"] == "all" and row["n_pixels"] == np.isfinite(stock[0]).sum()
    np.testing.assert_allclose(row["total_Tg"], np.nansum(stock[0]) * area_ha / 1e6, rtol=1e-9)
    np.testing.assert_allclose(row["total_Tg_Q05"], np.nansum(stock[1]) * area_ha / 1e6, rtol=1e-9)
    np.testing.assert_allclose(row["total_Tg_Q95"], np.nansum(stock[2]) * area_ha / 1e6, rtol=1e-9)
    indep = 2 * 1.6449 * np.sqrt(np.nansum((stock[3] * area_ha) ** 2)) / 1e6
    np.testing.assert_allclose(row["width_Tg_if_independent"], indep, rtol=1e-4)
    assert row["width_Tg_if_independent"] < row["total_Tg_Q95"] - row["total_Tg_Q05"]
    assert result.totals is not None and result.totals.is_file()


def test_zones_from_polygons_and_from_a_raster(conc_map: Path, tmp_path: Path) -> None:
    import geopandas as gpd

    result = stock_map(conc_map, tmp_path / "stock.tif", depth=(0, 30), bd=Source(1.3))
    stock = _read(result.out)
    # two rectangles on pixel edges: rows 0-9 x cols 0-14 and rows 10-19 x cols 15-29 (given in lon/lat)
    boxes = [shapely.box(*(T @ (0, 10)), *(T @ (15, 0))), shapely.box(*(T @ (15, 20)), *(T @ (30, 10)))]
    boxes = [shapely.box(b.bounds[0], b.bounds[1], b.bounds[2], b.bounds[3]) for b in boxes]
    frame = gpd.GeoDataFrame({"name": ["north-west", "south-east"]}, geometry=boxes, crs=CRS).to_crs(4326)
    frame.to_file(tmp_path / "zones.geojson")
    table = zone_totals(result.out, tmp_path / "zones.geojson", "name").set_index("zone")
    np.testing.assert_allclose(
        table.loc["north-west", "total_Tg"], np.nansum(stock[0][:10, :15]) / 1e6, rtol=1e-5
    )
    np.testing.assert_allclose(
        table.loc["south-east", "total_Tg"], np.nansum(stock[0][10:, 15:]) / 1e6, rtol=1e-5
    )
    assert table.loc["north-west", "n_nodata"] == 9  # the nodata corner lies in the north-west zone
    codes = np.where(np.arange(W)[None, :] < 12, 1, 2) * np.ones((H, 1))
    profile = {"driver": "GTiff", "dtype": "float32", "count": 1, "width": W, "height": H, "crs": CRS}
    with rasterio.open(tmp_path / "codes.tif", "w", **profile, transform=T) as dst:
        dst.write(codes.astype(np.float32), 1)
    by_code = zone_totals(result.out, tmp_path / "codes.tif").set_index("zone")
    np.testing.assert_allclose(by_code.loc["1", "total_Tg"], np.nansum(stock[0][:, :12]) / 1e6, rtol=1e-9)
    np.testing.assert_allclose(by_code.loc["2", "total_Tg"], np.nansum(stock[0][:, 12:]) / 1e6, rtol=1e-9)


def test_bulk_density_raster_on_another_grid_is_warped(conc_map: Path, tmp_path: Path) -> None:
    # a constant BD raster in lon/lat covering the map gives the same mean band as the constant
    from rasterio.warp import transform_bounds

    with rasterio.open(conc_map) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    step = 0.001
    transform = Affine(step, 0, west - 0.01, 0, -step, north + 0.01)
    width, height = int((east - west + 0.02) / step) + 1, int((north - south + 0.02) / step) + 1
    profile = {"driver": "GTiff", "dtype": "float32", "count": 1, "width": width, "height": height}
    with rasterio.open(tmp_path / "bd.tif", "w", **profile, crs="EPSG:4326", transform=transform) as dst:
        dst.write(np.full((1, height, width), 1.25, np.float32))
    raster = stock_map(
        conc_map, tmp_path / "r.tif", depth=(0, 30), bd=parse_source(str(tmp_path / "bd.tif"), "--bd")
    )
    const = stock_map(conc_map, tmp_path / "c.tif", depth=(0, 30), bd=Source(1.25))
    np.testing.assert_allclose(_read(raster.out)[0], _read(const.out)[0], rtol=1e-6)


def test_pixel_area_geographic() -> None:
    # a 1 x 1 degree cell at the equator: 12,308.8 km2 on WGS84
    area = pixel_area_ha(Affine(1.0, 0, 10.0, 0, -1.0, 0.5), rasterio.crs.CRS.from_epsg(4326), 0, 1)
    np.testing.assert_allclose(area[0] / 100, 12_308.8, rtol=1e-3)


def test_refusals_are_one_clear_line(conc_map: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'pH', which is not a carbon concentration.*g/kg or %"):
        stock_map(conc_map, tmp_path / "a.tif", depth=(0, 30), bd=Source(1.3), unit="pH")
    with pytest.raises(InputError, match=r"--depth '30-10'"):
        parse_depth("30-10")
    assert parse_depth("0-30") == (0.0, 30.0) and parse_depth("20") == (0.0, 20.0)
    with pytest.raises(InputError, match="coarse fragments"):
        stock_map(conc_map, tmp_path / "b.tif", depth=(0, 30), bd=Source(1.3), cf=Source(1.5))
    with pytest.raises(InputError, match=r"--bd 'nope.tif': expected a number or an existing raster"):
        parse_source("nope.tif", "--bd")
    stock_map(conc_map, tmp_path / "c.tif", depth=(0, 30), bd=Source(1.3))
    with pytest.raises(OutputError, match="exists"):
        stock_map(conc_map, tmp_path / "c.tif", depth=(0, 30), bd=Source(1.3))
    proc = run_cli(
        "stock",
        str(conc_map),
        "--out",
        str(tmp_path / "d.tif"),
        "--depth",
        "0-30",
        "--bd",
        "1.3",
        "--unit",
        "pH",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a carbon concentration" in proc.stderr


def test_an_80_percent_map_is_read_at_its_own_levels(tmp_path: Path) -> None:
    # uncertainty.nominal 0.8: bands Q0.1 / Q0.9; the stock's Q0.05 / Q0.95 follow from z(0.9) = 1.2816
    mean = np.full((H, W), 2.0)
    names = ("mean", "Q0.1", "Q0.5", "Q0.9", "PI80_width", "model_spread_sd", "DI", "AOA")
    path = _write_map(tmp_path / "m80.tif", mean, mean - 0.5, mean + 0.5, names=names)
    result = stock_map(path, tmp_path / "s80.tif", depth=(0, 10), bd=Source(1.0), draws=20_000)
    got = _read(result.out)
    base = 10 * 10 * 0.1  # % -> g/kg, BD 1, 10 cm
    np.testing.assert_allclose(np.median(got[1]), (2.0 - 0.5 * 1.6449 / 1.2816) * base, rtol=0.01)
    np.testing.assert_allclose(np.median(got[2]), (2.0 + 0.5 * 1.6449 / 1.2816) * base, rtol=0.01)
