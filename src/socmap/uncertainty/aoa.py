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
from dataclasses import dataclass
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
QUERY_CHUNK = 512  # query rows per distance block: 512 x n_train float64 (52 MB for 13k training samples)


def nearest_distance(query: ArrayLike, points: ArrayLike) -> FloatArray:
    """Euclidean distance of every query row to its nearest row of ``points`` (brute force with BLAS: a k-d
    tree degrades to worse than brute force in the 30-100 dimensions of the window features). The nearest
    row is found from ``|q|² + |p|² - 2 q·p`` and its distance recomputed exactly.

    Args:
        query: ``[m, F]``.
        points: ``[n, F]`` (n >= 1).
    """
    q = np.asarray(query, np.float64)
    p = np.asarray(points, np.float64)
    out = np.empty(q.shape[0])
    p_sq = np.einsum("ij,ij->i", p, p)
    for start in range(0, q.shape[0], QUERY_CHUNK):
        chunk = q[start : start + QUERY_CHUNK]
        d2 = chunk @ p.T  # |p|² - 2 q·p (+ |q|², constant per row: irrelevant for the argmin), in place:
        d2 *= -2.0  # exact (a power of two), and |p|² + (-2 q·p) rounds as |p|² - 2 q·p does, so the
        d2 += p_sq  # nearest rows are those of the three-temporary form, with a third of its memory traffic
        nearest = np.argmin(d2, axis=1)
        diff = chunk - p[nearest]
        out[start : start + chunk.shape[0]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def whisker_threshold(train_di: ArrayLike) -> float:
    """The upper whisker of a box plot of ``train_di``: the largest value <= Q3 + 1.5 IQR (CAST)."""
    d = np.asarray(train_di, np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise InputError("area of applicability: no finite cross-validated DI to set the threshold from")
    q1, q3 = np.percentile(d, [25, 75])
    return float(d[d <= q3 + 1.5 * (q3 - q1)].max())


def feature_importance(features: ArrayLike, target: ArrayLike, seed: int = 0) -> FloatArray:
    """Impurity importance (sums to 1) of each standardised feature in a small random forest (50 trees,
    leaves of >= 5 samples, one thread); equal weights when the forest finds nothing."""
    from sklearn.ensemble import RandomForestRegressor

    x = np.asarray(features, np.float64)
    forest = RandomForestRegressor(
        n_estimators=50, min_samples_leaf=5, max_features=0.5, n_jobs=1, random_state=seed
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

    def transform(self, raw: ArrayLike) -> FloatArray:
        """Weighted standardised features of feature rows ``[N, F]`` (NaN-filled)."""
        x = np.asarray(raw, np.float64)
        return (x - self.center) / self.scale * self.weights

    def di_of_features(self, raw: ArrayLike) -> FloatArray:
        """DI ``[N]`` of filled feature rows."""
        x = self.transform(raw)
        if x.shape[0] == 0:
            return np.empty(0)
        return nearest_distance(x, self.train) / self.mean_distance

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
