"""Fast paths of bulk prediction equal their references: the forests' tree walk without joblib
(:class:`socmap.models.trees.FastForest`) gives the libraries' own ``predict`` bit for bit (random forest mean,
quantile-forest mean and quantiles), a tree model's mapping copy predicts what the model predicts, and the
options that keep a fast path away from a case it does not reproduce."""

from __future__ import annotations

import numpy as np
import pytest
from quantile_forest import RandomForestQuantileRegressor
from sklearn.ensemble import RandomForestRegressor

from socmap.models import FitData, InputSpec, TargetInfo
from socmap.models.trees import FastForest, ForestModel, QuantileForestModel
from socmap.uncertainty.aoa import feature_importance

LEVELS = (0.05, 0.5, 0.95)


def _data(n: int = 600, p: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.1, 50.0, p)  # features of very different scales
    y = np.sin(x[:, 0] / 10) * 20 + x[:, 1] * 0.1 + rng.normal(size=n)
    return x, y


@pytest.mark.parametrize("leaf", [1, 5])
def test_fast_random_forest_equals_sklearn(leaf: int) -> None:
    x, y = _data()
    forest = RandomForestRegressor(n_estimators=40, min_samples_leaf=leaf, max_features=1 / 3, random_state=0)
    forest.fit(x, y)
    fast = FastForest(forest)
    assert FastForest.supports(forest) and fast.matches()
    new = _data(seed=1)[0]
    np.testing.assert_array_equal(fast.point(new), forest.predict(new))  # bit for bit
    np.testing.assert_array_equal(fast.leaves(new), forest.apply(new))
    assert fast.point(new[:0]).shape == (0,)


@pytest.mark.parametrize("max_samples_leaf", [None, 3])
def test_fast_quantile_forest_equals_quantile_forest(max_samples_leaf: int | None) -> None:
    x, y = _data()
    forest = RandomForestQuantileRegressor(
        n_estimators=40,
        min_samples_leaf=5,
        max_samples_leaf=max_samples_leaf,
        default_quantiles="mean",  # socmap's qrf point prediction
        random_state=0,
    )
    forest.fit(x, y)
    fast = FastForest(forest)
    assert FastForest.supports(forest) and fast.matches()
    new = _data(seed=2)[0]
    mean, values = fast.quantile_predict(new, LEVELS)
    np.testing.assert_array_equal(mean, forest.predict(new))  # the conditional mean (default_quantiles)
    np.testing.assert_array_equal(values, forest.predict(new, quantiles=list(LEVELS)))
    np.testing.assert_array_equal(fast.point(new), mean)
    other = (0.1, 0.9)
    np.testing.assert_array_equal(
        fast.quantile_predict(new, other)[1], forest.predict(new, quantiles=list(other))
    )


def test_fast_path_is_not_used_where_it_differs() -> None:
    """One training value per leaf (quantile-forest's special path) or another default quantile: the library's
    own predict is used."""
    x, y = _data(n=200)
    single = RandomForestQuantileRegressor(
        n_estimators=5, max_samples_leaf=1, default_quantiles="mean", random_state=0
    ).fit(x, y)
    median = RandomForestQuantileRegressor(n_estimators=5, default_quantiles=0.5, random_state=0).fit(x, y)
    assert not FastForest.supports(single) and not FastForest.supports(median)
    broken = FastForest(RandomForestRegressor(n_estimators=3, random_state=0).fit(x, y))
    broken.values[0] = broken.values[0] + 1.0  # a fast path that no longer reproduces the library
    assert not broken.matches()


def _fit(model: ForestModel, n: int = 400) -> tuple[ForestModel, np.ndarray]:
    rng = np.random.default_rng(3)
    windows = rng.normal(size=(n, 3, 5, 5, 4)).astype(np.float32)
    windows[rng.random(windows.shape) < 0.05] = np.nan  # nodata inside windows: filled features
    target = np.nanmean(windows[:, 0], axis=(1, 2, 3)) * 10 + 30 + rng.normal(size=n)
    inputs = InputSpec(("a", "b", "c"), ("c",), 5, 4, ("1", "2", "3", "4"), {}, TargetInfo("soc", "g/kg"))
    rows = np.arange(n - 100)
    model.fit(FitData(windows, target, rows, np.empty(0, np.int64), inputs))
    return model, windows[n - 100 :]


@pytest.mark.parametrize("cls", [ForestModel, QuantileForestModel])
def test_mapping_copy_of_a_forest_predicts_what_the_model_predicts(cls: type[ForestModel]) -> None:
    """``for_inference`` (one thread, FastForest, one tree walk for point and quantiles) == the model's own
    predict and predict_quantiles (the library's predict on several threads), bit for bit, in any batch size;
    log target transform included."""
    model, windows = _fit(cls({"n_estimators": 30}, "log", n_jobs=2))
    fast = model.for_inference()
    assert getattr(fast, "fast", None) is not None and model.fast is None
    for batch in (7, 64, 4096):
        np.testing.assert_array_equal(fast.predict(windows, batch), model.predict(windows))
        point, q = fast.predict_with_quantiles(windows, LEVELS, batch)
        np.testing.assert_array_equal(point, model.predict(windows))
        if cls is QuantileForestModel:
            expected = model.predict_quantiles(windows, LEVELS)
            assert q is not None and expected is not None
            np.testing.assert_array_equal(q, expected)
            np.testing.assert_array_equal(fast.predict_quantiles(windows, LEVELS, batch), expected)
        else:
            assert q is None


