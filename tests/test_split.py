"""Validation designs: distance guarantees (checked by brute force), grouping, balance, sklearn compatibility."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pyproj import Geod, Transformer
from scipy.sparse.csgraph import connected_components
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score

from socmap.errors import InputError
from socmap.split import (
    SPLITTERS,
    BufferedLeaveOneOut,
    DistanceSplit,
    RandomKFold,
    RandomSplit,
    SpatialBlockKFold,
    SpatialBlockSplit,
    haversine_km,
    holdout_splitter,
    location_groups,
    make_splitter,
    scoring_warning,
    split_report,
    suggest_block_size_km,
)

LON_RANGE, LAT_RANGE = (9.0, 13.8), (47.3, 50.5)  # Bavaria's bounding box


def bavaria(
    seed: int,
    n_clusters: int = 20,
    per_cluster: int = 15,
    spread_km: float = 2.0,
    n_single: int = 100,
    max_visits: int = 3,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Clustered plus scattered locations in Bavaria, each visited 1..max_visits times (same coordinates).

    Returns lon, lat and a right-skewed target (g/kg) per sample.
    """
    rng = np.random.default_rng(seed)
    centres_lon = rng.uniform(*LON_RANGE, n_clusters)
    centres_lat = rng.uniform(*LAT_RANGE, n_clusters)
    km_lat = 1.0 / 111.2
    km_lon = km_lat / np.cos(np.radians(centres_lat))
    loc_lon = np.concatenate(
        [
            np.repeat(centres_lon, per_cluster)
            + rng.normal(0, spread_km, n_clusters * per_cluster) * np.repeat(km_lon, per_cluster),
            rng.uniform(*LON_RANGE, n_single),
        ]
    )
    loc_lat = np.concatenate(
        [
            np.repeat(centres_lat, per_cluster) + rng.normal(0, spread_km, n_clusters * per_cluster) * km_lat,
            rng.uniform(*LAT_RANGE, n_single),
        ]
    )
    visits = rng.integers(1, max_visits + 1, loc_lon.size)
    lon, lat = np.repeat(loc_lon, visits), np.repeat(loc_lat, visits)
    y = rng.lognormal(np.log(20.0), 0.6, lon.size)
    return lon, lat, y


def pairwise_km(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.float64]:
    """All-pairs great-circle distances, brute force (no BallTree)."""
    return np.asarray(haversine_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :]), dtype=np.float64)


def assert_partition(train: NDArray[np.intp], test: NDArray[np.intp], n: int) -> None:
    assert train.dtype.kind == "i" and test.dtype.kind == "i"
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sorted, no duplicates
    assert np.intersect1d(train, test).size == 0
    assert train.size > 0 and test.size > 0
    assert train.min() >= 0 and test.min() >= 0 and max(train.max(), test.max()) < n


# ------------------------------------------------------------------------------------------ haversine


def test_haversine_munich_nuremberg() -> None:
    d = float(haversine_km(11.5755, 48.1374, 11.0767, 49.4521))
    assert d == pytest.approx(151.0, abs=1.0)
    assert float(haversine_km(11.0767, 49.4521, 11.5755, 48.1374)) == pytest.approx(d, rel=1e-12)
    assert float(haversine_km(11.5, 48.1, 11.5, 48.1)) == 0.0


def test_haversine_matches_geodesic() -> None:
    """Sphere vs WGS84 ellipsoid: within 0.5 % over Europe (up to ~0.56 % for global pairs)."""
    rng = np.random.default_rng(1)
    lon1, lon2 = rng.uniform(-10, 40, (2, 500))
    lat1, lat2 = rng.uniform(35, 70, (2, 500))
    _, _, metres = Geod(ellps="WGS84").inv(lon1, lat1, lon2, lat2)
    ours = haversine_km(lon1, lat1, lon2, lat2)
    assert ours.shape == (500,)
    np.testing.assert_allclose(ours, metres / 1000.0, rtol=0.005)


