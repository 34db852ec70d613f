"""Mapping with any model kind: a calibrated quantile forest (conformal interval, DI and AOA bands recomputed
from the run's calibration), an ensemble of kinds, trees
bit-identical across schedulers, a static-only stack mapped without a year, and a kind registered by the user
that trains and maps without any change to socmap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from numpy.typing import NDArray

import socmap.models.registry as registry
from socmap.config import MapConfig, load_config
from socmap.data import RasterStack, discover_stack
from socmap.errors import InputError
from socmap.mapping import MapResult, map_soc
from socmap.mapping.uncertainty import interval_source, uncertainty_method
from socmap.models import FitData, FitInfo, InputSpec, SocModel, load_model, read_rows, register_model
from socmap.models.ensemble import EnsembleModel
from socmap.region import GRID_FOOTPRINT
from socmap.train import train
from socmap.windows import extract_windows

YEAR = "2023"
# a 40 x 40 px box in the south-east of the 2000 m grid (lakes, region edge): several 16 px blocks
BBOX = [700_000.0, 5_270_000.0, 780_000.0, 5_350_000.0]
LEVELS = (0.05, 0.5, 0.95)


def _overrides(small_synth_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "samples.path": str(small_synth_dir / "samples.csv"),
        "covariates.root": str(small_synth_dir / "covariates"),
        "train.num_runs": 1,
        "train.threads": 2,
        "train.wandb_mode": "disabled",
        "uncertainty.calibration_folds": 0,  # uncalibrated unless a test asks (calibration refits the model)
        **extra,
    }


def _train(small_synth_dir: Path, out: Path, prepared: Path | None, **extra: Any) -> Path:
    """A run folder of ``train.model`` (torch's thread count restored: train sets it)."""
    threads = torch.get_num_threads()
    try:
        train(load_config(None, _overrides(small_synth_dir, **extra)), out, prepared=prepared)
    finally:
        torch.set_num_threads(threads)
    return out


def _map(run: Path, out: Path, year: str | None = YEAR, **options: Any) -> MapResult:
    return map_soc(MapConfig(year=year, bbox=BBOX, block_size=16, **options), run, out)


def _read(path: Path) -> tuple[NDArray[np.float32], dict[str, str], tuple[str, ...]]:
    with rasterio.open(path) as src:
        return src.read(), src.tags(), tuple(src.descriptions)


def _stack(run: Path) -> RasterStack:
    return discover_stack(load_config(run / "config.yaml"))


def _pixels(path: Path, stack: RasterStack, n: int, seed: int = 0) -> tuple[NDArray[Any], ...]:
    """(map rows, map cols, grid rows, grid cols) of ``n`` random mapped pixels."""
    with rasterio.open(path) as src:
        values, t = src.read(1), src.transform
    g = stack.grid.transform
    row0, col0 = round((t.f - g.f) / g.e), round((t.c - g.c) / g.a)
    r, c = np.nonzero(values != -9999.0)
    pick = np.random.default_rng(seed).choice(r.size, min(n, r.size), replace=False)
    return r[pick], c[pick], r[pick] + row0, c[pick] + col0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared folder shared by the runs of this module (same data config: prepared once)."""
    return tmp_path_factory.mktemp("prepared") / "prepared"


@pytest.fixture(scope="module")
def qrf_run(small_synth_dir: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qrf") / "run"
    extra = {
        "train.model": "qrf",
        "models": {"qrf": {"n_estimators": 20}},
        "uncertainty.calibration_folds": 3,
    }
    return _train(small_synth_dir, out, prepared, **extra)


@pytest.fixture(scope="module")
def qrf_map(qrf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> MapResult:
    return _map(qrf_run, tmp_path_factory.mktemp("qrf-map") / "qrf.tif")


def test_qrf_map_bands_are_the_calibrated_interval_di_and_aoa(qrf_run: Path, qrf_map: MapResult) -> None:
    """Band 1 is the forest's conditional mean; bands 2-4 the calibrated quantiles mean + σ·offset, σ from the
    forest's own Q95-Q05 width and the DI; band 5 their width; 7-8 the DI and AOA of the run's aoa.json, each
    recomputed here from the saved calibration, the forest's own quantiles and a nearest-neighbour search."""
    from scipy.spatial import cKDTree

    from socmap.uncertainty.runcal import load_run_uncertainty

    values, tags, descriptions = _read(qrf_map.out)
    assert qrf_map.method == "conformal" and qrf_map.model_kinds == "qrf"
    assert qrf_map.n_blocks >= 6 and qrf_map.n_mapped > 500
    assert tags["method"].startswith("conformal") and tags["model_kinds"] == "qrf"
    assert "calibrated conformal quantile" in descriptions[1] and "dissimilarity index" in descriptions[6]
    assert qrf_map.aoa_png is not None and qrf_map.aoa_png.read_bytes()[:4] == b"\x89PNG"
    found = load_run_uncertainty(qrf_run)
    assert found.calibration is not None and found.aoa is not None and found.uses_width
    stack = _stack(qrf_run)
    r, c, rows, cols = _pixels(qrf_map.out, stack, 300)
    windows = extract_windows(stack, rows, cols, [YEAR] * rows.size, 5, 5)
    forest = load_model(qrf_run / "runs" / "run_0")
    point, q = forest.predict(windows), forest.predict_quantiles(windows, LEVELS)
    assert q is not None
    aoa = found.aoa
    x = (aoa.features.transform(windows) - aoa.center) / aoa.scale * aoa.weights
    di = cKDTree(aoa.train).query(x)[0] / aoa.mean_distance
    calib = found.calibration
    expected = calib.quantiles(point, (0.05, 0.5, 0.95), width=q[:, 2] - q[:, 0], di=di)
    np.testing.assert_allclose(values[0, r, c], point, rtol=1e-6, atol=1e-5)
    for j in range(3):
        np.testing.assert_allclose(values[1 + j, r, c], expected[:, j], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(values[4, r, c], expected[:, 2] - expected[:, 0], rtol=1e-5, atol=1e-3)
    assert (values[5] == -9999.0).all()  # one run: no spread between runs
    np.testing.assert_allclose(values[6, r, c], di, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(values[7, r, c], (di <= aoa.threshold).astype(np.float32))
    assert qrf_map.aoa_share is not None and 0.0 < qrf_map.aoa_share <= 1.0


def test_train_stores_a_calibration_refittable_from_its_oof(qrf_run: Path) -> None:
    """calibration.json is the calibration of calibration_oof.csv (out-of-fold rows of training samples only,
    never the test set), and records the calibrated intervals' scores on the held-out test set."""
    import json

    import pandas as pd

    from socmap.uncertainty import Calibration, calibrate

    state = json.loads((qrf_run / "calibration.json").read_text())
    oof = pd.read_csv(qrf_run / "calibration_oof.csv")
    split = pd.read_csv(qrf_run / "split.csv")
    test_ids = set(split.loc[split["role"] == "test", "sample_id"])
    assert state["folds"] == 3 and not test_ids & set(oof["sample_id"]) and len(oof) > 100
    again = calibrate(oof["observed"], oof["predicted"], width=oof["own_width"], di=oof["di"])
    saved = Calibration.from_json(state)
    assert saved.offsets == pytest.approx(again.offsets) and saved.scale == again.scale
    assert set(state["test"]) >= {"0.5", "0.9", "aoa"} and state["n_test"] > 20
    assert 0.6 < state["test"]["0.9"]["picp"] <= 1.0
    # the run's out-of-fold score on its training samples, recomputed from the stored out-of-fold rows
    y, p = oof["observed"].to_numpy(), oof["predicted"].to_numpy()
    assert state["oof_metrics"]["r2"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    assert state["oof_metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    assert state["oof_metrics"]["me"] == pytest.approx(np.mean(p - y))


def test_tree_map_is_bit_identical_on_dask_threads(qrf_run: Path, qrf_map: MapResult, tmp_path: Path) -> None:
    other = _map(qrf_run, tmp_path / "threads.tif", scheduler="threads")
    with rasterio.open(qrf_map.out) as a, rasterio.open(other.out) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.profile == b.profile and a.tags() == b.tags()


def test_ensemble_of_kinds_maps(small_synth_dir: Path, prepared: Path, tmp_path: Path) -> None:
    """An rf + linear mean blend in one run: a point model (no intervals), band 1 its blended prediction."""
    models = {"ensemble": {"members": ["rf", "linear"], "blend": "mean"}, "rf": {"n_estimators": 20}}
    run = _train(small_synth_dir, tmp_path / "run", prepared, **{"train.model": "ensemble", "models": models})
    result = _map(run, tmp_path / "ens.tif")
    values, tags, descriptions = _read(result.out)
    assert result.method == "none" and result.model_kinds == "ensemble of rf+linear"
    assert tags["model_kinds"] == "ensemble of rf+linear" and "ensemble of rf+linear" in descriptions[0]
    assert "ensemble (mean: rf 0.50, linear 0.50)" in tags["models"]
    assert result.n_mapped > 500 and (values[1:] == -9999.0).all()
    stack = _stack(run)
    r, c, rows, cols = _pixels(result.out, stack, 200)
    windows = extract_windows(stack, rows, cols, [YEAR] * rows.size, 5, 5)
    expected = load_model(run / "runs" / "run_0").predict(windows)
    np.testing.assert_allclose(values[0, r, c], expected, rtol=1e-6, atol=1e-5)


def test_interval_sources_name_kinds(qrf_run: Path) -> None:
    """A blend whose members all give quantiles maps with model_intervals and names its members' source."""
    forest = load_model(qrf_run / "runs" / "run_0")
    blend = EnsembleModel()
    blend.members, blend.weights = [forest, forest], np.array([0.5, 0.5])
    assert uncertainty_method([blend]) == "model_intervals"
    assert interval_source(blend) == (
        "ensemble: weighted mean of its members' quantiles (qrf quantile regression forest quantiles)"
    )


def test_static_stack_maps_without_a_year(small_synth_dir: Path, tmp_path: Path) -> None:
    """Static covariates only: map.year is None (a given year is refused, naming the key); without a region
    the map covers the covariate grid's footprint."""
    extra = {"train.model": "linear", "covariates.temporal": [], "windows.time_steps": 1}
    run = _train(small_synth_dir, tmp_path / "run", None, **extra)
    with pytest.raises(InputError, match=r"^map\.year 2023: the covariates are static \(no temporal bands\)"):
        _map(run, tmp_path / "year.tif", year="2023")
    result = _map(run, tmp_path / "static.tif", year=None)
    values, tags, _ = _read(result.out)
    assert tags["region"] == GRID_FOOTPRINT and result.region == GRID_FOOTPRINT
    assert result.year is None and tags["year"] == "none (static covariates)"
    assert tags["covariate_time_labels"] == "none (static covariates)" and result.n_mapped > 500
    stack = _stack(run)
    assert not stack.temporal
    r, c, rows, cols = _pixels(result.out, stack, 100)
    windows = extract_windows(stack, rows, cols, ["static"] * rows.size, 5, 1)
    expected = load_model(run / "runs" / "run_0").predict(windows)
    np.testing.assert_allclose(values[0, r, c], expected, rtol=1e-6, atol=1e-5)


class CentreElevation(SocModel):
    """A user's model: a line through the target against band 0's centre pixel (Elevation); JSON state."""

    coef: tuple[float, float] = (0.0, 0.0)

    def _x(self, windows: NDArray[np.float32]) -> NDArray[np.float64]:
        c = self.require_inputs().window_size // 2
        return np.nanmean(np.asarray(windows[:, 0, c, c, :], np.float64), axis=1)

    def fit(self, data: FitData) -> FitInfo:
        self.inputs = data.inputs
        x, y = self._x(read_rows(data.windows, data.train)), data.target[data.train]
        slope, intercept = np.polyfit(x, y, 1)
        self.coef = (float(slope), float(intercept))
        return FitInfo(parameters=2)

    def predict(self, windows: NDArray[np.float32], batch_size: int = 4096) -> NDArray[np.float64]:
        return self.coef[0] * self._x(windows) + self.coef[1]

    def state(self, folder: Path) -> dict[str, Any]:
        return {"coef": list(self.coef)}

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        model = cls()
        model.coef = (float(state["coef"][0]), float(state["coef"][1]))
        return model


@pytest.fixture
def centre_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.available_models()))  # restored after the test
    register_model(
        "centre_elevation", CentreElevation, lambda config: CentreElevation(), "centre elevation line"
    )
    yield "centre_elevation"


def test_a_registered_kind_trains_and_maps(
    centre_kind: str, small_synth_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    """The map of a kind registered here equals its line applied to the Elevation raster itself."""
    run = _train(small_synth_dir, tmp_path / "run", prepared, **{"train.model": centre_kind})
    result = _map(run, tmp_path / "user.tif")
    values, tags, _ = _read(result.out)
    assert result.method == "none" and tags["model_kinds"] == centre_kind and result.n_mapped > 500
    stack = _stack(run)
    r, c, rows, cols = _pixels(result.out, stack, 300)
    with rasterio.open(stack.files[("Elevation", None)]) as src:
        elevation = src.read(1).astype(np.float64)[rows, cols]
    slope, intercept = load_model(run).coef  # type: ignore[attr-defined]
    np.testing.assert_allclose(values[0, r, c], slope * elevation + intercept, rtol=1e-5, atol=1e-4)


def test_report_says_where_the_map_can_be_trusted(qrf_run: Path, qrf_map: MapResult, tmp_path: Path) -> None:
    """The report's AOA section gives the share of the mapped region inside the AOA (the COG's pixels) and
    embeds the AOA preview; the intervals section names the calibration."""
    from socmap.report import build_report

    page = build_report(qrf_run, tmp_path / "r.html", map_path=qrf_map.out).read_text()
    with rasterio.open(qrf_map.out) as src:
        aoa = src.read(8, masked=True)
    share = float((aoa == 1).sum() / aoa.count())
    assert qrf_map.aoa_share == pytest.approx(share, abs=1e-6)
    assert "<h2>Where this map can be trusted</h2>" in page
    assert f"{share:.1%} of the mapped region lies inside the AOA" in page
    assert 'alt="qrf_aoa.png"' in page and "normalised split-conformal" in page


def test_pixels_outside_the_aoa_have_larger_errors_against_the_truth(
    qrf_run: Path, small_synth_dir: Path
) -> None:
    """Synthetic Bavaria: at random grid pixels, the calibrated run's error against the known noise-free truth
    (socmap.synth.soc_truth, recomputed from the rasters) is larger outside the AOA than inside."""
    import json

    from socmap.synth import soc_truth, truth_features
    from socmap.uncertainty.runcal import load_run_uncertainty

    stack = _stack(qrf_run)
    rng = np.random.default_rng(0)
    rows = rng.integers(3, stack.grid.height - 3, 1500)
    cols = rng.integers(3, stack.grid.width - 3, 1500)
    windows = extract_windows(stack, rows, cols, [YEAR] * rows.size, 5, 5)
    windows = windows[np.isfinite(windows).mean(axis=(1, 2, 3, 4)) > 0.9]
    band = {name: i for i, name in enumerate(stack.bands)}

    def yearly(name: str) -> NDArray[np.float32]:  # [N, years, 25]: the generator's layout
        return windows[:, band[name]].transpose(0, 3, 1, 2).reshape(windows.shape[0], 5, 25)

    elevation = windows[:, band["Elevation"], :, :, -1].reshape(windows.shape[0], 25)
    features = truth_features(
        elevation,
        yearly("LAI"),
        yearly("LST"),
        yearly("MODIS_NPP"),
        yearly("SoilEvaporation"),
        yearly("TotalEvapotranspiration"),
    )
    truth = soc_truth(features, json.loads((small_synth_dir / "truth.json").read_text())["truth"])
    found = load_run_uncertainty(qrf_run)
    assert found.aoa is not None
    error = np.abs(load_model(qrf_run / "runs" / "run_0").predict(windows) - truth)
    inside = found.aoa.di(windows) <= found.aoa.threshold
    ok = np.isfinite(truth)
    assert 0.5 < inside[ok].mean() < 0.98
    assert error[ok & ~inside].mean() > 1.3 * error[ok & inside].mean()


def test_predict_adds_the_calibrated_interval(qrf_run: Path, prepared: Path, tmp_path: Path) -> None:
    """socmap predict on a calibrated run writes the calibrated interval (ordered), DI and AOA, and scores the
    interval (the stored PICP recomputed from the CSV)."""
    import json

    import pandas as pd

    from socmap.predict import predict_samples

    config = load_config(qrf_run / "config.yaml")
    result = predict_samples(config, qrf_run, tmp_path / "p.csv", prepared=prepared)
    table = pd.read_csv(result.out)
    assert {"cal_lower", "cal_median", "cal_upper", "di", "in_aoa"} <= set(table.columns)
    assert (table["cal_lower"] <= table["cal_median"]).all() and (
        table["cal_median"] <= table["cal_upper"]
    ).all()
    y, lo, hi = table["observed"], table["cal_lower"], table["cal_upper"]
    stored = json.loads(result.metrics_file.read_text())["calibrated_intervals"]
    assert stored["picp"] == pytest.approx(((y >= lo) & (y <= hi)).mean())
    assert stored["picp"] > 0.85  # mostly training samples: the calibrated interval covers them


def test_qrf_map_through_the_fast_forest_equals_the_library_path(
    qrf_run: Path, qrf_map: MapResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map's forests predict through FastForest (one tree walk for mean and quantiles, no joblib); with it
    switched off (quantile-forest's own predict, twice) every band of the map is the same, bit for bit."""
    from socmap.mapping.members import cached_member, clear_cache
    from socmap.models.trees import FastForest

    member = cached_member(qrf_run / "runs" / "run_0", _stack(qrf_run).bands)
    assert getattr(member, "fast", None) is not None
    clear_cache()
    monkeypatch.setattr(FastForest, "supports", staticmethod(lambda estimator: False))
    try:
        library = _map(qrf_run, tmp_path / "library.tif")
        assert getattr(cached_member(qrf_run / "runs" / "run_0", _stack(qrf_run).bands), "fast", 1) is None
    finally:
        clear_cache()
    with rasterio.open(qrf_map.out) as a, rasterio.open(library.out) as b:
        np.testing.assert_array_equal(a.read(), b.read())
