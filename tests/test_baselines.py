"""Baselines: window features computed independently, training-only NaN filling, factories, QRF intervals."""

from __future__ import annotations

import numpy as np
import pytest

from socmap.baselines import BASELINES, WindowFeatures, make_baseline, predict_quantiles
from socmap.errors import InputError
from socmap.metrics import interval_metrics

BANDS = ["Elev", "LAI", "NPP"]


def windows(n: int = 40, size: int = 5, steps: int = 4, seed: int = 0) -> np.ndarray:
    """Random windows [n, 3, size, size, steps]; channel 0 is static (identical steps)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(10.0, 3.0, (n, 3, size, size, steps)).astype(np.float32)
    x[:, 0] = x[:, 0, :, :, :1]
    return x


def features(x: np.ndarray, **kw: object) -> tuple[np.ndarray, list[str]]:
    wf = WindowFeatures(static_channels=(0,), band_names=BANDS, **kw)  # type: ignore[arg-type]
    out = wf.fit_transform(x)
    return out, list(wf.get_feature_names_out())


@pytest.mark.parametrize("size", [5, 4, 3])
def test_features_equal_independent_window_statistics(size: int) -> None:
    x = windows(size=size)
    f, names = features(x)
    col = {name: f[:, i] for i, name in enumerate(names)}
    c = size // 2  # centre row/column (even sizes: size//2, as socmap.windows cuts them)
    assert len(names) == f.shape[1] == 4 + 2 * (4 + 3 + 2)
    np.testing.assert_allclose(col["Elev_centre"], x[:, 0, c, c, 0], rtol=1e-6)
    for band, ch in (("LAI", 1), ("NPP", 2)):
        for k in range(4):
            np.testing.assert_allclose(col[f"{band}_centre_t{k}"], x[:, ch, c, c, k], rtol=1e-6)
        last = x[:, ch, :, :, -1].astype(np.float64).reshape(len(x), -1)
        np.testing.assert_allclose(col[f"{band}_wmean"], last.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(col[f"{band}_wstd"], last.std(axis=1), rtol=1e-6)
        np.testing.assert_allclose(
            col[f"{band}_centre_minus_wmean"], x[:, ch, c, c, -1] - last.mean(axis=1), atol=1e-5
        )
        series = x[:, ch].astype(np.float64).mean(axis=(1, 2))  # [n, T]
        np.testing.assert_allclose(col[f"{band}_tmean"], series.mean(axis=1), rtol=1e-6)
        slopes = [np.polyfit(np.arange(4), s, 1)[0] for s in series]
        np.testing.assert_allclose(col[f"{band}_trend"], slopes, atol=1e-8)
    elev = x[:, 0, :, :, 0].astype(np.float64).reshape(len(x), -1)
    np.testing.assert_allclose(col["Elev_wmean"], elev.mean(axis=1), rtol=1e-6)


def test_single_step_and_flattened_input() -> None:
    x = windows(steps=1)
    f, names = features(x)
    assert "LAI_centre" in names and not any(n.endswith(("_trend", "_tmean")) for n in names)
    np.testing.assert_allclose(f[:, names.index("LAI_centre")], x[:, 1, 2, 2, 0], rtol=1e-6)
    x5 = windows()
    flat = WindowFeatures(static_channels=(0,), window_shape=(3, 5, 5, 4)).fit_transform(
        x5.reshape(len(x5), -1)
    )
    np.testing.assert_array_equal(flat, WindowFeatures(static_channels=(0,)).fit_transform(x5))
    with pytest.raises(InputError, match="window_shape"):
        WindowFeatures().fit(x5.reshape(len(x5), -1))


def test_nan_features_skip_nodata_and_fill_with_training_means_only() -> None:
    train, test = windows(30, seed=1), windows(10, seed=2)
    train[:5, 1, 2, 2, 3] = np.nan  # LAI centre of the last step missing for 5 training windows
    train[:, 2, :, :, 0] = np.nan  # NPP missing in step 0 for every training window
    train[0, 1, 0, 0, 3] = np.nan  # one non-centre pixel: ignored by the window statistics
    wf = WindowFeatures(static_channels=(0,), band_names=BANDS).fit(train)
    names = list(wf.get_feature_names_out())
    i_lai, i_npp0 = names.index("LAI_centre_t3"), names.index("NPP_centre_t0")
    assert wf.fill_values_[i_lai] == pytest.approx(float(np.nanmean(train[:, 1, 2, 2, 3].astype(np.float64))))
    assert wf.fill_values_[i_npp0] == 0.0  # never observed in training: 0, column kept
    pix = train[0, 1, :, :, 3].astype(np.float64)
    assert wf.transform(train[:1])[0, names.index("LAI_wmean")] == pytest.approx(np.nanmean(pix))
    # the NPP trend of training rows uses the 3 valid steps only
    series = train[:, 2, :, :, 1:].astype(np.float64).mean(axis=(1, 2))
    expected = [np.polyfit(np.arange(1, 4), s, 1)[0] for s in series]
    np.testing.assert_allclose(wf.transform(train)[:, names.index("NPP_trend")], expected, atol=1e-8)

    fill_before = wf.fill_values_.copy()
    test[:, 1, 2, 2, 3] = np.nan
    out = wf.transform(test)
    np.testing.assert_array_equal(out[:, i_lai], np.full(10, fill_before[i_lai]))
    test_changed = test.copy()
    test_changed[:, 1] = 1e6  # wild test values: the fitted fill values and other rows do not move
    wf.transform(test_changed)
    np.testing.assert_array_equal(wf.fill_values_, fill_before)
    # refitting on different test-free data is the only way to change them
    assert not np.array_equal(WindowFeatures(static_channels=(0,)).fit(test).fill_values_, fill_before)


def test_pipeline_prediction_of_a_row_ignores_other_test_rows() -> None:
    x, rng = windows(60, seed=3), np.random.default_rng(3)
    y = x[:, 1, 2, 2, -1].astype(np.float64) * 2 + rng.normal(0, 0.1, 60)
    pipe = make_baseline("rf", seed=0, n_jobs=1, static_channels=(0,), n_estimators=20).fit(x[:40], y[:40])
    test = x[40:].copy()
    base = pipe.predict(test)[:3]
    test[3:] = np.nan  # other test rows all nodata
    np.testing.assert_array_equal(pipe.predict(test)[:3], base)


def test_make_baseline_names_params_and_determinism() -> None:
    with pytest.raises(InputError, match="'svm': expected one of rf, qrf, xgb"):
        make_baseline("svm")
    with pytest.raises(InputError, match="n_trees"):
        make_baseline("rf", n_trees=10)
    with pytest.raises(InputError, match="seed / n_jobs"):
        make_baseline("xgb", random_state=3)
    assert set(BASELINES) == {"rf", "qrf", "xgb"}
    rf = make_baseline("rf", n_estimators=1000, max_depth=10)
    assert rf[-1].n_estimators == 1000 and rf[-1].max_depth == 10 and rf[-1].n_jobs == 2
    assert make_baseline("xgb")[-1].get_params()["tree_method"] == "hist"
    x = windows(50, seed=4)
    y = x[:, 2, 2, 2].mean(axis=-1).astype(np.float64)
    for name in BASELINES:
        a = make_baseline(name, seed=5, n_jobs=1, n_estimators=15).fit(x, y).predict(x)
        b = make_baseline(name, seed=5, n_jobs=1, n_estimators=15).fit(x, y).predict(x)
        np.testing.assert_array_equal(a, b)
        assert np.corrcoef(a, y)[0, 1] > 0.7  # it learned the target


def test_qrf_intervals_are_ordered_and_cover() -> None:
    rng = np.random.default_rng(11)
    n = 1200
    x = rng.normal(0, 1, (n, 2, 3, 3, 2)).astype(np.float32)
    signal = 3.0 * x[:, 0, 1, 1, -1]
    y = signal + rng.normal(0, 1.0, n) * (1 + 0.5 * np.abs(signal))  # heteroscedastic
    qrf = make_baseline("qrf", seed=0, n_jobs=1, n_estimators=100).fit(x[:900], y[:900])
    q = predict_quantiles(qrf, x[900:])
    assert q is not None and q.shape == (300, 3)
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    assert np.all(q[:, 2] - q[:, 0] > 0)
    m = interval_metrics(y[900:], q[:, 0], q[:, 2], 0.9)
    inside = (y[900:] >= q[:, 0]) & (y[900:] <= q[:, 2])
    assert m["picp"] == pytest.approx(inside.mean())
    assert 0.8 <= m["picp"] <= 0.97
    width = q[:, 2] - q[:, 0]
    big = np.abs(3.0 * x[900:, 0, 1, 1, -1]) > 3
    assert width[big].mean() > 1.3 * width[~big].mean()  # wider where the noise is larger
    # the point prediction is the conditional mean, not the median
    assert not np.allclose(qrf.predict(x[900:]), q[:, 1])
    assert predict_quantiles(make_baseline("rf", n_estimators=5).fit(x[:50], y[:50]), x[:5]) is None