# ------------------------------------------------------------------------------------- location groups


def test_location_groups_joins_repeat_visits_only() -> None:
    lon = np.array([11.0, 11.0, 11.0000001, 11.00001, 12.0, -0.0, 0.0])
    lat = np.array([48.0, 48.0, 48.0, 48.0, 48.0, 0.0, 0.0])
    g = location_groups(lon, lat)
    assert g[0] == g[1] == g[2]  # 1e-7 degrees is below the 6-decimal rounding
    assert g[3] != g[0] and g[4] != g[0]
    assert g[5] == g[6]  # -0.0 and 0.0 are the same place
    assert sorted(set(g.tolist())) == list(range(4))
    assert location_groups(lon, lat, decimals=3)[3] == g[0]


def test_coordinates_array_and_dataframe_agree() -> None:
    lon, lat, _ = bavaria(0, n_clusters=5, n_single=30)
    X = np.column_stack([lon, lat])
    df = pd.DataFrame({"id": np.arange(lon.size), "lat": lat, "lon": lon, "feature": lon * 2})
    for cv in (DistanceSplit(val_ratio=0.2), SpatialBlockKFold(n_splits=3), RandomKFold(3)):
        for (tr_a, te_a), (tr_d, te_d) in zip(cv.split(X), cv.split(df), strict=True):
            np.testing.assert_array_equal(tr_a, tr_d)
            np.testing.assert_array_equal(te_a, te_d)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((5, 3)), "expected shape [n, 2]"),
        (pd.DataFrame({"x": [1.0], "y": [2.0]}), "expected columns 'lon' and 'lat'"),
        (np.array([[11.0, 95.0], [11.0, 48.0]]), "lat in [-90, 90]"),
        (np.array([[np.nan, 48.0], [11.0, 48.0]]), "NaN"),
        (np.zeros((0, 2)), "no rows"),
    ],
)
def test_bad_coordinates_raise(X: object, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        next(RandomKFold(2).split(X))


def test_groups_length_checked() -> None:
    with pytest.raises(InputError, match="groups of shape"):
        next(RandomKFold(2).split(np.array([[11.0, 48.0], [12.0, 49.0]]), groups=[1, 2, 3]))


# ------------------------------------------------------------------------------------------ distance split


@settings(max_examples=30, deadline=None)
@given(
    data_seed=st.integers(0, 2**32 - 1),
    n_clusters=st.integers(1, 8),
    per_cluster=st.integers(1, 25),
    spread_km=st.floats(0.05, 5.0),
    n_single=st.integers(0, 200),
    max_visits=st.integers(1, 3),
    min_distance_km=st.floats(0.2, 3.0),
    val_ratio=st.floats(0.05, 0.5),
    seed=st.integers(0, 1000),
)
def test_distance_split_properties(
    data_seed: int,
    n_clusters: int,
    per_cluster: int,
    spread_km: float,
    n_single: int,
    max_visits: int,
    min_distance_km: float,
    val_ratio: float,
    seed: int,
) -> None:
    lon, lat, _ = bavaria(data_seed, n_clusters, per_cluster, spread_km, n_single, max_visits)
    n = lon.size
    groups = location_groups(lon, lat)
    dist = pairwise_km(lon, lat)
    target_n = min(max(1, round(val_ratio * n)), n - 1)
    # Brute-force "must stay together" components (slightly generous, so they can only be coarser than the
    # splitter's). If the components of size <= g hold >= target_n samples, greedy filling must come within
    # g of the target, so the split has to succeed within its 5 % tolerance.
    close = (dist <= min_distance_km * (1 + 1e-6)) | (groups[:, None] == groups[None, :])
    _, comp = connected_components(close, directed=False)
    sizes = np.bincount(comp)
    g = math.floor(0.05 * target_n)
    achievable = n >= 2 and sizes[sizes <= g].sum() >= target_n

    event("achievable" if achievable else "not guaranteed achievable")
    splitter = DistanceSplit(val_ratio=val_ratio, min_distance_km=min_distance_km, seed=seed)
    try:
        train, val = next(splitter.split(np.column_stack([lon, lat])))
    except InputError as exc:
        assert not achievable, f"achievable split refused: {exc}"
        event("refused")
        if n < 2:
            assert "expected at least 2 samples" in str(exc)
        else:
            assert "expected a smaller min_distance_km" in str(exc)
        return
    assert_partition(train, val, n)
    assert train.size + val.size == n  # nothing is discarded
    assert dist[np.ix_(val, train)].min() >= min_distance_km
    assert not set(groups[val].tolist()) & set(groups[train].tolist())
    # stated tolerance: never above the target, at most 5 % (relative) below it
    assert (1 - 0.05) * target_n <= val.size <= target_n
    if 1 <= round(val_ratio * n) <= n - 1:  # the target is not clamped to keep both sides non-empty
        assert abs(val.size / n - val_ratio) <= 0.05 * val_ratio + 0.5 / n + 1e-12


def test_distance_split_default_design_and_seeds() -> None:
    lon, lat, _ = bavaria(3, n_clusters=40, per_cluster=20, n_single=400)
    X = np.column_stack([lon, lat])
    n = lon.size
    (_, va1), (_, va2), (_, va3) = DistanceSplit(n_splits=3, seed=5).split(X)
    assert va1.size == va2.size == va3.size == round(0.08 * n)
    assert not np.array_equal(va1, va2) and not np.array_equal(va2, va3)
    # split i uses seed + i
    again = next(DistanceSplit(seed=6).split(X))
    np.testing.assert_array_equal(again[1], va2)
    np.testing.assert_array_equal(next(DistanceSplit(seed=5).split(X))[1], va1)
    assert DistanceSplit(n_splits=3).get_n_splits() == 3


def test_distance_split_respects_user_groups() -> None:
    """Samples with one group id stay together even when their coordinates differ (e.g. GPS jitter)."""
    lon, lat, _ = bavaria(4, n_clusters=0, per_cluster=0, n_single=300, max_visits=1)
    groups = np.arange(lon.size) // 2  # pairs of far-apart points form one "location"
    for seed in range(5):
        train, val = next(
            DistanceSplit(val_ratio=0.2, seed=seed).split(np.column_stack([lon, lat]), groups=groups)
        )
        assert not set(groups[val].tolist()) & set(groups[train].tolist())


def test_distance_split_giant_component_raises() -> None:
    # a 30 x 30 grid with 0.5 km spacing: everything is chained together at 1.2 km
    g_lon, g_lat = np.meshgrid(11.0 + np.arange(30) * 0.5 / 73.6, 48.0 + np.arange(30) * 0.5 / 111.2)
    X = np.column_stack([g_lon.ravel(), g_lat.ravel()])
    with pytest.raises(InputError, match=r"reaches only 0\.000 .* expected a smaller min_distance_km"):
        next(DistanceSplit(min_distance_km=1.2).split(X))
    # at 0.3 km every point is its own component and the split succeeds exactly
    _, val = next(DistanceSplit(min_distance_km=0.3).split(X))
    assert val.size == round(0.08 * 900)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_ratio": 1.5}, "val_ratio 1.5: expected a fraction in (0, 1)"),
        ({"val_ratio": 0}, "val_ratio 0: expected a fraction in (0, 1)"),
        ({"min_distance_km": -1}, "min_distance_km -1: expected a number > 0"),
        ({"n_splits": 0}, "n_splits 0: expected an integer >= 1"),
        ({"seed": 1.5}, "seed 1.5: expected an integer >= 0"),
    ],
)
def test_distance_split_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as info:
        DistanceSplit(**kwargs)
    assert str(info.value).startswith(message)


