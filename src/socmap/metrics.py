"""Regression metrics on the original target scale.

R² is 1 - SSE/SST (the coefficient of determination), never the squared Pearson correlation: the seed project
reported Pearson r² as R², which hides bias and scale errors. Pearson r² is reported separately.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ccc",
    "interval_metrics",
    "mae",
    "mean_error",
    "pearson_r2",
    "r2",
    "regression_metrics",
    "rmse",
    "rpiq",
]


def _pair(observed: ArrayLike, predicted: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    y = np.asarray(observed, dtype=np.float64).ravel()
    p = np.asarray(predicted, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"observed ({y.size}) and predicted ({p.size}) differ in length")
    if y.size < 2:
        raise ValueError("metrics need at least 2 samples")
    return y, p


def r2(observed: ArrayLike, predicted: ArrayLike) -> float:
    """Coefficient of determination, 1 - SSE/SST (can be negative)."""
    y, p = _pair(observed, predicted)
    sst = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if sst == 0 else 1.0 - float(np.sum((y - p) ** 2)) / sst


def pearson_r2(observed: ArrayLike, predicted: ArrayLike) -> float:
    """Squared Pearson correlation (insensitive to bias and scale: not a measure of accuracy)."""
    y, p = _pair(observed, predicted)
    if np.std(y) == 0 or np.std(p) == 0:
        return float("nan")
    return float(np.corrcoef(y, p)[0, 1] ** 2)


def rmse(observed: ArrayLike, predicted: ArrayLike) -> float:
    y, p = _pair(observed, predicted)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def mae(observed: ArrayLike, predicted: ArrayLike) -> float:
    y, p = _pair(observed, predicted)
    return float(np.mean(np.abs(y - p)))


def mean_error(observed: ArrayLike, predicted: ArrayLike) -> float:
    """ME (bias): mean of predicted - observed; negative = under-prediction."""
    y, p = _pair(observed, predicted)
    return float(np.mean(p - y))


def rpiq(observed: ArrayLike, predicted: ArrayLike) -> float:
    """Ratio of performance to inter-quartile distance: IQR(observed) / RMSE."""
    y, p = _pair(observed, predicted)
    q1, q3 = np.percentile(y, [25, 75])
    e = rmse(y, p)
    return float("inf") if e == 0 else float((q3 - q1) / e)


def ccc(observed: ArrayLike, predicted: ArrayLike) -> float:
    """Lin's concordance correlation coefficient (population moments)."""
    y, p = _pair(observed, predicted)
    cov = np.mean((y - y.mean()) * (p - p.mean()))
    denom = y.var() + p.var() + (y.mean() - p.mean()) ** 2
    return float("nan") if denom == 0 else float(2 * cov / denom)


def regression_metrics(observed: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """All point metrics: r2, pearson_r2, rmse, mae, me, rpiq, ccc, n."""
    y, p = _pair(observed, predicted)
    return {
        "r2": r2(y, p),
        "pearson_r2": pearson_r2(y, p),
        "rmse": rmse(y, p),
        "mae": mae(y, p),
        "me": mean_error(y, p),
        "rpiq": rpiq(y, p),
        "ccc": ccc(y, p),
        "n": float(y.size),
    }


def interval_metrics(
    observed: ArrayLike, lower: ArrayLike, upper: ArrayLike, nominal: float = 0.9
) -> dict[str, float]:
    """PICP (share inside [lower, upper]), mean width and the interval score (Gneiting & Raftery 2007)."""
    y = np.asarray(observed, dtype=np.float64).ravel()
    lo = np.asarray(lower, dtype=np.float64).ravel()
    hi = np.asarray(upper, dtype=np.float64).ravel()
    alpha = 1.0 - nominal
    inside = (y >= lo) & (y <= hi)
    score = (hi - lo) + (2 / alpha) * (lo - y) * (y < lo) + (2 / alpha) * (y - hi) * (y > hi)
    return {
        "picp": float(inside.mean()),
        "interval_width": float(np.mean(hi - lo)),
        "interval_score": float(np.mean(score)),
        "nominal": nominal,
    }
