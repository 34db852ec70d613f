"""Validation designs for spatial data, as scikit-learn cross-validators.

Soil samples close to each other share soil, climate and land use, so a random split measures how well a
model interpolates between neighbours, not how well it maps unvisited land. Every splitter here keeps the
repeat visits of one location (same coordinates, different years) on one side, and the spatial designs also
keep validation samples away from training samples.

Common convention: ``split(X, y=None, groups=None)`` where ``X`` holds (lon, lat) in WGS84 degrees, either an
array of shape [n, 2] or a DataFrame with columns ``lon`` and ``lat`` (other columns are ignored, so a feature
table that carries its coordinates can be passed to ``cross_val_score`` together with the splitter).
``groups`` are location ids; when ``None`` they come from :func:`location_groups`. Every split yields sorted,
disjoint integer index arrays ``(train, test)``, deterministic for a given ``seed``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer
from scipy import sparse, stats
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import BaseCrossValidator
from sklearn.neighbors import BallTree

from socmap.errors import InputError

if TYPE_CHECKING:
    from socmap.config import SplitConfig

__all__ = [
    "SPLITTERS",
    "BufferedLeaveOneOut",
    "DistanceSplit",
    "KNNDMKFold",
    "RandomKFold",
    "RandomSplit",
    "SpatialBlockKFold",
    "SpatialBlockSplit",
    "haversine_km",
    "holdout_splitter",
    "location_groups",
    "make_splitter",
    "scoring_warning",
    "split_report",
    "splitter_for",
    "suggest_block_size_km",
]

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
# Radius queries are widened by this relative amount so that float round-off between BallTree and
# haversine_km can never let a pair that is (numerically) closer than the limit slip through.
_RADIUS_SLACK = 1e-9
# Above this many neighbour pairs the distance graph would not fit comfortably in memory.
_MAX_PAIRS = 50_000_000
MIN_MEDIAN_SHIFT = 0.1  # of the training IQR: a smaller median shift is not called "systematically" low/high
MIN_SCORED_ROWS = 30  # held-out samples below which R² has a wide sampling error
MIN_SPREAD_RATIO = 0.5  # sd(held-out) / sd(training) below this: R² against the held-out mean misleads

IntArray = NDArray[np.intp]
FloatArray = NDArray[np.float64]
Split = tuple[IntArray, IntArray]


# --------------------------------------------------------------------------------------------- helpers


def haversine_km(lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike) -> FloatArray:
    """Great-circle distance in km between points given in degrees (numpy broadcasting applies)."""
    lon1r, lat1r, lon2r, lat2r = (
        np.radians(np.asarray(v, dtype=np.float64)) for v in (lon1, lat1, lon2, lat2)
    )
    a = (
        np.sin((lat2r - lat1r) / 2.0) ** 2
        + np.cos(lat1r) * np.cos(lat2r) * np.sin((lon2r - lon1r) / 2.0) ** 2
    )
    return np.asarray(2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))), dtype=np.float64)


def location_groups(lon: ArrayLike, lat: ArrayLike, decimals: int = 6) -> IntArray:
    """Location id per sample: samples whose coordinates agree after rounding to ``decimals`` share an id.

    Ids are 0..k-1 in order of (rounded lon, rounded lat). 6 decimals is about 0.1 m.
    """
    lon_a = np.asarray(lon, dtype=np.float64).reshape(-1)
    lat_a = np.asarray(lat, dtype=np.float64).reshape(-1)
    if lon_a.shape != lat_a.shape:
        raise InputError(f"lon has {lon_a.size} values and lat {lat_a.size}: expected equal lengths")
    if not isinstance(decimals, numbers.Integral) or isinstance(decimals, bool):
        raise InputError(f"decimals {decimals!r}: expected an integer")
    # + 0.0 turns -0.0 into 0.0, which np.unique(axis=0) would otherwise treat as a different value
    rounded = np.column_stack([np.round(lon_a, int(decimals)) + 0.0, np.round(lat_a, int(decimals)) + 0.0])
    _, inverse = np.unique(rounded, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.intp).reshape(-1)


def coordinates(X: Any) -> tuple[FloatArray, FloatArray]:
    """(lon, lat) arrays from an [n, 2] array or a DataFrame with ``lon``/``lat`` columns, validated."""
    if isinstance(X, pd.DataFrame):
        missing = [c for c in ("lon", "lat") if c not in X.columns]
        if missing:
            raise InputError(f"X columns {list(X.columns)[:8]}: expected columns 'lon' and 'lat'")
        lon = X["lon"].to_numpy(dtype=np.float64)
        lat = X["lat"].to_numpy(dtype=np.float64)
    else:
        try:
            arr = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"X of type {type(X).__name__}: expected numeric (lon, lat) pairs") from exc
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(f"X of shape {arr.shape}: expected shape [n, 2] holding (lon, lat) in degrees")
        lon, lat = arr[:, 0].copy(), arr[:, 1].copy()
    if lon.size == 0:
        raise InputError("X has no rows: expected at least one (lon, lat) pair")
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise InputError("X contains NaN or infinite coordinates: expected finite lon/lat in degrees")
    if np.any(np.abs(lon) > 180.0) or np.any(np.abs(lat) > 90.0):
        raise InputError(
            f"X coordinates lon [{lon.min():.6g}, {lon.max():.6g}], lat [{lat.min():.6g}, {lat.max():.6g}]: "
            "expected WGS84 degrees (lon in [-180, 180], lat in [-90, 90])"
        )
    return lon, lat


def _group_codes(groups: ArrayLike | None, lon: FloatArray, lat: FloatArray) -> IntArray:
    """Groups as codes 0..k-1; derived from coordinates when ``None``."""
    if groups is None:
        return location_groups(lon, lat)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != lon.shape[0]:
        raise InputError(f"groups of shape {g.shape}: expected one location id per sample ({lon.shape[0]})")
    _, codes = np.unique(g, return_inverse=True)
    return np.asarray(codes, dtype=np.intp).reshape(-1)


def _merge_labels(a: IntArray, b: IntArray) -> IntArray:
    """Component per sample of the graph joining samples that share a label in ``a`` or in ``b``."""
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    graph = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (a, b + na)), shape=(na + nb, na + nb))
    _, comp = connected_components(graph, directed=False)
    _, labels = np.unique(comp[a], return_inverse=True)
    return np.asarray(labels, dtype=np.intp).reshape(-1)


def _radians_latlon(lon: FloatArray, lat: FloatArray) -> FloatArray:
    """[n, 2] (lat, lon) in radians: the layout sklearn's haversine metric expects."""
    return np.radians(np.column_stack([lat, lon]))