# --------------------------------------------------------------------------------------------- report


def test_report_warns_on_low_validation_targets() -> None:
    lon, lat, _ = bavaria(5, n_clusters=30, per_cluster=20, n_single=500, max_visits=1)
    X = np.column_stack([lon, lat])
    y = np.random.default_rng(0).lognormal(np.log(20.0), 0.6, lon.size)
    splitter = DistanceSplit()
    train, val = next(splitter.split(X, y))

    honest = splitter.report(X, y, train, val, unit="g/kg")
    assert honest["warning"] is None and honest["ks_pvalue"] >= 0.05
    assert honest["n_train"] == train.size and honest["n_val"] == val.size
    assert honest["val_ratio"] == pytest.approx(val.size / lon.size)
    assert honest["distance_ok"] and honest["min_distance_km_required"] == 1.2
    brute_min = pairwise_km(lon, lat)[np.ix_(val, train)].min()
    assert honest["min_distance_km"] == pytest.approx(brute_min, rel=1e-9)
    assert honest["val"]["median"] == pytest.approx(np.median(y[val]))
    assert honest["train"]["q95"] == pytest.approx(np.quantile(y[train], 0.95))

    order = np.argsort(y)  # validation deliberately taken from the low tail
    low_val, low_train = np.sort(order[: val.size]), np.sort(order[val.size :])
    low = split_report(X, y, low_train, low_val, unit="g/kg")
    assert low["ks_pvalue"] < 0.05
    expected = f"median {np.median(y[low_val]):.3g} vs {np.median(y[low_train]):.3g} g/kg, KS p="
    assert low["warning"].startswith("validation targets are systematically lower than training")
    assert expected in low["warning"]

    high = split_report(X, y, np.sort(order[:-50]), np.sort(order[-50:]))
    assert "systematically higher than training" in high["warning"]


