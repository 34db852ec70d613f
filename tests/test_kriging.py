"""Kriging: a synthetic field's variogram is recovered, local kriging equals global kriging (gstools) with every
point as neighbour, and regression kriging is honest (no test targets, out-of-fold residuals)."""

from __future__ import annotations

from pathlib import Path

import gstools as gs
import numpy as np
import pytest
from numpy.typing import NDArray

import socmap.models.zoo  # noqa: F401  (registers the kinds: base models save under their kind)
from socmap.errors import InputError
from socmap.kriging import LocalKriging, LocationFrame, Variogram, fit_variogram
from socmap.models import FitData, InputSpec, TargetInfo, load_model, predict_located, save_model
from socmap.models.geostat import KrigingOptions, OrdinaryKrigingModel, RegressionKrigingModel
from socmap.models.trees import ForestModel, LinearModel
from socmap.report import build_report

LEVELS = (0.05, 0.5, 0.95)
FOREST = {"n_estimators": 30, "min_samples_leaf": 1}  # a forest that nearly interpolates its training rows


def _field(model: gs.CovModel, n: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xy = np.random.default_rng(seed).uniform(0.0, 200.0, (n, 2))
    return xy, np.asarray(gs.SRF(model, seed=seed)((xy[:, 0], xy[:, 1])), np.float64)


def test_variogram_of_a_synthetic_field_is_recovered() -> None:
    """Spherical field (range 20 km, partial sill 1, nugget 0.2): the spherical fit finds range and sill within
    15 % / 20 %; with automatic model choice the fitted 95 % range and sill stay within 25 %."""
    true = gs.Spherical(dim=2, var=1.0, len_scale=20.0, nugget=0.2)
    xy, z = _field(true, 1500, 0)
    fit = fit_variogram(xy, z, ["spherical"])
    assert fit.len_scale == pytest.approx(20.0, rel=0.15)
    assert fit.sill == pytest.approx(1.2, rel=0.2)
    assert fit.nugget == pytest.approx(0.2, abs=0.25)
    auto = fit_variogram(xy, z)
    assert auto.model in ("spherical", "exponential", "gaussian", "matern") and len(auto.scores) == 4
    assert auto.effective_range == pytest.approx(true.percentile_scale(0.95), rel=0.25)
    assert auto.sill == pytest.approx(1.2, rel=0.25)
    # a field without spatial structure: (almost) all nugget
    noise = np.random.default_rng(1).normal(0.0, 1.0, 1500)
    flat = fit_variogram(xy, noise)
    assert flat.nugget / flat.sill > 0.8


def test_local_kriging_equals_global_ordinary_kriging() -> None:
    """With every data point as neighbour, local kriging is gstools' (exact) global ordinary kriging, mean and
    variance; at a data point it returns the datum with zero variance."""
    v = Variogram("exponential", 1.5, 12.0, 0.3)
    xy, z = _field(v.covmodel(), 120, 2)
    targets = np.random.default_rng(3).uniform(0.0, 200.0, (50, 2))
    mean, var = LocalKriging(xy, z, v, neighbours=len(z)).predict(targets, batch=17)
    ok = gs.krige.Ordinary(v.covmodel(), (xy[:, 0], xy[:, 1]), z, exact=True)
    ref_mean, ref_var = ok((targets[:, 0], targets[:, 1]), return_var=True)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(var, ref_var, rtol=1e-5, atol=1e-8)
    at_data, var_at_data = LocalKriging(xy, z, v, neighbours=16).predict(xy[:5])
    np.testing.assert_allclose(at_data, z[:5], atol=1e-6)
    assert np.all(var_at_data < 1e-6)


def test_location_frame_of_geographic_grid_is_in_km() -> None:
    grid = {"crs_wkt": "EPSG:4326"}
    lonlat = np.array([[21.0, 41.5], [21.0, 42.5], [22.0, 41.5]])
    km = LocationFrame.for_grid(grid, lonlat).to_km(lonlat)
    assert np.hypot(*(km[1] - km[0])) == pytest.approx(111.1, rel=0.01)  # 1 degree of latitude
    assert np.hypot(*(km[2] - km[0])) == pytest.approx(111.3 * np.cos(np.radians(41.5)), rel=0.01)
    frame = LocationFrame.for_grid({"crs_wkt": "EPSG:32634"}, lonlat)
    np.testing.assert_allclose(frame.to_km(np.array([[5000.0, 2000.0]])), [[5.0, 2.0]])


def _synthetic(n: int = 400, seed: int = 0) -> tuple[FitData, NDArray[np.float64]]:
    """Windows whose centre pixel drives the target linearly, plus a smooth spatial field and noise.
    Returns the fit data (every row) and the spatial field."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.0, 100.0, (n, 2))
    field = np.asarray(gs.SRF(gs.Gaussian(dim=2, var=1.0, len_scale=15.0), seed=seed)((xy[:, 0], xy[:, 1])))
    windows = rng.normal(0.0, 1.0, (n, 2, 3, 3, 1)).astype(np.float32)
    target = 2.0 * windows[:, 0, 1, 1, 0] + field + rng.normal(0.0, 0.1, n)
    spec = InputSpec(("a", "b"), ("a", "b"), 3, 1, ("0",), {}, TargetInfo("y", "u"))
    empty = np.empty(0, np.int64)
    data = FitData(windows, target, np.arange(n), empty, spec, xy=xy)
    return data, field


def _rk(base: str = "linear", **options: object) -> RegressionKrigingModel:
    def factory(kind: str) -> ForestModel | LinearModel:
        return ForestModel(FOREST, "none", 1) if kind == "rf" else LinearModel({}, "none", 1)

    parsed = KrigingOptions.parse("rk", {"base": base, **options}, ["rf", "linear"])
    return RegressionKrigingModel(parsed, factory)


def test_regression_kriging_never_sees_test_targets() -> None:
    """Fitted on the training rows, rk predicts the test rows identically whatever their targets are (NaN or
    shifted by 1000): neither base model, residuals, variogram nor kriging read them. It beats its base model
    where the field is spatially structured."""
    data, _ = _synthetic()
    train, test = np.arange(300), np.arange(300, 400)
    predictions = []
    for poison in (0.0, 1000.0, np.nan):
        target = data.target.copy()
        target[test] += poison
        model = _rk()
        fit = FitData(data.windows, target, train, data.monitor, data.inputs, xy=data.xy)
        model.fit(fit)
        point, q = predict_located(model, data.windows[test], data.xy[test], LEVELS)
        assert q is not None and np.isfinite(q).all()
        predictions.append(point)
    np.testing.assert_array_equal(predictions[0], predictions[1])
    np.testing.assert_array_equal(predictions[0], predictions[2])
    base = LinearModel({}, "none", 1)
    base.fit(FitData(data.windows, data.target, train, data.monitor, data.inputs))
    y = data.target[test]
    rmse_rk = np.sqrt(np.mean((predictions[0] - y) ** 2))
    rmse_base = np.sqrt(np.mean((base.predict(data.windows[test]) - y) ** 2))
    assert rmse_rk < 0.7 * rmse_base


def test_regression_kriging_residuals_are_out_of_fold() -> None:
    """The kriged residuals are the target minus base predictions of models that never saw the row: equal to
    an independent out-of-fold computation over the same inner folds, and (for a forest, whose in-sample
    residuals are small) clearly larger than in-sample residuals."""
    data, _ = _synthetic(n=240, seed=4)
    model = _rk("rf", inner_folds=3)
    model.fit(data)
    folds = model.inner_folds(data)
    assert sorted(np.bincount(folds).tolist()) == [80, 80, 80]
    expected = np.empty(data.target.size)
    for f in range(3):
        forest = ForestModel(FOREST, "none", 1)
        forest.fit(FitData(data.windows, data.target, np.flatnonzero(folds != f), data.monitor, data.inputs))
        held = np.flatnonzero(folds == f)
        expected[held] = data.target[held] - forest.predict(data.windows[held])
    assert model.frame is not None
    order = np.lexsort((model.points[:, 1], model.points[:, 0]))
    xy_order = np.lexsort((data.xy[:, 1], data.xy[:, 0]))
    np.testing.assert_allclose(model.values[order], expected[xy_order], rtol=1e-10, atol=1e-10)
    in_sample = data.target - model._base().predict(data.windows)
    assert np.std(model.values) > 2.0 * np.std(in_sample)


def test_kriging_models_save_and_load_without_pickle(tmp_path: Path) -> None:
    """rk and ok round-trip through model.json (+ the base model's own folder) with identical predictions."""
    data, _ = _synthetic(n=200, seed=5)
    rows = np.arange(150, 200)
    for model in (_rk("linear", neighbours=12), OrdinaryKrigingModel(KrigingOptions(neighbours=12))):
        model.fit(FitData(data.windows, data.target, np.arange(150), data.monitor, data.inputs, xy=data.xy))
        save_model(model, tmp_path / model.kind)
        assert not list((tmp_path / model.kind).rglob("*.pkl"))
        loaded = load_model(tmp_path / model.kind, ["a", "b"]).for_inference()
        before = predict_located(model, data.windows[rows], data.xy[rows], LEVELS)
        after = predict_located(loaded, data.windows[rows], data.xy[rows], LEVELS)
        np.testing.assert_allclose(after[0], before[0], rtol=1e-12)
        assert before[1] is not None and after[1] is not None
        np.testing.assert_allclose(after[1], before[1], rtol=1e-12)
        with pytest.raises(InputError, match="needs sample locations"):
            predict_located(loaded, data.windows[rows], None)


def test_kriging_options_are_checked() -> None:
    with pytest.raises(InputError, match=r"models.rk.base 'ok': expected one of rf, linear"):
        KrigingOptions.parse("rk", {"base": "ok"}, ["rf", "linear", "ok"])
    with pytest.raises(InputError, match=r"variogram_models.*expected among spherical"):
        KrigingOptions.parse("ok", {"variogram_models": ["circular"]}, [])
    with pytest.raises(InputError, match=r"option.*base: expected among"):
        KrigingOptions.parse("ok", {"base": "rf"}, [])


def test_regression_kriging_maps_with_kriging_intervals(small_synth_dir: Path, tmp_path: Path) -> None:
    """End to end: rk (linear base) with coordinate covariates trains and maps block-wise; band 1 is the model's
    prediction at the pixel centres, Q05/Q95 are prediction -/+ 1.645 kriging sd."""
    from socmap.mapping.blocks import pixel_centres
    from socmap.windows import extract_windows

    from tests.test_mapping_models import YEAR, _map, _pixels, _read, _stack, _train

    extra = {"train.model": "rk", "models": {"rk": {"base": "linear", "neighbours": 16}}}
    run = _train(small_synth_dir, tmp_path / "run", None, **{"covariates.coordinates": "xy", **extra})
    result = _map(run, tmp_path / "rk.tif")
    values, _tags, descriptions = _read(result.out)
    assert result.method == "model_intervals" and result.model_kinds == "rk" and result.n_mapped > 500
    assert "kriging variance" in descriptions[1]
    stack = _stack(run)
    assert "coord_x" in stack.bands
    r, c, rows, cols = _pixels(result.out, stack, 200)
    windows = extract_windows(stack, rows, cols, [YEAR] * rows.size, 5, 5)
    model = load_model(run / "runs" / "run_0")
    assert isinstance(model, RegressionKrigingModel)
    xy = pixel_centres(stack.grid.transform, rows, cols)
    point = predict_located(model, windows, xy)[0]
    _, kriging_var = model.krige(xy)
    np.testing.assert_allclose(values[0, r, c], point, rtol=1e-5, atol=1e-4)
    half = 1.6448536269514722 * np.sqrt(kriging_var)
    np.testing.assert_allclose(values[1, r, c], point - half, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(values[2, r, c], point, rtol=1e-5, atol=1e-4)  # Q0.5 of a Gaussian interval
    np.testing.assert_allclose(values[3, r, c], point + half, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(values[4, r, c], 2 * half, rtol=1e-4, atol=1e-4)  # PI90 width
    page = build_report(run).read_text()
    section = page[page.index('id="variogram"') :]
    section = section[: section.index("</section>")]
    assert model.variogram is not None and f"<td>{model.variogram.model}</td>" in section


def test_smooth_field_with_near_duplicate_points_stays_well_conditioned() -> None:
    """A Gaussian field without nugget sampled at pairs 1 m apart: the fitted nugget is at least 1 % of the
    sill and kriged values stay within the data's range (an unbounded system gave R² -301 on Edgeroi)."""
    rng = np.random.default_rng(6)
    xy = rng.uniform(0.0, 50.0, (150, 2))
    xy = np.vstack([xy, xy + 0.001])
    z = np.asarray(gs.SRF(gs.Gaussian(dim=2, var=1.0, len_scale=3.0), seed=6)((xy[:, 0], xy[:, 1])))
    z += rng.normal(0.0, 1e-3, z.size)
    fit = fit_variogram(xy, z, ["gaussian"])
    assert fit.nugget >= 0.01 * max(fit.gamma) - 1e-12
    mean, var = LocalKriging(xy, z, fit, 32).predict(rng.uniform(0.0, 50.0, (300, 2)))
    assert np.isfinite(mean).all() and (var >= 0).all()
    assert mean.min() > z.min() - 0.5 * np.ptp(z) and mean.max() < z.max() + 0.5 * np.ptp(z)
