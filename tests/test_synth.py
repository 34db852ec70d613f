"""The synthetic Bavaria generator: layout, raster validity, samples, OC distribution, truth and ceiling."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from rasterio.windows import Window
from scipy import stats

from socmap import synth
from socmap.errors import OutputError
from socmap.region import default_region_path, load_region, to_crs

YEARS = range(synth.FIRST_YEAR, synth.LAST_YEAR + 1)
VALUE_RANGES = {  # physically plausible ranges (units in the rasters' tags)
    "Elevation": (100.0, 2962.0),
    "LAI": (0.0, 7.0),
    "LST": (260.0, 310.0),
    "MODIS_NPP": (0.0, 1300.0),
    "SoilEvaporation": (5.0, 350.0),
    "TotalEvapotranspiration": (100.0, 900.0),
}


def _raster_paths(root: Path) -> list[Path]:
    return sorted((root / "covariates").rglob("*.tif"))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_gap(synth_dir: Path) -> None:
    assert (synth_dir / "covariates" / "static" / "Elevation.tif").is_file()
    for band in synth.YEARLY_BANDS:
        years = sorted(int(p.stem) for p in (synth_dir / "covariates" / "yearly" / band).glob("*.tif"))
        expected = [y for y in YEARS if not (band == synth.GAP_BAND and y in synth.GAP_YEARS)]
        assert years == expected, band
    assert len(_raster_paths(synth_dir)) == 1 + 5 * 22 - len(synth.GAP_YEARS)
    for name in ("samples.csv", "truth.csv", "truth.json", "region.geojson"):
        assert (synth_dir / name).is_file()
    assert not [p for p in synth_dir.parent.iterdir() if ".tmp-" in p.name]


def test_rasters_are_valid_geotiffs(synth_dir: Path) -> None:
    region = to_crs(load_region(), "EPSG:25832")
    for path in _raster_paths(synth_dir):
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 25832
            assert src.dtypes == ("float32",)
            assert src.nodata == synth.NODATA
            assert src.res == (1000.0, 1000.0)
            assert src.transform.c % 1000 == 0 and src.transform.f % 1000 == 0
            assert src.profile["tiled"] and src.profile["compress"] == "deflate"
            band = path.stem if path.parent.name == "static" else path.parent.name
            assert src.descriptions == (band,)
            assert src.tags(1)["units"] == src.units[0] != ""
            assert src.tags()["band"] == band
            if path.parent.name != "static":
                assert src.tags()["year"] == path.stem
            # the grid covers the region with at least 10 km margin
            left, bottom, right, top = src.bounds
            rminx, rminy, rmaxx, rmaxy = region.bounds
            assert left <= rminx - 10_000 and bottom <= rminy - 10_000
            assert right >= rmaxx + 10_000 and top >= rmaxy + 10_000
            data = src.read(1, masked=True)
            lo, hi = VALUE_RANGES[band]
            assert lo <= data.min() and data.max() <= hi, (path, data.min(), data.max())
            if band == "Elevation":
                assert not data.mask.any()
            else:
                assert 0 < data.mask.sum() < 0.01 * data.size  # lakes, and nothing else


def _read(root: Path, rel: str) -> np.ma.MaskedArray:
    with rasterio.open(root / "covariates" / rel) as src:
        return src.read(1, masked=True)


def test_fields_are_autocorrelated_and_linked(synth_dir: Path) -> None:
    elevation = _read(synth_dir, "static/Elevation.tif").filled(np.nan)
    lai = _read(synth_dir, "yearly/LAI/2015.tif").filled(np.nan)
    lst = _read(synth_dir, "yearly/LST/2015.tif").filled(np.nan)
    npp = _read(synth_dir, "yearly/MODIS_NPP/2015.tif").filled(np.nan)

    def lag1(a: np.ndarray) -> float:
        x, y = a[:, :-1].ravel(), a[:, 1:].ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        return float(np.corrcoef(x[ok], y[ok])[0, 1])

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        ok = np.isfinite(a) & np.isfinite(b)
        return float(np.corrcoef(a[ok], b[ok])[0, 1])

    assert lag1(elevation) > 0.9
    for band in (lai, lst, npp):
        assert lag1(band) > 0.5  # not white noise
    assert corr(lst, elevation) < -0.6  # LST falls with elevation
    assert corr(lai, npp) > 0.6  # productivity follows leaf area
    # the year-to-year signal: the same pixel differs between years, with a warming trend
    lst_means = [float(_read(synth_dir, f"yearly/LST/{y}.tif").mean()) for y in YEARS]
    assert np.std(lst_means) > 0.3
    assert stats.linregress(list(YEARS), lst_means).slope > 0


def test_samples_inside_region_and_table_format(synth_dir: Path) -> None:
    samples = pd.read_csv(synth_dir / "samples.csv")
    assert list(samples.columns) == ["POINTID", "GPS_LAT", "GPS_LONG", "year", "survey_date", "OC"]
    region = load_region(synth_dir / "region.geojson")
    assert region.equals(load_region(default_region_path()))
    assert shapely.contains_xy(region, samples["GPS_LONG"], samples["GPS_LAT"]).all()
    assert samples["year"].between(2007, 2023).all()
    dates = pd.to_datetime(samples["survey_date"], format="%Y-%m-%d")
    assert (dates.dt.year == samples["year"]).all()
    n_locations = samples["POINTID"].nunique()
    assert 4900 <= n_locations <= 5000
    assert 14_000 <= len(samples) <= 18_000
    visits = samples.groupby("POINTID").size()
    assert (visits > 1).mean() > 0.5  # repeat visits
    assert not samples.duplicated(["POINTID", "year"]).any()
    lucas = samples[samples["POINTID"] < 90_000_000]
    assert lucas["POINTID"].astype(str).str.len().eq(8).all()  # LUCAS ids: LAEA km x km
    assert set(lucas["year"]) <= set(synth.LUCAS_CAMPAIGNS)
    # no sample sits in a lake: the pixel under every point has data in every yearly band
    with rasterio.open(synth_dir / "covariates" / "yearly" / "LAI" / "2015.tif") as src:
        values = np.array([v[0] for v in src.sample(_to_utm(samples))])
    assert (values != synth.NODATA).all()


def _to_utm(samples: pd.DataFrame) -> list[tuple[float, float]]:
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 25832, always_xy=True).transform(
        samples["GPS_LONG"], samples["GPS_LAT"]
    )
    return list(zip(x, y, strict=True))


def test_oc_distribution(synth_dir: Path) -> None:
    oc = pd.read_csv(synth_dir / "samples.csv")["OC"]
    assert 15.0 <= oc.median() <= 25.0
    assert stats.skew(oc) > 2.0  # right-skewed
    above = (oc > 150).mean()
    assert 0.003 <= above <= 0.03  # a peat tail, so the MAX_OC=150 filter matters
    assert oc.max() <= synth.OC_LAB_MAX and oc.min() > 0
    assert np.allclose(oc, oc.round(1))


def test_ceiling_recomputed_from_written_truth(synth_dir: Path) -> None:
    info = json.loads((synth_dir / "truth.json").read_text())
    samples = pd.read_csv(synth_dir / "samples.csv")
    truth = pd.read_csv(synth_dir / "truth.csv")
    merged = samples.merge(truth, on=["POINTID", "year"], suffixes=("", "_t"), validate="one_to_one")
    assert len(merged) == len(samples) == info["n_samples"]
    assert np.array_equal(merged["OC"], merged["OC_t"])
    observed, noise_free = merged["OC"].to_numpy(), merged["OC_truth"].to_numpy()
    assert np.allclose(merged["noise"], observed - noise_free, atol=1e-6)
    sse = ((observed - noise_free) ** 2).sum()
    sst = ((observed - observed.mean()) ** 2).sum()
    assert info["r2_ceiling"] == pytest.approx(1 - sse / sst, abs=1e-9)
    capped = observed <= 150
    c_obs, c_true = observed[capped], noise_free[capped]
    r2_capped = 1 - ((c_obs - c_true) ** 2).sum() / ((c_obs - c_obs.mean()) ** 2).sum()
    assert info["r2_ceiling_max_oc_150"] == pytest.approx(r2_capped, abs=1e-9)
    assert info["signal_variance_ratio"] == pytest.approx(noise_free.var() / observed.var(), abs=1e-9)
    assert 0.5 < info["r2_ceiling_max_oc_150"] < info["r2_ceiling"] < 0.95
    # the noise is mean-one multiplicative: unbiased, and larger where the truth is larger
    assert abs(np.mean(observed / noise_free) - 1) < 0.02
    low, high = noise_free < np.median(noise_free), noise_free >= np.median(noise_free)
    assert np.std(observed[high] - noise_free[high]) > 2 * np.std(observed[low] - noise_free[low])


def test_truth_is_the_documented_function_of_windows_and_history(synth_dir: Path) -> None:
    """Re-cut 5x5 windows with plain rasterio windowed reads and re-evaluate the truth formula."""
    info = json.loads((synth_dir / "truth.json").read_text())
    samples = pd.read_csv(synth_dir / "samples.csv").sample(60, random_state=1)
    truth = pd.read_csv(synth_dir / "truth.csv").set_index(["POINTID", "year"])
    xy = _to_utm(samples)
    cov = synth_dir / "covariates"

    def window(path: Path, x: float, y: float) -> np.ndarray:
        if not path.exists():  # a gap year: all nodata
            return np.full(25, np.nan, np.float32)
        with rasterio.open(path) as src:
            row, col = src.index(x, y)
            a = src.read(1, window=Window(col - 2, row - 2, 5, 5), masked=True)
            return a.filled(np.nan).astype(np.float32).ravel()

    elev, hist = [], {b: [] for b in synth.YEARLY_BANDS}
    for (x, y), year in zip(xy, samples["year"], strict=True):
        elev.append(window(cov / "static" / "Elevation.tif", x, y))
        for band in synth.YEARLY_BANDS:
            hist[band].append(
                [window(cov / "yearly" / band / f"{yy}.tif", x, y) for yy in range(year - 4, year + 1)]
            )
    h = {b: np.array(v) for b, v in hist.items()}
    feats = synth.truth_features(
        np.array(elev), h["LAI"], h["LST"], h["MODIS_NPP"], h["SoilEvaporation"], h["TotalEvapotranspiration"]
    )
    expected = truth.loc[list(zip(samples["POINTID"], samples["year"], strict=True))]
    # an independent spot check of one feature: topographic position = centre minus window mean
    e = np.array(elev, dtype=np.float64)
    assert np.allclose(feats["tpi"], e[:, 12] - e.mean(axis=1))
    for name in synth.FEATURES:
        assert np.allclose(feats[name], expected[f"feature_{name}"], rtol=1e-7, atol=1e-6), name
    assert np.allclose(synth.soc_truth(feats, info["truth"]), expected["OC_truth"], rtol=1e-7)
    # temporal memory: changing an older year's NPP changes the truth
    older = dict(feats)
    older["npp_memory"] = feats["npp_memory"] + 50.0
    assert not np.allclose(synth.soc_truth(older, info["truth"]), expected["OC_truth"])


def test_fourier_field_grid_equals_pointwise_sum() -> None:
    """The matrix-product evaluation equals the defining sum of cosines (fast path == reference)."""
    field = synth.FourierField(np.random.default_rng(3), length_km=5.0, n=64)
    xs, ys = np.linspace(500, 540, 17), np.linspace(5300, 5330, 11)
    fast = field.grid(xs, ys)
    X, Y = np.meshgrid(xs, ys)
    ref = field.scale * np.cos(X[..., None] * field.kx + Y[..., None] * field.ky + field.phase).sum(axis=-1)
    assert fast.shape == (11, 17)
    assert np.allclose(fast, ref, atol=1e-10)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = synth.synthesize(tmp_path / "a", resolution=4000.0, n_locations=200, seed=11)
    synth.synthesize(tmp_path / "b", resolution=4000.0, n_locations=200, seed=11)
    synth.synthesize(tmp_path / "c", resolution=4000.0, n_locations=200, seed=12)
    assert a.n_samples > 200
    da, db, dc = (_digest(tmp_path / n) for n in "abc")
    assert da == db
    assert da["samples.csv"] != dc["samples.csv"]
    assert da["covariates/static/Elevation.tif"] != dc["covariates/static/Elevation.tif"]


def test_landscape_is_resolution_independent(tmp_path: Path) -> None:
    """Fields live in map coordinates: a 2 km pixel equals the mean of its 1 km children (up to smoothing)."""
    coarse = synth.synthesize(tmp_path / "c", resolution=2000.0, n_locations=100, seed=5)
    fine = synth.synthesize(tmp_path / "f", resolution=1000.0, n_locations=100, seed=5)
    e2 = _read(coarse.out, "static/Elevation.tif").astype(np.float64)
    e1 = _read(fine.out, "static/Elevation.tif").astype(np.float64)
    rows, cols = e1.shape[0] // 2, e1.shape[1] // 2
    e1 = e1[: rows * 2, : cols * 2].reshape(rows, 2, cols, 2).mean(axis=(1, 3))
    e2 = e2[:rows, :cols]
    assert np.corrcoef(e1.ravel(), e2.ravel())[0, 1] > 0.97


def test_refuses_existing_output_and_leaves_nothing_on_failure(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputError, match="exists and is not empty"):
        synth.synthesize(out, resolution=4000.0, n_locations=100)
    assert (out / "keep.txt").read_text() == "user data"

    calls = {"n": 0}
    original = synth._write_raster

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(synth, "_write_raster", failing)
    with pytest.raises(OSError, match="disk full"):
        synth.synthesize(tmp_path / "new", resolution=4000.0, n_locations=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no partial folder, no temp left


def test_a_users_own_truth_csv_is_not_read_as_the_known_ceiling(tmp_path: Path) -> None:
    """Only synthesize()'s truth.csv (with its truth.json) gives a ceiling; a user's file of that name is ignored."""
    samples = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "year": [2010, 2011, 2012], "target": [1.0, 2.0, 3.0]}
    )
    (tmp_path / "samples.csv").write_text("x\n")
    pd.DataFrame({"site": ["a", "b"], "value": [1, 2]}).to_csv(tmp_path / "truth.csv", index=False)
    rows = np.arange(3)
    assert synth.known_r2_ceiling(tmp_path / "samples.csv", samples, rows) is None
    truth = pd.DataFrame(
        {"POINTID": ["a", "b", "c"], "year": [2010, 2011, 2012], "OC_truth": [1.0, 2.5, 3.0]}
    )
    truth.to_csv(tmp_path / "truth.csv", index=False)
    assert synth.known_r2_ceiling(tmp_path / "samples.csv", samples, rows) is None  # no truth.json beside it
    (tmp_path / "truth.json").write_text("{}")
    expected = 1 - 0.25 / 2.0  # SSE (0.5²) over SST (2) of the targets
    assert synth.known_r2_ceiling(tmp_path / "samples.csv", samples, rows) == pytest.approx(expected)