def test_report_warns_when_r2_of_the_held_out_set_would_mislead() -> None:
    """A small or narrow held-out set: R² against its own mean is no score (a spatial 8 % of 150 samples)."""
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(10, 12, 400), rng.uniform(47, 49, 400)
    X = np.column_stack([lon, lat])
    y = rng.normal(7.0, 0.8, 400)
    wide = split_report(X, y, np.arange(300), np.arange(300, 400), unit="pH")
    assert wide["warning"] is None  # 100 samples, same spread

    few = split_report(X, y, np.arange(380), np.arange(380, 392), unit="pH")
    assert few["warning"] == (
        "validation set has only 12 samples: its R² is not a reliable score; judge by RMSE / MAE, or use "
        "`socmap cv`, which holds out every sample once"
    )
    narrow_rows = np.flatnonzero(np.abs(y - 7.0) < 0.2)[:40]  # 40 samples, sd about 0.11
    rest = np.setdiff1d(np.arange(400), narrow_rows)
    narrow = split_report(X, y, rest, narrow_rows, unit="pH", held_out="test")
    sd_held, sd_train = np.std(y[narrow_rows]), np.std(y[rest])
    assert sd_held / sd_train < 0.5
    expected = (
        f"test set has a narrow spread (sd {sd_held:.3g} pH, {sd_held / sd_train:.0%} of the training targets' "
        f"{sd_train:.3g} pH): its R² is not a reliable score"
    )
    assert expected in narrow["warning"], narrow["warning"]  # after the KS test's sentence (spreads differ)
    # same level, other spread: the KS sentence says so instead of calling the set "systematically higher"
    q = np.quantile(y[rest], [0.25, 0.5, 0.75])
    assert abs(np.median(y[narrow_rows]) - q[1]) < 0.1 * (q[2] - q[0])
    iqr_held = np.subtract(*np.quantile(y[narrow_rows], [0.75, 0.25]))
    assert narrow["warning"].startswith(
        f"test targets are distributed differently from training (median {np.median(y[narrow_rows]):.3g} vs "
        f"{q[1]:.3g} pH, IQR {iqr_held:.3g} vs {q[2] - q[0]:.3g} pH, KS p="
    ), narrow["warning"]
    both = scoring_warning(y[narrow_rows][:12], y[rest], "test", " pH")
    assert both is not None and both.startswith("test set has only 12 samples and a narrow spread (sd ")
    assert scoring_warning(y[:30], y[30:]) is None  # 30 samples of the same spread: fine

    order = np.argsort(y)  # a low-tail hold-out: both the KS warning and the scoring warning, in that order
    low = split_report(X, y, np.sort(order[20:]), np.sort(order[:20]), unit="pH")
    assert low["warning"].startswith("validation targets are systematically lower than training")
    assert "; validation set has only 20 samples and a narrow spread" in low["warning"]


