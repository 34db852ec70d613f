"""Conformal intervals and the area of applicability, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from socmap.errors import InputError
from socmap.uncertainty import Calibration, calibrate, conformal_offsets, cross_conformal, quantile_levels


def _hetero(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = ŷ + ε with sd(ε) = 0.2 + 0.3 ŷ: errors grow with the prediction."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0.0, 10.0, n)
    return pred + rng.normal(0.0, 0.2 + 0.3 * pred), pred


def test_offsets_are_the_conformal_order_statistics() -> None:
    r = np.random.default_rng(1).standard_t(4, 301)
    levels = quantile_levels((0.5, 0.9))
    off = conformal_offsets(r, levels)
    s, n = np.sort(r), r.size
    for p in levels:  # hand computation: the finite-sample conformal quantiles
        k = math.ceil((n + 1) * p) if p >= 0.5 else math.floor((n + 1) * p)
        assert off[p] == pytest.approx(s[k - 1])


def test_adaptive_intervals_cover_everywhere_and_follow_the_error_scale() -> None:
    y_cal, p_cal = _hetero(3000, 2)
    y, p = _hetero(20000, 3)
    calib = calibrate(y_cal, p_cal, nominal=0.9)
    assert calib.scale.names == ("prediction",)
    lo, hi = calib.interval(p, 0.9)
    inside = (y >= lo) & (y <= hi)
    assert inside.mean() == pytest.approx(0.9, abs=0.01)
    low, high = p < 3, p > 7  # locally adaptive: conditional coverage holds on both ends ...
    assert inside[low].mean() == pytest.approx(0.9, abs=0.03)
    assert inside[high].mean() == pytest.approx(0.9, abs=0.03)
    width = hi - lo  # ... with intervals ~ 2 x 1.645 x the true sd
    true = 2 * 1.6449 * (0.2 + 0.3 * p)
    assert np.median(width[high] / true[high]) == pytest.approx(1.0, abs=0.15)
    flat = calibrate(y_cal, p_cal, adaptive=False)  # plain split-conformal under-covers the high end
    flo, fhi = flat.interval(p, 0.9)
    assert ((y >= flo) & (y <= fhi))[high].mean() < 0.85
    assert flat.scale.names == ()


def test_calibration_round_trips_through_json() -> None:
    y, p = _hetero(500, 4)
    calib = calibrate(y, p, width=np.abs(p) + 1, nominal=0.8)
    back = Calibration.from_json(calib.to_json())
    q = calib.quantiles(p, (0.1, 0.5, 0.9), width=np.abs(p) + 1)
    np.testing.assert_allclose(back.quantiles(p, (0.1, 0.5, 0.9), width=np.abs(p) + 1), q)
    assert np.all(np.diff(q, axis=1) >= 0)
    with pytest.raises(InputError, match="width"):
        back.quantiles(p, (0.1, 0.9))
    with pytest.raises(InputError, match=r"nominal 1\.5"):
        calibrate(y, p, nominal=1.5)


def test_cross_conformal_never_calibrates_a_fold_on_itself() -> None:
    y, p = _hetero(1000, 5)
    fold = np.arange(y.size) % 5
    y_shift = y.copy()
    y_shift[fold == 0] += 100.0  # fold 0 is far off: its own residuals would widen its intervals
    out = cross_conformal(y_shift, p, fold, (0.9,))
    lo, hi = out[0.9]
    inside = (y_shift >= lo) & (y_shift <= hi)
    assert inside[fold == 0].mean() == 0.0
    expected = calibrate(y_shift[fold != 0], p[fold != 0]).interval(p[fold == 0], 0.9)
    np.testing.assert_allclose(lo[fold == 0], expected[0])


def _windows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0, (n, 2, 3, 3, 1)).astype(np.float32)
    w[:, 0] += shift
    return w


def test_dissimilarity_index_matches_a_hand_computation(tmp_path) -> None:
    from scipy.spatial.distance import cdist, pdist

    from socmap.models.features import WindowFeatures
    from socmap.uncertainty import AreaOfApplicability, fit_aoa

    train = _windows(120, 6)
    y = train[:, 0, 1, 1, 0].astype(np.float64) * 3 + np.random.default_rng(0).normal(0, 0.1, 120)
    fold = np.arange(120) % 4
    aoa = fit_aoa(train, y, fold, seed=1)
    assert aoa.weights.argmax() == 0  # the band-0 centre pixel drives the target
    raw = WindowFeatures().fit_transform(train)  # hand computation of the weighted standardised space
    mu, sd = raw.mean(axis=0), raw.std(axis=0)
    pts = (raw - mu) / np.where(sd > 0, sd, 1.0) * aoa.weights
    dbar = pdist(pts).mean()
    new = np.concatenate([_windows(50, 7), _windows(50, 8, shift=6.0)])
    xn = (WindowFeatures().fit(train).transform(new) - mu) / np.where(sd > 0, sd, 1.0) * aoa.weights
    np.testing.assert_allclose(aoa.di(new), cdist(xn, pts).min(axis=1) / dbar, rtol=1e-9)
    cv_di = np.array([cdist(pts[[i]], pts[fold != fold[i]]).min() / dbar for i in range(120)])
    np.testing.assert_allclose(aoa.train_di, cv_di, rtol=1e-9)
    q1, q3 = np.percentile(cv_di, [25, 75])
    assert aoa.threshold == pytest.approx(cv_di[cv_di <= q3 + 1.5 * (q3 - q1)].max())
    inside = aoa.di(new) <= aoa.threshold
    assert inside[:50].mean() > 0.8 and inside[50:].mean() < 0.1  # shifted covariates: outside the AOA
    aoa.save(tmp_path)
    back = AreaOfApplicability.load(tmp_path)
    assert back is not None
    np.testing.assert_allclose(back.di(new), aoa.di(new))
    assert AreaOfApplicability.load(tmp_path / "none") is None
