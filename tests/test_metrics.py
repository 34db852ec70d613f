"""Metrics against independent implementations (scikit-learn, scipy, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from socmap import metrics


def pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.lognormal(3, 0.6, 300)
    p = 0.6 * y + 5 + rng.normal(0, 5, 300)  # biased and shrunk: R² and Pearson r² differ
    return y, p


def test_point_metrics() -> None:
    y, p = pair()
    m = metrics.regression_metrics(y, p)
    assert m["r2"] == pytest.approx(r2_score(y, p), rel=1e-12)
    assert m["pearson_r2"] == pytest.approx(stats.pearsonr(y, p)[0] ** 2, rel=1e-10)
    assert m["r2"] < m["pearson_r2"]  # the seed reported the larger one as R²
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-12)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert m["me"] == pytest.approx(np.mean(p) - np.mean(y), rel=1e-10)
    assert m["rpiq"] == pytest.approx(stats.iqr(y) / np.sqrt(mean_squared_error(y, p)), rel=1e-12)
    # Lin's CCC: 2 r sx sy / (sx² + sy² + (mx - my)²) with population moments
    r = stats.pearsonr(y, p)[0]
    sx, sy = np.std(y), np.std(p)
    ccc = 2 * r * sx * sy / (sx**2 + sy**2 + (y.mean() - p.mean()) ** 2)
    assert m["ccc"] == pytest.approx(ccc, rel=1e-10)
    assert m["n"] == 300


def test_perfect_and_constant() -> None:
    y = np.arange(10.0)
    assert metrics.r2(y, y) == 1.0 and metrics.ccc(y, y) == pytest.approx(1.0)
    assert metrics.r2(y, np.full(10, y.mean())) == pytest.approx(0.0)
    assert np.isnan(metrics.pearson_r2(y, np.full(10, 3.0)))


def test_interval_metrics() -> None:
    y = np.array([1.0, 2.0, 3.0, 10.0])
    lo, hi = np.array([0.0, 2.5, 2.0, 0.0]), np.array([2.0, 3.0, 4.0, 5.0])
    m = metrics.interval_metrics(y, lo, hi, nominal=0.9)
    assert m["picp"] == 0.5
    assert m["interval_width"] == pytest.approx(np.mean(hi - lo))
    expected = np.mean((hi - lo) + 20 * (lo - y) * (y < lo) + 20 * (y - hi) * (y > hi))
    assert m["interval_score"] == pytest.approx(expected)


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        metrics.r2([1, 2, 3], [1, 2])