def test_report_rejects_empty_side() -> None:
    X = np.array([[11.0, 48.0], [12.0, 49.0]])
    with pytest.raises(InputError, match="expected both > 0"):
        split_report(X, [1.0, 2.0], np.array([0, 1]), np.array([], dtype=int))


# ------------------------------------------------------------------------------------ spatial block k-fold


def test_block_labels_are_square_cells_of_the_given_size() -> None:
    lon, lat, _ = bavaria(6, n_clusters=0, per_cluster=0, n_single=3000, max_visits=1)
    X = np.column_stack([lon, lat])
    blocks = SpatialBlockKFold(block_size_km=25.0).block_labels(X)
    dist = pairwise_km(lon, lat)
    same = blocks[:, None] == blocks[None, :]
    assert dist[same].max() <= 25.0 * math.sqrt(2) * 1.01  # no block is wider than its diagonal
    # Bavaria's bounding box is about 355 x 355 km: about 15 x 15 cells of 25 km (up to 16 per side)
    assert 14**2 <= np.unique(blocks).size <= 16**2
    # cross-check with an independent projection: points in one aeqd cell share a block
    lon0, lat0 = (lon.min() + lon.max()) / 2, (lat.min() + lat.max()) / 2
    tf = Transformer.from_crs(
        "EPSG:4326", f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +datum=WGS84", always_xy=True
    )
    x, y = tf.transform(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    cell = np.floor((x - x.min()) / 25_000).astype(int) * 100_000 + np.floor((y - y.min()) / 25_000).astype(
        int
    )
    for c in np.unique(cell):
        assert np.unique(blocks[cell == c]).size == 1


def test_spatial_block_kfold_partitions_blocks_into_balanced_folds() -> None:
    lon, lat, _ = bavaria(7, n_clusters=60, per_cluster=30, n_single=1000)
    X = np.column_stack([lon, lat])
    n = lon.size
    cv = SpatialBlockKFold(n_splits=5, block_size_km=10.0, seed=3)
    blocks = cv.block_labels(X)
    groups = location_groups(lon, lat)
    folds = list(cv.split(X))
    assert len(folds) == cv.get_n_splits() == 5
    fold_of = np.full(n, -1)
    for f, (train, test) in enumerate(folds):
        assert_partition(train, test, n)
        assert train.size + test.size == n
        assert np.all(fold_of[test] == -1)  # each sample is tested exactly once
        fold_of[test] = f
    assert np.all(fold_of >= 0)
    for b in np.unique(blocks):
        assert np.unique(fold_of[blocks == b]).size == 1  # no block in two folds
    for g in np.unique(groups):
        assert np.unique(fold_of[groups == g]).size == 1
    sizes = np.bincount(fold_of)
    assert sizes.max() - sizes.min() <= np.bincount(blocks).max()  # within one block of each other
    assert sizes.max() - sizes.min() < 0.1 * n / 5

    again = [t for _, t in SpatialBlockKFold(n_splits=5, block_size_km=10.0, seed=3).split(X)]
    other = [t for _, t in SpatialBlockKFold(n_splits=5, block_size_km=10.0, seed=4).split(X)]
    assert all(np.array_equal(a, t) for a, (_, t) in zip(again, folds, strict=True))
    assert not all(np.array_equal(a, t) for a, (_, t) in zip(other, folds, strict=True))


def test_spatial_block_kfold_merges_blocks_joined_by_a_group() -> None:
    lon, lat, _ = bavaria(8, n_clusters=0, per_cluster=0, n_single=400, max_visits=1)
    X = np.column_stack([lon, lat])
    groups = np.arange(lon.size)
    groups[1] = groups[0]  # one "location" recorded at two far-apart coordinates
    fold_of = np.empty(lon.size, dtype=int)
    for f, (_, test) in enumerate(SpatialBlockKFold(n_splits=4, block_size_km=20.0).split(X, groups=groups)):
        fold_of[test] = f
    assert fold_of[0] == fold_of[1]


def test_spatial_block_kfold_works_with_sklearn() -> None:
    lon, lat, _ = bavaria(9, n_clusters=20, per_cluster=20, n_single=300)
    rng = np.random.default_rng(0)
    features = np.column_stack([rng.normal(size=lon.size), lat])
    y = 3.0 * features[:, 0] + rng.normal(0, 0.1, lon.size)
    coords = np.column_stack([lon, lat])
    groups = location_groups(lon, lat)
    cv = SpatialBlockKFold(n_splits=4, block_size_km=20.0)
    scores = cross_val_score(LinearRegression(), features, y, cv=cv.split(coords, y, groups))
    assert scores.shape == (4,) and np.all(scores > 0.99)
    # passing the splitter itself: the feature table carries lon/lat columns
    table = pd.DataFrame({"f": features[:, 0], "lon": lon, "lat": lat})
    scores2 = cross_val_score(LinearRegression(), table, y, cv=cv, groups=groups)
    assert scores2.shape == (4,) and np.all(scores2 > 0.99)


def test_spatial_block_kfold_too_few_blocks() -> None:
    X = np.array([[11.0, 48.0], [11.001, 48.001], [11.002, 48.0]])
    with pytest.raises(InputError, match=r"only 1 non-empty blocks of 10\.0 km; expected at least as many"):
        next(SpatialBlockKFold(n_splits=2).split(X))
    with pytest.raises(InputError, match="n_splits 1: expected an integer >= 2"):
        SpatialBlockKFold(n_splits=1)
    with pytest.raises(InputError, match="block_size_km 0: expected a number > 0"):
        SpatialBlockKFold(block_size_km=0)


def small_area(n: int = 300, km: float = 5.0, seed: int = 0) -> NDArray[np.float64]:
    """``n`` random points in a ``km`` x ``km`` square near Munich, as (lon, lat)."""
    rng = np.random.default_rng(seed)
    lat = 48.1 + rng.uniform(0, km, n) / 111.2
    lon = 11.5 + rng.uniform(0, km, n) / (111.2 * np.cos(np.radians(48.1)))
    return np.column_stack([lon, lat])


def test_spatial_block_kfold_too_large_blocks_says_what_block_size_works() -> None:
    """10 km blocks over a 5 km area give fewer blocks than folds: the error names a size that works."""
    X = small_area()
    with pytest.raises(InputError) as info:
        next(SpatialBlockKFold(n_splits=10, block_size_km=10.0).split(X))
    text = str(info.value)
    assert "only 1 non-empty blocks of 10.0 km" in text and "the samples span 5 x 5 km" in text
    size = float(text.split("use block_size_km ")[1].split(" ")[0])
    assert 0.5 <= size <= 5.0 / math.sqrt(30)  # about extent / sqrt(3 x folds)
    folds = list(SpatialBlockKFold(n_splits=10, block_size_km=size).split(X))
    assert len(folds) == 10
    assert suggest_block_size_km(X[:, 0], X[:, 1], 30) == size
    assert suggest_block_size_km([11.0, 11.0], [48.0, 48.0], 4) is None  # one place: no block size works


def test_random_split_holds_out_val_ratio_of_locations() -> None:
    lon, lat, _ = bavaria(12, n_clusters=10, n_single=200, max_visits=4)
    X = np.column_stack([lon, lat])
    groups = location_groups(lon, lat)
    train, test = next(RandomSplit(val_ratio=0.25, seed=3).split(X))
    assert_partition(train, test, lon.size)
    assert test.size == pytest.approx(0.25 * lon.size, rel=0.05)
    assert not set(groups[train].tolist()) & set(groups[test].tolist())
    again = next(RandomSplit(val_ratio=0.25, seed=3).split(X))[1]
    other = next(RandomSplit(val_ratio=0.25, seed=4).split(X))[1]
    assert np.array_equal(test, again) and not np.array_equal(test, other)


def test_spatial_block_split_holds_out_whole_blocks() -> None:
    lon, lat, _ = bavaria(5, n_single=400)
    X = np.column_stack([lon, lat])
    train, test = next(SpatialBlockSplit(val_ratio=0.2, block_size_km=20.0, seed=1).split(X))
    assert_partition(train, test, lon.size)
    assert test.size == pytest.approx(0.2 * lon.size, rel=0.25)
    blocks = SpatialBlockKFold(block_size_km=20.0).block_labels(X)
    assert not set(blocks[train].tolist()) & set(blocks[test].tolist())
    with pytest.raises(
        InputError, match=r"block_size_km 10\.0: val_ratio 0\.08: whole blocks reach only 0\.000"
    ):
        next(SpatialBlockSplit(block_size_km=10.0).split(small_area()))


def test_holdout_splitter_follows_split_method() -> None:
    from socmap.config import SplitConfig

    cfg = SplitConfig(val_ratio=0.2, block_size_km=7.0, distance_km=2.0)
    assert isinstance(holdout_splitter(cfg, 0, "random"), RandomSplit)
    block = holdout_splitter(cfg, 0, "spatial-block")
    assert isinstance(block, SpatialBlockSplit) and block.block_size_km == 7.0 and block.val_ratio == 0.2
    for method in ("distance-split", "buffered"):
        dist = holdout_splitter(cfg, 0, method)
        assert isinstance(dist, DistanceSplit) and dist.min_distance_km == 2.0 and dist.val_ratio == 0.2


# ---------------------------------------------------------------------------------- buffered leave-one-out


def test_buffered_loo_trains_only_beyond_the_buffer() -> None:
    lon, lat, _ = bavaria(10, n_clusters=10, per_cluster=15, spread_km=1.5, n_single=50)
    X = np.column_stack([lon, lat])
    n = lon.size
    groups = location_groups(lon, lat)
    dist = pairwise_km(lon, lat)
    cv = BufferedLeaveOneOut(buffer_km=1.2)
    splits = list(cv.split(X))
    assert len(splits) == cv.get_n_splits(X) == np.unique(groups).size
    excluded_any = False
    for train, test in splits:
        assert_partition(train, test, n)
        assert np.unique(groups[test]).size == 1
        np.testing.assert_array_equal(test, np.flatnonzero(groups == groups[test[0]]))  # all visits
        far = dist[test].min(axis=0) > 1.2
        far[test] = False
        np.testing.assert_array_equal(train, np.flatnonzero(far))  # exactly the samples beyond the buffer
        excluded_any |= train.size + test.size < n
    assert excluded_any  # the clustered data do put samples inside some buffers


def test_buffered_loo_random_subset() -> None:
    lon, lat, _ = bavaria(11, n_clusters=5, n_single=100)
    X = np.column_stack([lon, lat])
    groups = location_groups(lon, lat)
    tests = [t for _, t in BufferedLeaveOneOut(n_splits=20, seed=1).split(X)]
    assert len(tests) == 20 == BufferedLeaveOneOut(n_splits=20).get_n_splits()
    held = [int(groups[t[0]]) for t in tests]
    assert len(set(held)) == 20
    same = [t for _, t in BufferedLeaveOneOut(n_splits=20, seed=1).split(X)]
    other = [int(groups[t[0]]) for _, t in BufferedLeaveOneOut(n_splits=20, seed=2).split(X)]
    assert all(np.array_equal(a, b) for a, b in zip(tests, same, strict=True))
    assert set(other) != set(held)
    with pytest.raises(InputError, match="expected at most the number of locations"):
        next(BufferedLeaveOneOut(n_splits=10_000).split(X))


# ------------------------------------------------------------------------------------------ random k-fold


def test_random_kfold_groups_and_seeds() -> None:
    lon, lat, _ = bavaria(12, n_clusters=10, n_single=200, max_visits=4)
    X = np.column_stack([lon, lat])
    n = lon.size
    groups = location_groups(lon, lat)
    assert np.bincount(groups).max() > 1  # there are repeat visits to keep together
    folds = list(RandomKFold(n_splits=5, seed=0).split(X))
    fold_of = np.full(n, -1)
    for f, (train, test) in enumerate(folds):
        assert_partition(train, test, n)
        assert not set(groups[train].tolist()) & set(groups[test].tolist())
        fold_of[test] = f
    assert np.all(fold_of >= 0)
    sizes = np.bincount(fold_of)
    assert sizes.max() - sizes.min() <= np.bincount(groups).max()
    same = list(RandomKFold(n_splits=5, seed=0).split(X))
    other = list(RandomKFold(n_splits=5, seed=1).split(X))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, same, strict=True))
    assert not np.array_equal(folds[0][1], other[0][1])
    with pytest.raises(InputError, match="expected at most the number of locations"):
        next(RandomKFold(n_splits=5).split(X[:3]))