def _balanced_folds(units: IntArray, n_splits: int, rng: np.random.Generator) -> IntArray:
    """Fold per unit: units in random order, each to the fold with the fewest samples so far.

    This list-scheduling greedy keeps the largest and smallest fold within one unit's size of each other.
    """
    sizes = np.bincount(units)
    load = np.zeros(n_splits, dtype=np.int64)
    fold_of_unit = np.empty(sizes.size, dtype=np.intp)
    for u in rng.permutation(sizes.size):
        f = int(np.argmin(load))
        fold_of_unit[u] = f
        load[f] += sizes[u]
    return fold_of_unit


def _fill_holdout(sizes: IntArray, target_n: int, rng: np.random.Generator) -> tuple[NDArray[np.bool_], int]:
    """Units (sizes in samples) visited in random order, each held out while the count stays <= target_n.

    Returns the held-out mask per unit and the held-out sample count.
    """
    chosen = np.zeros(sizes.size, dtype=bool)
    count = 0
    for c in rng.permutation(sizes.size):
        if count + sizes[c] <= target_n:
            chosen[c] = True
            count += int(sizes[c])
            if count == target_n:
                break
    return chosen, count


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < minimum:
        raise InputError(f"{name} {value!r}: expected an integer >= {minimum}")
    return int(value)


def _check_positive(name: str, value: object) -> float:
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(float(value))
        or float(value) <= 0
    ):
        raise InputError(f"{name} {value!r}: expected a number > 0 (km)")
    return float(value)


