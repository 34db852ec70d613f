"""The area of applicability (AOA, Meyer & Pebesma 2021; CAST ``aoa``): where the covariates of a pixel are
like those of the training samples, so that the cross-validated error applies.

- The covariate space is the model-agnostic feature vector of a window (:class:`~socmap.models.features.
  WindowFeatures`: centre pixel history, window mean/sd, trend per band): the same for deep and tree models.
- Each feature is standardised with the training mean and sd and multiplied by its importance for the target
  (impurity importance of a small random forest fitted on the training samples; CAST uses the model's
  variable importance), so that dissimilarity in irrelevant covariates does not count.
- Dissimilarity index ``DI = d / d̄``: ``d`` the distance to the nearest training sample in that space, ``d̄``
  the mean distance between training samples (over at most :data:`MAX_PAIRS_SAMPLE` of them).
- Threshold: the cross-validated DI of the training samples (each sample's distance to the nearest sample
  outside its own CV fold) gives the upper whisker of a box plot, the largest value <= Q3 + 1.5 IQR
  (CAST's outlier-removed maximum). Pixels with ``DI > threshold`` are outside the AOA.

Saved without pickle: ``aoa.json`` (standardisation, weights, d̄, threshold, the window features' state) and
``aoa_train.npy`` (the weighted training features; read with ``allow_pickle=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from socmap._atomic import atomic_file, write_json
from socmap.errors import InputError
from socmap.models.features import WindowFeatures

__all__ = [
    "AOA_FILE",
    "AOA_TRAIN_FILE",
    "MAX_PAIRS_SAMPLE",
    "AreaOfApplicability",
    "NearestRows",
    "WeightedSpace",
    "cross_validated_di",
    "feature_importance",
    "fit_aoa",
    "fold_dissimilarity",
    "nearest_distance",
    "weighted_space",
    "whisker_threshold",
]

FloatArray = NDArray[np.float64]
AOA_FILE = "aoa.json"
AOA_TRAIN_FILE = "aoa_train.npy"
MAX_PAIRS_SAMPLE = 2000
QUERY_CHUNK = 256  # at most this many query rows per screened distance block
SCREEN_BYTES = 8 * 2**20  # and a float32 block [rows, n_train] of at most 8 MB (256 rows up to 8k samples)
# query rows longer than this (or overflowing float32) skip the screen: a float64 brute force
SCREEN_MAX_NORM = 1e15


def nearest_distance(query: ArrayLike, points: ArrayLike) -> FloatArray:
    """Euclidean distance of every query row to its nearest row of ``points``, exactly (see
    :class:`NearestRows`, which keeps the points' float32 screen for repeated queries).

    Args:
        query: ``[m, F]``.
        points: ``[n, F]`` (n >= 1).
    """
    return NearestRows(points).distance(query)


class NearestRows:
    """Exact nearest-row distances to fixed ``points`` ``[n, F]``: the float64 distance of the difference to
    the truly nearest row, as a brute force over every row computes it.

    Brute force with BLAS (a k-d tree degrades to brute force in the 30-100 dimensions of the window
    features), screened in float32, which BLAS runs at twice its float64 rate with half the memory traffic:
    one product gives ``|p|² - 2 q·p`` for every row (``|q|²`` is constant per query row). Its rounding error
    is bounded (:func:`_screen_slack`), so a row whose float32 runner-up lies farther than the bound from the
    float32 nearest has found its nearest row; the few others (near-ties, duplicated training rows) are
    resolved among every candidate within the bound by float64 differences, and rows beyond float32's range
    (never a standardised feature vector) by a float64 brute force.
    """

    def __init__(self, points: ArrayLike) -> None:
        self.points = np.asarray(points, np.float64)
        n, features = self.points.shape
        p_sq = np.einsum("ij,ij->i", self.points, self.points)
        self.screen = np.empty((features + 1, n), np.float32)  # [-2 p | |p|²]ᵀ (-2: exact scaling)
        self.screen[:features] = (-2.0 * self.points).T
        self.screen[features] = p_sq
        self.p_norm = float(np.sqrt(p_sq.max()))
        self.chunk = max(16, min(QUERY_CHUNK, SCREEN_BYTES // (4 * n)))

    def distance(self, query: ArrayLike) -> FloatArray:
        """Distance ``[m]`` of every row of ``query`` ``[m, F]`` to its nearest point."""
        q = np.asarray(query, np.float64)
        out = np.empty(q.shape[0])
        features = self.points.shape[1]
        block = np.ones((min(self.chunk, q.shape[0]), features + 1), np.float32)  # [q | 1]
        for start in range(0, q.shape[0], self.chunk):
            rows = q[start : start + self.chunk]
            block[: rows.shape[0], :features] = rows
            out[start : start + rows.shape[0]] = np.sqrt(
                self._squared(rows, block[: rows.shape[0]] @ self.screen)
            )
        return out

    def _squared(self, rows: FloatArray, d2: NDArray[np.float32]) -> FloatArray:
        """Squared float64 distances of ``rows`` to their nearest points from their screened values ``d2``."""
        p = self.points
        nearest = np.argmin(d2, axis=1)
        at = np.arange(rows.shape[0])
        best = d2[at, nearest].astype(np.float64)
        d2[at, nearest] = np.inf
        q_norm = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        slack = _screen_slack(p.shape[1], q_norm, self.p_norm)
        diff = rows - p[nearest]
        dist = np.einsum("ij,ij->i", diff, diff)
        tied = np.flatnonzero(d2.min(axis=1) <= best + slack)
        if tied.size:
            dist[tied] = _resolve(rows[tied], p, d2[tied], best[tied] + slack[tied], dist[tied])
        for row in np.flatnonzero(~np.isfinite(best) | ~(q_norm < SCREEN_MAX_NORM)):  # beyond float32
            diff = rows[row] - p
            dist[row] = np.einsum("ij,ij->i", diff, diff).min()
        return dist


def _screen_slack(features: int, q_norm: FloatArray, p_norm: float) -> FloatArray:
    """Twice a bound on the float32 screen's error ``|fl(q·[-2p, |p|²]) - (|p|² - 2 q·p)|``: rounding the
    inputs to float32 (relative 2⁻²⁴ each) and a dot product of F + 1 terms in any order (Higham's
    ``γ_{F+1} Σ|aᵢbᵢ|``), where ``Σ|aᵢbᵢ| <= 2|q||p| + |p|² <= (|q| + |p|)²``. Two rows' screened values can
    each be off by the bound, hence twice it (with a margin: F + 8 instead of F + 5 roundings)."""
    return 2.0 * (features + 8) * 2.0**-24 * (q_norm + p_norm) ** 2


def _resolve(
    rows: FloatArray,
    points: FloatArray,
    screened: NDArray[np.float32],
    limit: FloatArray,
    nearest: FloatArray,
) -> FloatArray:
    """Squared float64 distance to the nearest of every candidate (screened value <= ``limit``; the screen's
    own nearest was set to inf in ``screened``, its squared distance is ``nearest``) of near-tied rows."""
    which, cand = np.nonzero(screened <= limit[:, None])
    diff = rows[which] - points[cand]
    dist = np.einsum("ij,ij->i", diff, diff)
    out = nearest.copy()
    if dist.size:
        starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])  # nonzero is row-major: rows ascend
        first = which[starts]
        out[first] = np.minimum(out[first], np.minimum.reduceat(dist, starts))
    return out


def whisker_threshold(train_di: ArrayLike) -> float:
    """The upper whisker of a box plot of ``train_di``: the largest value <= Q3 + 1.5 IQR (CAST)."""
    d = np.asarray(train_di, np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise InputError("area of applicability: no finite cross-validated DI to set the threshold from")
    q1, q3 = np.percentile(d, [25, 75])
    return float(d[d <= q3 + 1.5 * (q3 - q1)].max())


def feature_importance(features: ArrayLike, target: ArrayLike, seed: int = 0, n_jobs: int = -1) -> FloatArray:
    """Impurity importance (sums to 1) of each standardised feature in a small random forest (50 trees,
    leaves of >= 5 samples); equal weights when the forest finds nothing. ``n_jobs`` threads (-1: every
    core; it runs in the parent process after cv's or train's fits): each tree has its own seed, so the
    importances do not depend on it (tested)."""
    from sklearn.ensemble import RandomForestRegressor

    x = np.asarray(features, np.float64)
    forest = RandomForestRegressor(
        n_estimators=50, min_samples_leaf=5, max_features=0.5, n_jobs=n_jobs, random_state=seed
    )
    forest.fit(x, np.asarray(target, np.float64))
    w = np.asarray(forest.feature_importances_, np.float64)
    return w / w.sum() if w.sum() > 0 else np.full(x.shape[1], 1.0 / x.shape[1])


def _mean_distance(points: FloatArray, seed: int) -> float:
    from scipy.spatial.distance import pdist

    if points.shape[0] > MAX_PAIRS_SAMPLE:
        keep = np.random.default_rng(seed).choice(points.shape[0], MAX_PAIRS_SAMPLE, replace=False)
        points = points[np.sort(keep)]
    d = pdist(points)
    return float(d.mean()) if d.size else 0.0


def cross_validated_di(points: FloatArray, fold: ArrayLike, mean_distance: float) -> FloatArray:
    """Each row's distance to the nearest row of another fold, divided by ``mean_distance``.

    Args:
        points: weighted standardised features ``[N, F]``.
        fold: the CV fold of every row.
        mean_distance: d̄.
    """
    f = np.asarray(fold).ravel()
    out = np.full(points.shape[0], np.nan)
    for k in np.unique(f):
        test = f == k
        if (~test).any():
            out[test] = nearest_distance(points[test], points[~test]) / mean_distance
    return out


@dataclass
class AreaOfApplicability:
    """A fitted AOA: ``di(windows)`` and ``inside(windows)`` for new windows.

    Args:
        features: how a window becomes a feature vector (fill values from the training samples).
        center, scale: the training mean and sd of every feature.
        weights: the importance weight of every feature.
        train: the weighted standardised training features ``[n, F]``.
        mean_distance: d̄.
        threshold: DI above which a pixel is outside the AOA.
        train_di: the cross-validated DI of the training samples (for reports).
    """

    features: WindowFeatures
    center: FloatArray
    scale: FloatArray
    weights: FloatArray
    train: FloatArray
    mean_distance: float
    threshold: float
    train_di: FloatArray
    _search: NearestRows | None = field(default=None, init=False, repr=False, compare=False)

    def transform(self, raw: ArrayLike) -> FloatArray:
        """Weighted standardised features of feature rows ``[N, F]`` (NaN-filled)."""
        x = np.asarray(raw, np.float64)
        return (x - self.center) / self.scale * self.weights

    def di_of_features(self, raw: ArrayLike) -> FloatArray:
        """DI ``[N]`` of filled feature rows."""
        x = self.transform(raw)
        if x.shape[0] == 0:
            return np.empty(0)
        if self._search is None:  # built once per loaded AOA (two threads may both build it: harmless)
            self._search = NearestRows(self.train)
        return self._search.distance(x) / self.mean_distance

    def di(self, windows: NDArray[np.float32]) -> FloatArray:
        """DI ``[N]`` of raw windows ``[N, C, H, W, T]``."""
        return self.di_of_features(self.features.transform(windows))

    def describe(self) -> str:
        """One line for band descriptions and reports."""
        return (
            f"dissimilarity index (Meyer & Pebesma 2021): distance to the nearest of {self.train.shape[0]} "
            f"training samples in the importance-weighted standardised space of {self.train.shape[1]} window "
            f"features / their mean distance; AOA threshold {self.threshold:.3g} (upper whisker of the "
            "cross-validated DI of the training samples)"
        )

    def save(self, folder: Path) -> None:
        """``aoa_train.npy`` then ``aoa.json`` (atomically)."""
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / AOA_TRAIN_FILE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.train.astype(np.float64), allow_pickle=False)
        state: dict[str, Any] = {
            "method": "dissimilarity index, Meyer & Pebesma (2021), CAST aoa",
            "features": self.features.to_state(),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "mean_distance": self.mean_distance,
            "threshold": self.threshold,
            "train_di": [float(v) for v in self.train_di],
            "n_train": int(self.train.shape[0]),
        }
        write_json(folder / AOA_FILE, state)

    @classmethod
    def load(cls, folder: Path) -> AreaOfApplicability | None:
        """The AOA saved in ``folder``, or None when it holds none."""
        import json

        if not (folder / AOA_FILE).is_file():
            return None
        try:
            state = json.loads((folder / AOA_FILE).read_text())
            train = np.load(folder / AOA_TRAIN_FILE, allow_pickle=False)
            return cls(
                WindowFeatures.from_state(state["features"]),
                np.asarray(state["center"], np.float64),
                np.asarray(state["scale"], np.float64),
                np.asarray(state["weights"], np.float64),
                np.asarray(train, np.float64),
                float(state["mean_distance"]),
                float(state["threshold"]),
                np.asarray(state.get("train_di", []), np.float64),
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{folder / AOA_FILE}: not a valid area of applicability ({exc})") from None


def fit_aoa(
    windows: NDArray[np.float32],
    target: ArrayLike,
    fold: ArrayLike,
    *,
    static_channels: Sequence[int] = (),
    band_names: Sequence[str] | None = None,
    seed: int = 0,
) -> AreaOfApplicability:
    """Fit the AOA on training windows and their CV folds (see the module docstring).

    Args:
        windows: the training windows ``[n, C, H, W, T]``.
        target: their targets (for the importance weights).
        fold: the CV fold of every training window (for the threshold).
        static_channels, band_names: as for :class:`WindowFeatures`.
        seed: seed of the importance forest and of d̄'s sample.
    """
    features = WindowFeatures(tuple(static_channels), band_names)
    raw = features.fit_transform(windows)
    space = weighted_space(raw, target, seed)
    train_di = cross_validated_di(space.points, fold, space.mean_distance)
    return AreaOfApplicability(
        features,
        space.center,
        space.scale,
        space.weights,
        space.points,
        space.mean_distance,
        whisker_threshold(train_di),
        train_di,
    )


@dataclass(frozen=True)
class WeightedSpace:
    """The training samples in the importance-weighted standardised feature space."""

    center: FloatArray
    scale: FloatArray
    weights: FloatArray
    points: FloatArray
    mean_distance: float


def weighted_space(raw: FloatArray, target: ArrayLike, seed: int = 0) -> WeightedSpace:
    """Standardise filled features ``[n, F]``, weight them by importance and measure d̄.

    Args:
        raw: NaN-filled window features of the training samples.
        target: their targets.
        seed: seed of the importance forest and of d̄'s sample.
    """
    if raw.shape[0] < 3:
        raise InputError(f"area of applicability: {raw.shape[0]} training samples (at least 3 needed)")
    center, scale = raw.mean(axis=0), raw.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    weights = feature_importance((raw - center) / scale, target, seed)
    points = (raw - center) / scale * weights
    mean_distance = _mean_distance(points, seed)
    if not mean_distance > 0:
        raise InputError("area of applicability: every training sample has the same covariates")
    return WeightedSpace(center, scale, weights, points, mean_distance)


def fold_dissimilarity(
    space: WeightedSpace, folds: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]]
) -> list[FloatArray]:
    """The DI of every fold's test rows relative to that fold's training rows (cross-validated DI).

    Args:
        space: every sample in the weighted space (rows = sample indices).
        folds: (train, test) row indices.
    """
    return [
        nearest_distance(space.points[test], space.points[train]) / space.mean_distance
        for train, test in folds
    ]