# --------------------------------------------------------------------------------------------- registry


def test_make_splitter() -> None:
    assert sorted(SPLITTERS) == ["buffered", "distance-split", "knndm", "random", "spatial-block"]
    cv = make_splitter("spatial-block", n_splits=3, block_size_km=5.0)
    assert isinstance(cv, SpatialBlockKFold) and cv.n_splits == 3 and cv.block_size_km == 5.0
    with pytest.raises(InputError) as info:
        make_splitter("foo")
    assert (
        str(info.value) == "cv 'foo': expected one of buffered, distance-split, knndm, random, spatial-block"
    )
    with pytest.raises(InputError, match="cv 'random' option 'buffer_km': expected one of n_splits, seed"):
        make_splitter("random", buffer_km=1.0)


# ------------------------------------------------------------------------------------------------ kNNDM
def test_knndm_matches_the_prediction_distances() -> None:
    from socmap.split import KNNDMKFold

    rng = np.random.default_rng(5)
    # samples in tight clusters; the map covers the whole area: mapping extrapolates far from samples
    centres = rng.uniform([10.0, 48.0], [12.0, 49.5], size=(12, 2))
    pts = np.concatenate([c + rng.normal(0, 0.01, size=(25, 2)) for c in centres])
    pts = np.concatenate([pts, pts[:40]])  # repeat visits
    prediction = rng.uniform([10.0, 48.0], [12.0, 49.5], size=(800, 2))
    cv = KNNDMKFold(prediction, n_splits=4, seed=0)
    folds = list(cv.split(pts))
    test_sets = [te for _, te in folds]
    assert sorted(np.concatenate(test_sets).tolist()) == list(range(len(pts)))  # a partition
    groups = location_groups(pts[:, 0], pts[:, 1])
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])  # repeat visits never on both sides
    w_random = dict(cv.candidates_)[max(q for q, _ in cv.candidates_)]
    assert cv.w_ < 0.5 * w_random  # much closer to the map's distances than random k-fold
    assert cv.q_ < 300  # clustered folds were chosen

    # when the map only asks about the sampled places, random k-fold (all locations as units) fits best
    dense = KNNDMKFold(pts, n_splits=4, seed=0)
    list(dense.split(pts))
    assert dense.q_ == max(q for q, _ in dense.candidates_)