def _check_fraction(name: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise InputError(f"{name} {value!r}: expected a fraction in (0, 1)")
    return float(value)


def _local_xy(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Metres in an azimuthal equidistant projection centred on the middle of the data's bounding box."""
    lon0 = (float(lon.min()) + float(lon.max())) / 2.0
    lat0 = (float(lat.min()) + float(lat.max())) / 2.0
    aeqd = f"+proj=aeqd +lat_0={lat0:.8f} +lon_0={lon0:.8f} +datum=WGS84 +units=m +no_defs"
    x, y = Transformer.from_crs("EPSG:4326", aeqd, always_xy=True).transform(lon, lat)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _block_labels(xa: FloatArray, ya: FloatArray, block_size_km: float) -> IntArray:
    """Block id per point (0..k-1) of square cells of ``block_size_km`` starting at the points' south-west
    corner (x, y in metres)."""
    size_m = block_size_km * 1000.0
    cells = np.column_stack(
        [
            np.floor((xa - xa.min()) / size_m).astype(np.int64),
            np.floor((ya - ya.min()) / size_m).astype(np.int64),
        ]
    )
    _, labels = np.unique(cells, axis=0, return_inverse=True)
    return np.asarray(labels, dtype=np.intp).reshape(-1)


def _round_down(value: float) -> float:
    """``value`` rounded down to two significant digits (0.917 -> 0.91)."""
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return math.floor(value / step + 1e-9) * step


def suggest_block_size_km(lon: ArrayLike, lat: ArrayLike, n_blocks: int) -> float | None:
    """A block edge in km that cuts the samples into at least ``n_blocks`` non-empty blocks.

    Starts from the samples' extent (the longer side of their bounding box in a local equidistant projection)
    divided by sqrt(``n_blocks``), rounded down to two digits, and shrinks it until the blocks are enough
    (clustered samples leave many blocks empty). None when all samples lie at one place.

    Args:
        lon: longitudes in degrees.
        lat: latitudes in degrees.
        n_blocks: the number of non-empty blocks wanted (e.g. 3 per fold).
    """
    lo, la = np.asarray(lon, np.float64).reshape(-1), np.asarray(lat, np.float64).reshape(-1)
    xa, ya = _local_xy(lo, la)
    extent_km = max(float(np.ptp(xa)), float(np.ptp(ya))) / 1000.0
    if extent_km <= 0:
        return None
    size = _round_down(extent_km / math.sqrt(max(n_blocks, 1)))
    for _ in range(30):
        if int(_block_labels(xa, ya, size).max()) + 1 >= n_blocks:
            return size
        size = _round_down(size / 1.5)
    return None


def _extent_km(lon: FloatArray, lat: FloatArray) -> tuple[float, float]:
    xa, ya = _local_xy(lon, lat)
    return float(np.ptp(xa)) / 1000.0, float(np.ptp(ya)) / 1000.0


def _block_advice(lon: FloatArray, lat: FloatArray, wanted: int, needed: int) -> str:
    """'the samples span W x H km: use block_size_km S or smaller' (S gives >= ``wanted`` blocks, else
    >= ``needed``)."""
    w, h = _extent_km(lon, lat)
    size = suggest_block_size_km(lon, lat, wanted) or suggest_block_size_km(lon, lat, needed)
    if size is None:
        return f"the samples span {w:.2g} x {h:.2g} km: too small an area for spatial blocks"
    return f"the samples span {w:.2g} x {h:.2g} km: use block_size_km {size:g} or smaller"


def _sorted(idx: NDArray[Any]) -> IntArray:
    return np.sort(np.asarray(idx, dtype=np.intp))


class _SpatialCV(BaseCrossValidator):  # type: ignore[misc]
    """Shared parsing of coordinates and groups; subclasses implement ``_split``."""

    # request ``groups`` when sklearn metadata routing is enabled (as GroupKFold does)
    __metadata_request__split = {"groups": True}  # noqa: RUF012

    def split(self, X: Any, y: ArrayLike | None = None, groups: ArrayLike | None = None) -> Iterator[Split]:
        """Yield sorted (train, test) index arrays; see the module docstring for X and groups."""
        lon, lat = coordinates(X)
        if y is not None and np.asarray(y).shape[0] != lon.shape[0]:
            raise InputError(
                f"y has {np.asarray(y).shape[0]} values: expected one per row of X ({lon.shape[0]})"
            )
        codes = _group_codes(groups, lon, lat)
        yield from self._split(lon, lat, codes)

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ distance split


class DistanceSplit(_SpatialCV):
    """Hold-out validation where every validation sample is >= ``min_distance_km`` from every training sample.

    Locations closer than ``min_distance_km`` (and repeat visits of one location) are joined into connected
    components; components are visited in a seeded random order and added to validation while the validation
    count stays <= round(val_ratio x n). Nothing is discarded: every sample ends up on one side. If the result
    falls short of the target by more than ``tolerance`` (relative), for example because most points form one
    giant component, an InputError says so. With ``n_splits > 1`` split i uses ``seed + i``.

    Because components that would overshoot are skipped, the last few picks favour small (isolated)
    components; :meth:`report` shows whether the validation targets differ from the training targets.
    """

    def __init__(
        self,
        val_ratio: float = 0.08,
        min_distance_km: float = 1.2,
        seed: int = 0,
        n_splits: int = 1,
        tolerance: float = 0.05,
    ) -> None:
        self.val_ratio = _check_fraction("val_ratio", val_ratio)
        self.min_distance_km = _check_positive("min_distance_km", min_distance_km)
        self.seed = _check_int("seed", seed, 0)
        self.n_splits = _check_int("n_splits", n_splits, 1)
        self.tolerance = _check_fraction("tolerance", tolerance)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of (independent, differently seeded) validation splits."""
        return self.n_splits

    def components(self, X: Any, groups: ArrayLike | None = None) -> IntArray:
        """Component id per sample: samples that must stay on the same side of the split."""
        lon, lat = coordinates(X)
        return self._components(lon, lat, _group_codes(groups, lon, lat))

    def _components(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> IntArray:
        pts, site = np.unique(np.column_stack([lon, lat]), axis=0, return_inverse=True)
        site = np.asarray(site, dtype=np.intp).reshape(-1)
        pts_rad = _radians_latlon(pts[:, 0], pts[:, 1])
        tree = BallTree(pts_rad, metric="haversine")
        radius = self.min_distance_km / EARTH_RADIUS_KM * (1.0 + _RADIUS_SLACK)
        n_pairs = int(tree.query_radius(pts_rad, r=radius, count_only=True).sum())
        if n_pairs > _MAX_PAIRS:
            raise InputError(
                f"min_distance_km {self.min_distance_km}: {n_pairs} point pairs are closer than that, "
                "expected a distance small relative to the sampling density; use a smaller min_distance_km"
            )
        neighbours = tree.query_radius(pts_rad, r=radius)
        counts = np.fromiter((len(nb) for nb in neighbours), dtype=np.intp, count=len(neighbours))
        rows = np.repeat(np.arange(len(neighbours), dtype=np.intp), counts)
        cols = np.concatenate(neighbours).astype(np.intp) if len(neighbours) else np.empty(0, np.intp)
        graph = sparse.coo_matrix(
            (np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(len(pts), len(pts))
        )
        _, site_comp = connected_components(graph, directed=False)
        return _merge_labels(np.asarray(site_comp, dtype=np.intp)[site], groups)

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        n = lon.size
        if n < 2:
            raise InputError(f"{n} sample: expected at least 2 samples for a validation split")
        comp = self._components(lon, lat, groups)
        sizes = np.bincount(comp)
        target_n = min(max(1, round(self.val_ratio * n)), n - 1)
        for i in range(self.n_splits):
            chosen, count = _fill_holdout(sizes, target_n, np.random.default_rng(self.seed + i))
            if count < (1.0 - self.tolerance) * target_n:
                raise InputError(
                    f"min_distance_km {self.min_distance_km}: the validation set reaches only "
                    f"{count / n:.3f} of the samples instead of val_ratio {self.val_ratio} (largest cluster "
                    f"of points closer than that: {int(sizes.max())} of {n} samples); "
                    "expected a smaller min_distance_km"
                )
            val_mask = chosen[comp]
            yield _sorted(np.flatnonzero(~val_mask)), _sorted(np.flatnonzero(val_mask))

    def report(
        self, X: Any, y: ArrayLike, train_idx: ArrayLike, val_idx: ArrayLike, *, unit: str = ""
    ) -> dict[str, Any]:
        """:func:`split_report` plus the required distance and whether the split respects it."""
        out = split_report(X, y, train_idx, val_idx, unit=unit)
        out["min_distance_km_required"] = self.min_distance_km
        out["distance_ok"] = bool(out["min_distance_km"] >= self.min_distance_km * (1.0 - 1e-9))
        return out


def scoring_warning(
    held: FloatArray, train: FloatArray, held_out: str = "validation", unit: str = ""
) -> str | None:
    """A sentence when R² on the held-out targets ``held`` would mislead, else None: fewer than
    ``MIN_SCORED_ROWS`` of them (R²'s sampling error is wide), or a spread below ``MIN_SPREAD_RATIO`` of the
    training targets' (R² divides the squared error by the held-out set's own variance, so accurate predictions
    of a narrow set still score near or below 0). ``unit`` is appended to the numbers as given (" g/kg").

    Why: with 100-500 samples a spatial hold-out of 8 % is one or two blocks, often 10-40 samples from one
    landscape; its R² can lie far below 0 while its RMSE is better than cross-validation's."""
    n = held.size
    sd_held, sd_train = float(np.std(held)), float(np.std(train))
    ratio = sd_held / sd_train if sd_train > 0 else 1.0
    reasons = []
    if n < MIN_SCORED_ROWS:
        reasons.append(f"only {n} samples")
    if ratio < MIN_SPREAD_RATIO:
        reasons.append(
            f"a narrow spread (sd {sd_held:.3g}{unit}, {ratio:.0%} of the training targets' {sd_train:.3g}{unit})"
        )
    if not reasons:
        return None
    return (
        f"{held_out} set has {' and '.join(reasons)}: its R² is not a reliable score; judge by RMSE / MAE, or "
        "use `socmap cv`, which holds out every sample once"
    )


def _summary(values: FloatArray) -> dict[str, float]:
    q05, q25, q75, q95 = np.quantile(values, [0.05, 0.25, 0.75, 0.95])
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "q05": float(q05),
        "q25": float(q25),
        "q75": float(q75),
        "q95": float(q95),
    }


def split_report(
    X: Any,
    y: ArrayLike,
    train_idx: ArrayLike,
    val_idx: ArrayLike,
    *,
    unit: str = "",
    alpha: float = 0.05,
    held_out: str = "validation",
) -> dict[str, Any]:
    """Sizes, achieved train/validation distance, target summaries and a KS test of a hold-out split.

    ``held_out`` names the held-out side in the warning (``socmap train`` calls it the test set).

    ``min_distance_km`` is the smallest great-circle distance from any validation sample to its nearest
    training sample (BallTree nearest neighbour, independent of how the split was made). ``warning`` is a
    sentence when the two-sample Kolmogorov-Smirnov test rejects equal target distributions at ``alpha``
    (a systematically low or high validation set makes the reported accuracy misleading), else ``None``.
    """
    lon, lat = coordinates(X)
    yv = np.asarray(y, dtype=np.float64).reshape(-1)
    if yv.size != lon.size:
        raise InputError(f"y has {yv.size} values: expected one per row of X ({lon.size})")
    tr = np.asarray(train_idx, dtype=np.intp).reshape(-1)
    va = np.asarray(val_idx, dtype=np.intp).reshape(-1)
    if tr.size == 0 or va.size == 0:
        raise InputError(f"split with {tr.size} training and {va.size} validation samples: expected both > 0")
    tree = BallTree(_radians_latlon(lon[tr], lat[tr]), metric="haversine")
    dist, _ = tree.query(_radians_latlon(lon[va], lat[va]), k=1)
    ks = stats.ks_2samp(yv[va], yv[tr])
    train_s, val_s = _summary(yv[tr]), _summary(yv[va])
    warning = None
    u = f" {unit}" if unit else ""
    if ks.pvalue < alpha:
        shift = val_s["median"] - train_s["median"]
        iqr = (train_s["q75"] - train_s["q25"], val_s["q75"] - val_s["q25"])
        if abs(shift) > MIN_MEDIAN_SHIFT * iqr[0]:
            how = "systematically lower than" if shift < 0 else "systematically higher than"
            spread = ""
        else:  # the KS test saw a difference of spread or shape, not of level
            how, spread = "distributed differently from", f", IQR {iqr[1]:.3g} vs {iqr[0]:.3g}{u}"
        warning = (
            f"{held_out} targets are {how} training (median {val_s['median']:.3g} vs "
            f"{train_s['median']:.3g}{u}{spread}, KS p={ks.pvalue:.2g})"
        )
    scoring = scoring_warning(yv[va], yv[tr], held_out, u)
    if scoring is not None:
        warning = scoring if warning is None else f"{warning}; {scoring}"
    n = tr.size + va.size
    return {
        "n_train": int(tr.size),
        "n_val": int(va.size),
        "val_ratio": va.size / n,
        "min_distance_km": float(dist.min() * EARTH_RADIUS_KM),
        "train": train_s,
        "val": val_s,
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "warning": warning,
    }


# ------------------------------------------------------------------------------------ spatial block k-fold


class SpatialBlockKFold(_SpatialCV):
    """K-fold over square blocks of ``block_size_km`` in a local azimuthal equidistant projection.

    The projection (``+proj=aeqd``) is centred on the middle of the data's bounding box, so distances from the
    centre are true and block sides stay close to ``block_size_km`` across a region the size of Bavaria; the
    grid starts at the data's projected south-west corner (minimum x and y).
    Blocks are shuffled with ``seed`` and each goes whole to the fold with the fewest samples so far, so
    fold sizes differ by at most one block. A location (group) never spans folds: if user groups cross block
    borders, the blocks they touch are merged.
    """

    def __init__(self, n_splits: int = 10, block_size_km: float = 10.0, seed: int = 0) -> None:
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.block_size_km = _check_positive("block_size_km", block_size_km)
        self.seed = _check_int("seed", seed, 0)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds."""
        return self.n_splits

    def block_labels(self, X: Any) -> IntArray:
        """Block id per sample (0..k-1, in order of the block's (column, row) in the projected grid)."""
        lon, lat = coordinates(X)
        return self._blocks(lon, lat)

    def _blocks(self, lon: FloatArray, lat: FloatArray) -> IntArray:
        return _block_labels(*_local_xy(lon, lat), self.block_size_km)

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        units = _merge_labels(self._blocks(lon, lat), groups)
        n_units = int(units.max()) + 1
        if n_units < self.n_splits:
            raise InputError(
                f"n_splits {self.n_splits}: the data cover only {n_units} non-empty blocks of "
                f"{self.block_size_km} km; expected at least as many blocks as folds; "
                f"{_block_advice(lon, lat, 3 * self.n_splits, self.n_splits)} (about 3 blocks per fold), or fewer folds"
            )
        fold = _balanced_folds(units, self.n_splits, np.random.default_rng(self.seed))[units]
        for f in range(self.n_splits):
            test = fold == f
            yield _sorted(np.flatnonzero(~test)), _sorted(np.flatnonzero(test))


# ---------------------------------------------------------------------------------- buffered leave-one-out


class BufferedLeaveOneOut(_SpatialCV):
    """Leave one location out, training only on samples farther than ``buffer_km`` from it.

    The test set is one location with all its visits; samples within ``buffer_km`` of it are in neither side.
    ``n_splits=None`` leaves out every location in turn; an integer leaves out that many locations drawn at
    random with ``seed`` (full leave-one-out on thousands of locations is too expensive for deep models).
    """

    def __init__(self, buffer_km: float = 1.2, n_splits: int | None = None, seed: int = 0) -> None:
        self.buffer_km = _check_positive("buffer_km", buffer_km)
        self.n_splits = None if n_splits is None else _check_int("n_splits", n_splits, 1)
        self.seed = _check_int("seed", seed, 0)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """``n_splits``, or the number of locations in X/groups when it is None."""
        if self.n_splits is not None:
            return self.n_splits
        if groups is not None:
            return int(np.unique(np.asarray(groups)).size)
        if X is None:
            raise InputError("BufferedLeaveOneOut(n_splits=None).get_n_splits: expected X or groups to count")
        lon, lat = coordinates(X)
        return int(location_groups(lon, lat).max()) + 1

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        n_groups = int(groups.max()) + 1
        if self.n_splits is None:
            held_out = np.arange(n_groups)
        elif self.n_splits > n_groups:
            raise InputError(
                f"n_splits {self.n_splits}: expected at most the number of locations ({n_groups})"
            )
        else:
            held_out = np.sort(
                np.random.default_rng(self.seed).choice(n_groups, self.n_splits, replace=False)
            )
        order = np.argsort(groups, kind="stable")
        starts = np.searchsorted(groups[order], np.arange(n_groups + 1))
        pts = _radians_latlon(lon, lat)
        tree = BallTree(pts, metric="haversine")
        radius = self.buffer_km / EARTH_RADIUS_KM * (1.0 + _RADIUS_SLACK)
        for g in held_out:
            test = order[starts[g] : starts[g + 1]]
            near = np.concatenate(tree.query_radius(np.unique(pts[test], axis=0), r=radius))
            keep = np.ones(lon.size, dtype=bool)
            keep[near] = False
            keep[test] = False
            if not keep.any():
                raise InputError(
                    f"buffer_km {self.buffer_km}: location {int(g)} leaves no training sample farther away; "
                    "expected a smaller buffer_km"
                )
            yield _sorted(np.flatnonzero(keep)), _sorted(test)


# ------------------------------------------------------------------------------------------ random k-fold


class RandomKFold(_SpatialCV):
    """Random k-fold grouped by location: the non-spatial baseline design.

    Locations are shuffled with ``seed`` and each goes to the fold with the fewest samples so far. Nearby
    locations can be on both sides, so the score it gives is optimistic for mapping; compare it with the
    spatial designs.
    """

    def __init__(self, n_splits: int = 10, seed: int = 0) -> None:
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.seed = _check_int("seed", seed, 0)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds."""
        return self.n_splits

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        n_groups = int(groups.max()) + 1
        if n_groups < self.n_splits:
            raise InputError(
                f"n_splits {self.n_splits}: expected at most the number of locations ({n_groups})"
            )
        fold = _balanced_folds(groups, self.n_splits, np.random.default_rng(self.seed))[groups]
        for f in range(self.n_splits):
            test = fold == f
            yield _sorted(np.flatnonzero(~test)), _sorted(np.flatnonzero(test))


# ------------------------------------------------------------------------------------------------ kNNDM


class KNNDMKFold(_SpatialCV):
    """k-fold nearest-neighbour distance matching (kNNDM; Linnenbrink et al. 2024, Geosci. Model Dev. 17).

    The folds are chosen so that the distances from each held-out sample to its nearest training sample
    resemble the distances from the places to be mapped (``prediction_points``, lon/lat) to their nearest
    sample: CV then asks the model the same extrapolation question the map does. Candidates: the locations are
    clustered with k-means into q clusters (q from ``n_splits`` up to the number of locations, where q = all
    locations is plain random k-fold), clusters are dealt to folds with balanced sizes, and the candidate with
    the smallest Wasserstein distance W between the two distance distributions is used. ``w_``, ``q_`` and
    ``candidates_`` report the choice.
    """

    def __init__(
        self, prediction_points: ArrayLike, n_splits: int = 10, seed: int = 0, n_candidates: int = 12
    ) -> None:
        self.prediction_points = prediction_points
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.seed = _check_int("seed", seed, 0)
        self.n_candidates = _check_int("n_candidates", n_candidates, 1)
        self.w_: float = float("nan")
        self.q_: int = 0
        self.candidates_: list[tuple[int, float]] = []

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds."""
        return self.n_splits

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        from scipy.stats import wasserstein_distance
        from sklearn.cluster import KMeans

        plon, plat = coordinates(self.prediction_points)
        n_loc = int(groups.max()) + 1
        if n_loc < self.n_splits:
            raise InputError(
                f"n_splits {self.n_splits}: only {n_loc} locations; expected at least one per fold"
            )
        counts = np.bincount(groups)
        loc_lon = np.bincount(groups, weights=lon) / counts
        loc_lat = np.bincount(groups, weights=lat) / counts
        tree = BallTree(_radians_latlon(loc_lon, loc_lat), metric="haversine")
        prediction_d = tree.query(_radians_latlon(plon, plat), k=1)[0][:, 0] * EARTH_RADIUS_KM
        xy = np.column_stack(_local_xy(loc_lon, loc_lat))
        qs = np.unique(np.geomspace(self.n_splits, n_loc, self.n_candidates).round().astype(int))
        best: tuple[float, int, IntArray] | None = None
        self.candidates_ = []
        for q in qs:
            rng = np.random.default_rng(self.seed)
            if q >= n_loc:
                clusters = np.arange(n_loc)
            else:
                clusters = KMeans(n_clusters=int(q), n_init=1, random_state=self.seed).fit_predict(xy)
            units = np.asarray(clusters, dtype=np.intp)[groups]
            fold_of_loc = _balanced_folds(units, self.n_splits, rng)[clusters]
            cv_d = np.empty(n_loc)
            for f in range(self.n_splits):
                inside = fold_of_loc == f
                other = BallTree(_radians_latlon(loc_lon[~inside], loc_lat[~inside]), metric="haversine")
                cv_d[inside] = other.query(_radians_latlon(loc_lon[inside], loc_lat[inside]), k=1)[0][:, 0]
            w = float(wasserstein_distance(cv_d * EARTH_RADIUS_KM, prediction_d))
            self.candidates_.append((int(q), w))
            if best is None or w < best[0]:
                best = (w, int(q), fold_of_loc)
        assert best is not None
        self.w_, self.q_ = best[0], best[1]
        fold = best[2][groups]
        for f in range(self.n_splits):
            test = fold == f
            yield _sorted(np.flatnonzero(~test)), _sorted(np.flatnonzero(test))


# ---------------------------------------------------------------------------------- hold-outs of val_ratio


class _HoldOut(_SpatialCV):
    """One (or ``n_splits`` differently seeded) hold-out of about ``val_ratio`` of the samples, made of whole
    units (subclasses define the units); units are visited in a seeded random order and held out while the
    count stays <= round(val_ratio x n)."""

    what = "units"

    def __init__(self, val_ratio: float, seed: int, n_splits: int, tolerance: float) -> None:
        self.val_ratio = _check_fraction("val_ratio", val_ratio)
        self.seed = _check_int("seed", seed, 0)
        self.n_splits = _check_int("n_splits", n_splits, 1)
        self.tolerance = _check_fraction("tolerance", tolerance)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of (independent, differently seeded) hold-outs."""
        return self.n_splits

    def _units(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> IntArray:
        raise NotImplementedError

    def _short(self, lon: FloatArray, lat: FloatArray, sizes: IntArray, count: int) -> str:
        n = lon.size
        return (
            f"val_ratio {self.val_ratio}: whole {self.what} reach only {count / n:.3f} of the samples "
            f"({sizes.size} {self.what}, the largest holding {int(sizes.max())} of {n} samples)"
        )

    def _split(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> Iterator[Split]:
        n = lon.size
        if n < 2:
            raise InputError(f"{n} sample: expected at least 2 samples for a hold-out split")
        units = self._units(lon, lat, groups)
        sizes = np.bincount(units)
        target_n = min(max(1, round(self.val_ratio * n)), n - 1)
        for i in range(self.n_splits):
            chosen, count = _fill_holdout(sizes, target_n, np.random.default_rng(self.seed + i))
            if count < (1.0 - self.tolerance) * target_n:
                raise InputError(self._short(lon, lat, sizes, count))
            held = chosen[units]
            yield _sorted(np.flatnonzero(~held)), _sorted(np.flatnonzero(held))


class RandomSplit(_HoldOut):
    """Random hold-out of about ``val_ratio`` of the samples, grouped by location (repeat visits stay on one
    side): the non-spatial baseline of ``socmap train``'s hold-out. Nearby locations can be on both sides."""

    what = "locations"

    def __init__(
        self, val_ratio: float = 0.08, seed: int = 0, n_splits: int = 1, tolerance: float = 0.05
    ) -> None:
        super().__init__(val_ratio, seed, n_splits, tolerance)

    def _units(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> IntArray:
        return groups


class SpatialBlockSplit(_HoldOut):
    """Hold-out of whole square blocks of ``block_size_km`` (as :class:`SpatialBlockKFold` draws them)
    amounting to about ``val_ratio`` of the samples; blocks are lumpy, so the share may fall short of
    ``val_ratio`` by up to ``tolerance`` (relative) before an InputError suggests a smaller block."""

    what = "blocks"

    def __init__(
        self,
        val_ratio: float = 0.08,
        block_size_km: float = 10.0,
        seed: int = 0,
        n_splits: int = 1,
        tolerance: float = 0.25,
    ) -> None:
        super().__init__(val_ratio, seed, n_splits, tolerance)
        self.block_size_km = _check_positive("block_size_km", block_size_km)

    def _units(self, lon: FloatArray, lat: FloatArray, groups: IntArray) -> IntArray:
        return _merge_labels(_block_labels(*_local_xy(lon, lat), self.block_size_km), groups)

    def _short(self, lon: FloatArray, lat: FloatArray, sizes: IntArray, count: int) -> str:
        wanted = math.ceil(3 / self.val_ratio)  # about three blocks in the hold-out
        advice = _block_advice(lon, lat, wanted, math.ceil(1 / self.val_ratio))
        return f"block_size_km {self.block_size_km}: {super()._short(lon, lat, sizes, count)}; {advice}"


def holdout_splitter(split: SplitConfig, seed: int, method: str | None = None) -> _SpatialCV:
    """The one hold-out of about ``split.val_ratio`` of the samples that ``socmap train`` draws for its test
    set and a deep model for its early-stopping set (from its training rows), by ``split.method``.

    ``distance-split``: :class:`DistanceSplit` (``split.distance_km``); ``random``: :class:`RandomSplit`
    (whole locations); ``spatial-block``: :class:`SpatialBlockSplit` (whole blocks of ``split.block_size_km``);
    ``buffered`` (a cross-validation design) falls back to ``distance-split``. ``split.folds`` is not used:
    it is the number of folds of ``socmap cv``.

    Args:
        split: the ``split`` config section.
        seed: seed of the hold-out.
        method: the design (default ``split.method``).
    """
    method = method or split.method
    if method in ("distance-split", "buffered"):
        return DistanceSplit(val_ratio=split.val_ratio, min_distance_km=split.distance_km, seed=seed)
    if method == "random":
        return RandomSplit(val_ratio=split.val_ratio, seed=seed)
    if method == "spatial-block":
        return SpatialBlockSplit(val_ratio=split.val_ratio, block_size_km=split.block_size_km, seed=seed)
    raise InputError(f"split.method {method!r}: expected distance-split, random, spatial-block or buffered")


# --------------------------------------------------------------------------------------------- registry

SPLITTERS: dict[str, type[_SpatialCV]] = {
    "distance-split": DistanceSplit,
    "spatial-block": SpatialBlockKFold,
    "buffered": BufferedLeaveOneOut,
    "random": RandomKFold,
    "knndm": KNNDMKFold,
}


def make_splitter(name: str, **kwargs: Any) -> _SpatialCV:
    """The splitter registered as ``name``, built with ``kwargs`` (its constructor options)."""
    if name not in SPLITTERS:
        raise InputError(f"cv {name!r}: expected one of {', '.join(sorted(SPLITTERS))}")
    cls = SPLITTERS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
    for key in kwargs:
        if key not in allowed:
            raise InputError(f"cv {name!r} option {key!r}: expected one of {', '.join(allowed)}")
    return cls(**kwargs)


def splitter_for(
    split: SplitConfig,
    design: str,
    folds: int,
    seed: int,
    prediction_points: FloatArray | None = None,
) -> _SpatialCV:
    """The one place a configuration becomes a splitter (``socmap train``'s hold-out and ``socmap cv``'s folds).

    Args:
        split: the ``split`` config section (distances, block size, validation share).
        design: spatial-block, random, buffered, distance-split or knndm.
        folds: folds (buffered: held-out locations; distance-split: repeated hold-outs).
        seed: seed of the folds.
        prediction_points: lon/lat [m, 2] of the area to be mapped (kNNDM only).
    """
    if design == "spatial-block":
        return make_splitter(design, n_splits=folds, block_size_km=split.block_size_km, seed=seed)
    if design == "random":
        return make_splitter(design, n_splits=folds, seed=seed)
    if design == "buffered":
        return make_splitter(design, buffer_km=split.distance_km, n_splits=folds, seed=seed)
    if design == "knndm":
        if prediction_points is None:
            raise InputError("cv knndm: needs the prediction area's points (prediction_points)")
        return make_splitter(design, prediction_points=prediction_points, n_splits=folds, seed=seed)
    if design == "distance-split":
        return make_splitter(
            design, val_ratio=split.val_ratio, min_distance_km=split.distance_km, n_splits=folds, seed=seed
        )
    raise InputError(f"cv {design!r}: expected one of {', '.join(sorted(SPLITTERS))}")