def _brute_nearest(query: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Reference: every query row's float64 difference to every point, the smallest distance."""
    out = np.empty(len(query))
    for i, row in enumerate(query):
        diff = row - points
        out[i] = np.sqrt(np.einsum("ij,ij->i", diff, diff).min())
    return out


def test_nearest_distance_float32_screen_is_exact() -> None:
    """The AOA's nearest-neighbour search screens in float32 and resolves near-ties in float64: its
    distances are the float64 brute force's bit for bit, including queries a hair away from a point,
    duplicated and equidistant training rows (ties), far-away queries and more rows than one screened block
    (and a k-d tree's, to rounding)."""
    from scipy.spatial import cKDTree

    from socmap.uncertainty.aoa import QUERY_CHUNK, nearest_distance

    rng = np.random.default_rng(5)
    points = rng.normal(size=(700, 20)) * rng.uniform(0.1, 3.0, 20)
    points = np.vstack([points, points[:40]])  # exact duplicates: runner-up equals the nearest
    grid = np.array([[x, y] + [0.0] * 18 for x in (-1.0, 1.0) for y in (-1.0, 1.0)])
    points = np.vstack([points, grid * 1e-3])  # four rows equidistant from the origin
    query = np.vstack(
        [
            points[:50] + 1e-9,  # a hair from a training row
            points[700:705] + 1e-12,
            np.zeros((3, 20)),  # equidistant from the grid rows
            rng.normal(size=(QUERY_CHUNK + 77, 20)),
            rng.normal(size=(20, 20)) * 1e3,  # far outside the training space: a wide rounding bound
            np.full((2, 20), 1e30),  # beyond float32: the float64 brute force
        ]
    )
    out = nearest_distance(query, points)
    np.testing.assert_array_equal(out, _brute_nearest(query, points))
    np.testing.assert_allclose(out, cKDTree(points).query(query)[0], rtol=1e-9, atol=1e-12)
    assert np.all(out[:50] < 1e-7) and np.all(out[50:55] < 1e-10)


def test_nearest_distance_screen_bound_holds_where_float32_misorders() -> None:
    """Rows whose two nearest points differ by less than float32 can tell apart (relative 1e-9): the float32
    screen alone would pick either; the resolve step returns the truly nearest."""
    from socmap.uncertainty.aoa import nearest_distance

    rng = np.random.default_rng(11)
    base = rng.normal(size=(300, 8)) * 5
    direction = rng.normal(size=(300, 8))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    near = base + direction * 1.0  # at distance 1
    nearer = base - direction * (1.0 - 1e-9)  # at distance 1 - 1e-9, on the other side
    points = np.vstack([near, nearer, rng.normal(size=(500, 8)) * 50 + 200])
    out = nearest_distance(base, points)
    np.testing.assert_array_equal(out, _brute_nearest(base, points))
    np.testing.assert_allclose(out, 1.0 - 1e-9, rtol=1e-12)


@pytest.mark.parametrize(
    ("shape", "static", "dtype"),
    [
        ((4, 5, 5, 6), (0,), np.float32),  # the map's case: float32 windows, a static band
        ((4, 5, 5, 6), (0,), np.float64),
        ((3, 9, 9, 1), (), np.float32),  # static covariates only (T = 1): contiguous (H, W) sums
        ((2, 3, 3, 17), (1,), np.float32),  # a long monthly sequence
        ((3, 9, 9, 3), (), np.float32),  # a 9 x 9 window over 3 steps (81 pixel slices added)
        ((3, 4, 4, 2), (), np.float64),  # two steps: the shortest trend
    ],
)
def test_window_features_skip_masks_only_where_they_change_nothing(
    shape: tuple[int, int, int, int], static: tuple[int, ...], dtype: type
) -> None:
    """Window features of a chunk without nodata (masks skipped, float32 windows summed in float64 without a
    float64 copy) equal those of the same windows in a chunk with a nodata window (the masked path on the
    float64 copy) bit for bit, for static, temporal and categorical bands and T = 1."""
    from socmap.models.features import WindowFeatures

    rng = np.random.default_rng(2)
    windows = (rng.lognormal(size=(300, *shape)) * 37.0).astype(dtype)
    for ch in static:
        windows[:, ch] = windows[:, ch, :, :, :1]  # static: identical steps
    windows[:, -1] = rng.integers(1, 4, size=windows[:, -1].shape)  # last band: class codes 1-3
    holed = np.concatenate([windows, windows[:1]])
    holed[-1, 0, 1, 2, shape[-1] - 1] = np.nan
    features = WindowFeatures(static_channels=static, categorical_channels=(shape[0] - 1,)).fit(holed)
    clean = features.transform(windows)
    masked = features.transform(holed)[:-1]
    assert np.isfinite(clean).all() and clean.dtype == np.float64
    np.testing.assert_array_equal(clean, masked)


def test_aoa_feature_importance_does_not_depend_on_threads() -> None:
    """The AOA's importance forest runs on every core: each tree has its own seed, so the weights equal the
    one-thread forest's bit for bit, and they sum to 1."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 7))
    y = 2 * x[:, 0] - x[:, 3] + 0.3 * rng.normal(size=400)
    one, every = feature_importance(x, y, seed=5, n_jobs=1), feature_importance(x, y, seed=5, n_jobs=-1)
    assert np.array_equal(one, every)
    assert np.isclose(every.sum(), 1.0) and set(np.argsort(every)[-2:]) == {0, 3}
