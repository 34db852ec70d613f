"""Tree and linear models on window features: random forest, quantile forest, XGBoost, ridge regression.

Each is a :class:`FeatureModel`: :class:`~socmap.models.features.WindowFeatures` (fill values fitted on the
training rows only) -> target transform (fitted on the training targets) -> a scikit-learn-style estimator,
with predictions inverted to the original unit. Quantile-forest quantiles pass through the monotone inverse
transform exactly.

Persistence without pickle (chosen per library, see the README's model section):
- ``rf``, ``qrf``: skops (``estimator.skops``), loaded only when every type skops does not trust by default is
  on an explicit list (scikit-learn's tree, quantile-forest's regressor and forest); anything else is refused.
- ``xgb``: XGBoost's own UBJSON (``estimator.ubj``), a data-only format.
- ``linear``: coefficients in ``model.json``.

Bulk prediction (mapping, :meth:`FeatureModel.for_inference`): scikit-learn's forests walk their trees through
joblib, a few hundred microseconds of Python per tree and call, which held the GIL and dominated a map's time
at 1,024 windows per batch. :class:`FastForest` calls the same compiled tree walk (``tree_.apply``) tree by
tree and sums the leaf values in the same order (rf), or hands the leaves of one walk to quantile-forest's own
compiled mean and quantile routines (qrf: one walk for the point and the quantiles instead of two). It is
kept only when it reproduces the library's own ``predict`` bit for bit on a probe batch (else the library's
``predict`` is used), and the tests compare it with the library on real features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from socmap._atomic import atomic_file
from socmap.errors import InputError
from socmap.models.base import PREDICT_BATCH, FitData, FitInfo, FloatArray, InputSpec, SocModel, read_rows
from socmap.models.features import WindowFeatures
from socmap.transforms import TargetTransform

__all__ = ["FeatureModel", "ForestModel", "LinearModel", "QuantileForestModel", "XGBoostModel"]

ESTIMATOR_SKOPS = "estimator.skops"
ESTIMATOR_UBJ = "estimator.ubj"
# types skops does not trust by default that a fitted forest's file holds (skops already trusts scikit-learn's
# estimators and numpy); any other type in a file (e.g. a pickled function) is refused
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "quantile_forest._quantile_forest.RandomForestQuantileRegressor",
    "quantile_forest._quantile_forest_fast.QuantileForest",
)


class FastForest:
    """A fitted scikit-learn forest (``rf``) or quantile forest (``qrf``) predicted without joblib: the same
    compiled tree walk and the same arithmetic in the same order as the library's ``predict``, so the results
    are identical bit for bit (checked by :meth:`matches`, tested in ``tests/test_models.py``).

    Args:
        estimator: a fitted ``RandomForestRegressor`` or ``RandomForestQuantileRegressor``.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.trees = [t.tree_ for t in estimator.estimators_]
        self.values = [np.asarray(t.value[:, 0, 0], np.float64) for t in self.trees]
        self.quantile = hasattr(estimator, "forest_")

    @staticmethod
    def supports(estimator: Any) -> bool:
        """Single-output forests; quantile forests only where the library takes its general path (leaves of
        any size: ``max_samples_leaf != 1``)."""
        if getattr(estimator, "n_outputs_", 0) != 1 or not hasattr(estimator, "estimators_"):
            return False
        if not hasattr(estimator, "forest_"):
            return True
        params = estimator.get_params()
        return params.get("max_samples_leaf") != 1 and params.get("default_quantiles") in (None, "mean")

    def leaves(self, x: FloatArray) -> NDArray[np.intp]:
        """``estimator.apply(x)``: the leaf of every row in every tree, [n, trees] (float32 inputs, as the
        library casts them)."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if x32.shape[0] == 0:
            return np.empty((0, len(self.trees)), np.intp)
        return np.column_stack([tree.apply(x32) for tree in self.trees])

    def point(self, x: FloatArray) -> FloatArray:
        """``estimator.predict(x)``: the forest's mean (rf) or the quantile forest's conditional mean (qrf)."""
        if self.quantile:
            mean = self.estimator.forest_.predict([-1], self.leaves(x), None, b"linear", True, False, True)
            return np.asarray(mean, np.float64)[:, 0, 0]
        return self.mean(x)

    def mean(self, x: FloatArray) -> FloatArray:
        """``RandomForestRegressor.predict(x)``: the trees' leaf values summed in tree order, divided by
        their number (what scikit-learn does on one thread)."""
        leaves = self.leaves(x)
        out = np.zeros(x.shape[0], np.float64)
        for k, values in enumerate(self.values):
            out += values[leaves[:, k]]
        out /= len(self.values)
        return out

    def quantile_predict(self, x: FloatArray, quantiles: Sequence[float]) -> tuple[FloatArray, FloatArray]:
        """``RandomForestQuantileRegressor.predict(x)`` (the mean) and ``.predict(x, quantiles=...)`` [n, k]
        from one tree walk: quantile-forest's own compiled routine, with the arguments its ``predict``
        passes by default."""
        leaves = self.leaves(x)
        forest = self.estimator.forest_
        mean = forest.predict([-1], leaves, None, b"linear", True, False, True)
        values = forest.predict([float(q) for q in quantiles], leaves, None, b"linear", True, False, True)
        return np.asarray(mean, np.float64)[:, 0, 0], np.asarray(values, np.float64)[:, 0, :]

    def probe(self, n: int = 64, seed: int = 0) -> FloatArray:
        """Feature rows that reach many leaves: each feature near one of its split thresholds (either side)."""
        rng = np.random.default_rng(seed)
        n_features = int(self.estimator.n_features_in_)
        thresholds: list[list[float]] = [[] for _ in range(n_features)]
        for tree in self.trees[:20]:
            for f, t in zip(tree.feature, tree.threshold, strict=True):
                if f >= 0:
                    thresholds[int(f)].append(float(t))
        out = np.zeros((n, n_features))
        for f, values in enumerate(thresholds):
            if values:
                base = rng.choice(np.asarray(values), n)
                out[:, f] = base + rng.normal(0.0, 1e-3, n) * (np.abs(base) + 1e-3)
        return out

    def matches(self, levels: Sequence[float] = (0.05, 0.5, 0.95)) -> bool:
        """Whether this reproduces the library's ``predict`` bit for bit on :meth:`probe` rows."""
        x = self.probe()
        try:
            if not self.quantile:
                return bool(np.array_equal(self.point(x), self.estimator.predict(x)))
            mean, values = self.quantile_predict(x, levels)
            reference = np.asarray(self.estimator.predict(x, quantiles=list(levels))).reshape(values.shape)
            return bool(
                np.array_equal(mean, self.estimator.predict(x))
                and np.array_equal(self.point(x), mean)
                and np.array_equal(values, reference)
            )
        except Exception:  # another library version with other internals: use its predict
            return False


def default_jobs() -> int:
    """Threads for fitting: every core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class FeatureModel(SocModel):
    """Window features -> target transform -> estimator. Subclasses build, save and load the estimator."""

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: dict[str, Any] | None = None, target_transform: str = "none", n_jobs: int = 0):
        self.params: dict[str, Any] = {}
        self.n_jobs = n_jobs or default_jobs()
        self.check_params(dict(params or {}))
        self.params = dict(params or {})
        self.transform = TargetTransform(target_transform)
        self.features: WindowFeatures | None = None
        self.estimator: Any = None
        self.fast: FastForest | None = None  # mapping copies of forests (for_inference)
        self.seed = 0

    # ------------------------------------------------------------------ subclass hooks
    def build(self, seed: int) -> Any:
        """An unfitted estimator with ``defaults | params``."""
        raise NotImplementedError

    def allowed_params(self) -> set[str]:
        """Option names the estimator accepts."""
        return set(self.build(0).get_params())

    def check_params(self, params: dict[str, Any]) -> None:
        """Refuse unknown or reserved options, naming the allowed ones."""
        reserved = {"random_state", "n_jobs", "seed"} & set(params)
        if reserved:
            raise InputError(
                f"models.{self.kind}: {', '.join(sorted(reserved))} are set by socmap (train.seed, train.threads)"
            )
        allowed = self.allowed_params()
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise InputError(
                f"models.{self.kind} option(s) {', '.join(unknown)}: expected among {', '.join(sorted(allowed))}"
            )
        self.check_values(params)

    def check_values(self, params: dict[str, Any]) -> None:
        """Refuse option values the estimator would reject only at fit time (scikit-learn's own checks)."""
        saved, self.params = self.params, params
        try:
            estimator = self.build(0)
            if hasattr(estimator, "_parameter_constraints"):  # scikit-learn estimators (not XGBoost)
                estimator._validate_params()
        except Exception as exc:
            raise InputError(f"models.{self.kind}: {str(exc).splitlines()[0]}") from None
        finally:
            self.params = saved

    def save_estimator(self, folder: Path) -> str:
        """Write the fitted estimator; returns its file name."""
        raise NotImplementedError

    def load_estimator(self, path: Path) -> Any:
        """Read an estimator written by :meth:`save_estimator` (refusing code)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the interface
    def fit(self, data: FitData) -> FitInfo:
        """Features and fill values from the training rows, then the estimator on transformed targets."""
        self.inputs = data.inputs
        self.seed = data.seed
        self.features = WindowFeatures(
            data.inputs.static_channels,
            list(data.inputs.bands),
            categorical_channels=data.inputs.categorical_channels,
        )
        x = self.features.fit_transform(read_rows(data.windows, data.train))
        y = data.target[data.train]
        self.transform.fit(y)
        z = self.transform.forward(y)
        try:
            self.estimator, info = self.build_for(x, z, data)
            self.estimator.fit(x, z)
        except (ValueError, TypeError) as exc:  # e.g. an XGBoost option value only the library checks
            raise InputError(f"models.{self.kind}: {str(exc).splitlines()[0]}") from None
        self._single_threaded()
        info.parameters = self.n_parameters()
        return info

    def build_for(self, x: FloatArray, z: FloatArray, data: FitData) -> tuple[Any, FitInfo]:
        """The unfitted estimator for features ``x`` and transformed targets ``z`` of the training rows, and the
        fit's report so far (a subclass may tune an option on the training rows first)."""
        return self.build(data.seed), FitInfo()

    def _single_threaded(self) -> None:
        """Predict calls run the estimator on one thread (see :meth:`_chunked`)."""
        if self.estimator is not None and "n_jobs" in self.estimator.get_params():
            self.estimator.set_params(n_jobs=1)

    def n_parameters(self) -> int:
        """Tree nodes (forests) or coefficients (linear): a size comparable across kinds."""
        return 0

    def _features(self, windows: NDArray[np.float32]) -> FloatArray:
        if self.features is None or self.estimator is None:
            raise InputError(f"model {self.kind!r}: call fit before predict")
        return self.features.transform(windows)

    def _chunked(
        self, fn: Callable[[FloatArray], Any], windows: NDArray[np.float32], batch_size: int
    ) -> list[FloatArray]:
        """``fn(features)`` of row chunks, ``n_jobs`` chunks at a time on threads (tree code releases the GIL).

        The estimator itself predicts on one thread: scikit-learn's forests sum their trees in completion order
        when threaded, which changes the last bit from call to call; chunks keep every row's sum in tree order,
        so predictions are reproducible bit for bit whatever the thread count.
        """
        starts = list(range(0, len(windows), batch_size))

        def one(start: int) -> FloatArray:
            return np.asarray(fn(self._features(windows[start : start + batch_size])), np.float64)

        if len(starts) <= 1 or self.n_jobs <= 1:
            return [one(s) for s in starts]
        with ThreadPoolExecutor(min(self.n_jobs, len(starts))) as pool:
            return list(pool.map(one, starts))

    def _point_fn(self) -> Callable[[FloatArray], Any]:
        """The estimator's point prediction of features (the fast forest's where one is set)."""
        return self.fast.point if self.fast is not None else self.estimator.predict

    def predict(self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH) -> FloatArray:
        """Point predictions in the original unit."""
        parts = self._chunked(self._point_fn(), windows, batch_size)
        z = np.concatenate(parts) if parts else np.empty(0)
        return self._unseen_as_nodata(windows, self.transform.inverse(z))

    def _unseen_as_nodata(self, windows: NDArray[np.float32], values: FloatArray) -> FloatArray:
        """Rows whose categorical band holds a class unseen in training: reported (a warning naming band, codes
        and count) and, in a map (:meth:`for_inference`), NaN = nodata instead of a silent guess."""
        if self.features is None or not self.features.categories_:
            return values
        unseen = self.features.unseen_rows(windows)
        if self.features.nodata_unseen and unseen.any():
            values = np.array(values, np.float64)
            values[unseen] = np.nan
        return values

    def for_inference(self) -> SocModel:
        """A copy that predicts on one thread (mapping runs several batches or blocks at once instead) and,
        for forests, through :class:`FastForest` when it reproduces the library bit for bit. Tree and linear
        models ignore :meth:`with_precision`: they always predict in float64."""
        import copy as copying

        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.n_jobs = 1
        copy.fast = None
        if self.estimator is not None and FastForest.supports(self.estimator):
            fast = FastForest(self.estimator)
            copy.fast = fast if fast.matches() else None
        if self.features is not None and self.features.categories_:
            copy.features = copying.copy(self.features)
            copy.features.nodata_unseen = True
        return copy

    def describe(self) -> str:
        return f"{self.kind} ({', '.join(f'{k}={v}' for k, v in self.params.items()) or 'defaults'})"

    def state(self, folder: Path) -> dict[str, Any]:
        if self.features is None:
            raise InputError(f"model {self.kind!r}: call fit before save")
        return {
            "params": self.params,
            "seed": self.seed,
            "features": self.features.to_state(),
            "target_transform": self.transform.to_dict(),
            "estimator": self.save_estimator(folder),
        }

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        transform = TargetTransform.from_dict(state["target_transform"])
        model = cls(dict(state.get("params", {})), transform.name)
        model.transform = transform
        model.seed = int(state.get("seed", 0))
        model.features = WindowFeatures.from_state(state["features"])
        name = str(state["estimator"])
        if name not in (ESTIMATOR_SKOPS, ESTIMATOR_UBJ, "model.json"):
            raise InputError(
                f"model file {folder / 'model.json'}: estimator file {name!r} is not one socmap writes"
            )
        model.estimator = model.load_estimator(folder / name)
        model.inputs = inputs
        return model


def _skops_dump(estimator: Any, path: Path) -> None:
    import skops.io as sio

    with atomic_file(path, "model file") as tmp:
        sio.dump(estimator, tmp)


def _skops_load(path: Path) -> Any:
    """Load a skops file only if every type in it is trusted; a tampered file is refused by name."""
    import skops.io as sio

    if not path.is_file():
        raise InputError(f"model file {path} is missing")
    try:
        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
    except Exception as exc:
        raise InputError(f"model file {path} is truncated or corrupt ({type(exc).__name__})") from None
    if untrusted:
        raise InputError(
            f"model file {path} holds types socmap does not trust ({', '.join(untrusted[:3])}) and was refused; "
            "load only model files written by socmap"
        )
    try:
        return sio.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise InputError(f"model file {path} is truncated or corrupt ({type(exc).__name__})") from None


class ForestModel(FeatureModel):
    """Random forest (scikit-learn), R randomForest's regression defaults: mtry p/3, nodesize 5, 300 trees."""

    kind: ClassVar[str] = "rf"  # also set by the registry (socmap.models.zoo)

    defaults: ClassVar[dict[str, Any]] = {"n_estimators": 300, "max_features": 1 / 3, "min_samples_leaf": 5}

    def build(self, seed: int) -> Any:
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(**(self.defaults | self.params), random_state=seed, n_jobs=self.n_jobs)

    def n_parameters(self) -> int:
        return int(sum(t.tree_.node_count for t in self.estimator.estimators_))

    def save_estimator(self, folder: Path) -> str:
        _skops_dump(self.estimator, folder / ESTIMATOR_SKOPS)
        return ESTIMATOR_SKOPS

    def load_estimator(self, path: Path) -> Any:
        estimator = _skops_load(path)
        estimator.set_params(n_jobs=1)  # see FeatureModel._chunked
        return estimator


class QuantileForestModel(ForestModel):
    """Quantile regression forest (quantile-forest, Meinshausen 2006): the point prediction is the conditional
    mean (comparable to rf); any quantile from the training values kept in the leaves."""

    kind: ClassVar[str] = "qrf"  # also set by the registry (socmap.models.zoo)

    defaults: ClassVar[dict[str, Any]] = ForestModel.defaults | {
        "max_samples_leaf": None,
        "default_quantiles": "mean",
    }

    def build(self, seed: int) -> Any:
        from quantile_forest import RandomForestQuantileRegressor

        return RandomForestQuantileRegressor(
            **(self.defaults | self.params), random_state=seed, n_jobs=self.n_jobs
        )

    def gives_quantiles(self, levels: Sequence[float]) -> bool:
        return all(0.0 < q < 1.0 for q in levels)

    def predict_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> FloatArray | None:
        """Quantiles of the training targets in the leaves (weighted), sorted per row, original unit."""
        if not levels:
            return np.empty((len(windows), 0))
        fast = self.fast
        fn = (
            (lambda f: fast.quantile_predict(f, levels)[1])
            if fast is not None
            else (lambda f: self.estimator.predict(f, quantiles=list(levels)))
        )
        parts = self._chunked(fn, windows, batch_size)
        return self._sorted_quantiles(windows, parts, len(levels))

    def _sorted_quantiles(self, windows: NDArray[np.float32], parts: list[FloatArray], k: int) -> FloatArray:
        z = np.concatenate([p.reshape(-1, k) for p in parts]) if parts else np.empty((0, k))
        return self._unseen_as_nodata(windows, np.sort(self.transform.inverse(z), axis=1))

    def predict_with_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> tuple[FloatArray, FloatArray | None]:
        """Point predictions and quantiles; a mapping copy (:class:`FastForest`) walks the trees once for both."""
        fast = self.fast
        if fast is None or not levels or not self.gives_quantiles(levels):
            return super().predict_with_quantiles(windows, levels, batch_size)

        def both(f: FloatArray) -> FloatArray:
            mean, values = fast.quantile_predict(f, levels)
            return np.column_stack([mean, values])

        parts = self._chunked(both, windows, batch_size)
        z = np.concatenate(parts) if parts else np.empty((0, 1 + len(levels)))
        point = self._unseen_as_nodata(windows, self.transform.inverse(z[:, 0]))
        return point, self._sorted_quantiles(windows, [z[:, 1:]], len(levels))


AUTO_ROUNDS_BELOW = 1000  # training rows below which xgb's boosting rounds are chosen by inner CV
ROUNDS_CAP = 2000
ROUNDS_PATIENCE = 50
ROUNDS_FOLDS = 5


class XGBoostModel(FeatureModel):
    """Gradient-boosted trees (XGBoost, hist, CPU), saved in XGBoost's own UBJSON format.

    Boosting rounds (``n_estimators``): 400 from ``AUTO_ROUNDS_BELOW`` (1,000) training rows; below, or with
    ``n_estimators: auto``, chosen on the training rows by :meth:`inner_cv_rounds` (5-fold spatial-block CV,
    XGBoost's own ``xgb.cv`` with early stopping), then refitted on all of them. Why: 400 rounds at learning
    rate 0.05 fit the noise of a few hundred samples; measured (docs/benchmarks.md), the chosen 13-93 rounds
    raised pooled R² under spatial-block CV by 0.03-0.12 on every small set tried (Edgeroi and its 120-profile
    subsets), while on Macedonia (2,900-3,100 training rows) they were level (blocks) or 0.02 lower (published
    split), hence a rule by size. A number given in the config is used as given.
    """

    kind: ClassVar[str] = "xgb"  # also set by the registry (socmap.models.zoo)

    defaults: ClassVar[dict[str, Any]] = {
        "n_estimators": 400,
        "learning_rate": 0.05,
        "max_depth": 6,
        "min_child_weight": 5,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "tree_method": "hist",
        "device": "cpu",
    }

    def build(self, seed: int, rounds: int | None = None) -> Any:
        from xgboost import XGBRegressor

        params = self.defaults | {
            k: v for k, v in self.params.items() if not (k == "n_estimators" and v == "auto")
        }
        if rounds is not None:
            params["n_estimators"] = rounds
        return XGBRegressor(**params, random_state=seed, n_jobs=self.n_jobs)

    def check_values(self, params: dict[str, Any]) -> None:
        rounds = params.get("n_estimators", 1)
        if rounds != "auto" and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise InputError(
                f"models.xgb.n_estimators {rounds!r}: expected a whole number of boosting rounds >= 1 or auto "
                f"(chosen by inner spatial CV; the default below {AUTO_ROUNDS_BELOW} training samples)"
            )
        super().check_values(params)

    def build_for(self, x: FloatArray, z: FloatArray, data: FitData) -> tuple[Any, FitInfo]:
        """The estimator with its boosting rounds: as configured, 400, or chosen by inner CV (see the class)."""
        given = self.params.get("n_estimators")
        if given not in (None, "auto") or (given is None and data.train.size >= AUTO_ROUNDS_BELOW):
            estimator = self.build(data.seed)
            return estimator, FitInfo(schedule={"n_estimators": float(estimator.n_estimators)})
        info = FitInfo()
        rounds, how = self.inner_cv_rounds(x, z, data, info.warnings)
        info.schedule = {"n_estimators": float(rounds), "rounds_by_inner_cv": float(how)}
        return self.build(data.seed, rounds), info

    def inner_cv_rounds(
        self, x: FloatArray, z: FloatArray, data: FitData, warnings: list[str]
    ) -> tuple[int, bool]:
        """(rounds, whether inner CV chose them): the round count with the lowest mean held-out RMSE of
        ``xgb.cv`` over 5 spatial-block folds of the training rows (blocks sized for about 3 per fold; random
        folds over locations where the rows do not span enough blocks), stopping 50 rounds after the best, at
        most 2,000. Too few locations for 5 folds: the fixed 400, with a warning."""
        import xgboost as xgb

        folds = self._inner_folds(data)
        if folds is None:
            warnings.append(
                f"xgb: {data.train.size} training samples at too few places for {ROUNDS_FOLDS}-fold inner CV of "
                f"the boosting rounds (or without coordinates); used {self.defaults['n_estimators']} (set "
                "models.xgb.n_estimators)"
            )
            return int(self.defaults["n_estimators"]), False
        estimator = self.build(data.seed)
        params = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
        params |= {
            "nthread": params.pop("n_jobs", self.n_jobs),
            "seed": params.pop("random_state", data.seed),
        }
        history = xgb.cv(
            params,
            xgb.DMatrix(x, label=z),
            num_boost_round=ROUNDS_CAP,
            folds=folds,
            early_stopping_rounds=ROUNDS_PATIENCE,
            metrics="rmse",
            seed=data.seed,
        )
        return len(history), True

    @staticmethod
    def _inner_folds(data: FitData) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]] | None:
        """Spatial-block folds of the training rows (random folds over locations as the fallback), or None."""
        from socmap.split import RandomKFold, SpatialBlockKFold, suggest_block_size_km

        if data.coords is None:
            return None
        coords = data.coords[data.train]
        size = suggest_block_size_km(coords[:, 0], coords[:, 1], 3 * ROUNDS_FOLDS)
        splitters = [SpatialBlockKFold(ROUNDS_FOLDS, size, data.seed)] if size else []
        for splitter in [*splitters, RandomKFold(ROUNDS_FOLDS, data.seed)]:
            try:
                return [(np.asarray(a, np.int64), np.asarray(b, np.int64)) for a, b in splitter.split(coords)]
            except InputError:
                continue
        return None

    def n_parameters(self) -> int:
        return int(sum(len(t) for t in self.estimator.get_booster().get_dump()))

    def save_estimator(self, folder: Path) -> str:
        with atomic_file(folder / ESTIMATOR_UBJ, "model file") as tmp:
            self.estimator.save_model(str(tmp.with_suffix(".ubj")))
            tmp.with_suffix(".ubj").replace(tmp)
        return ESTIMATOR_UBJ

    def load_estimator(self, path: Path) -> Any:
        from xgboost import XGBRegressor

        if not path.is_file():
            raise InputError(f"model file {path} is missing")
        estimator = XGBRegressor(n_jobs=1)  # see FeatureModel._chunked
        try:
            estimator.load_model(str(path))
        except Exception as exc:
            raise InputError(
                f"model file {path} is not an XGBoost model ({str(exc).splitlines()[0]})"
            ) from None
        return estimator


class LinearModel(FeatureModel):
    """Ridge regression (MLR with a small penalty chosen by efficient leave-one-out CV) on standardised window
    features: the DSM textbooks' linear baseline. Coefficients travel in ``model.json``."""

    kind: ClassVar[str] = "linear"  # also set by the registry (socmap.models.zoo)

    defaults: ClassVar[dict[str, Any]] = {"alphas": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]}

    def allowed_params(self) -> set[str]:
        return {"alphas"}

    def check_values(self, params: dict[str, Any]) -> None:
        alphas = params.get("alphas", [1.0])
        ok = isinstance(alphas, list) and bool(alphas)
        ok = ok and all(isinstance(a, int | float) and not isinstance(a, bool) and a > 0 for a in alphas)
        if not ok:
            raise InputError(f"models.linear.alphas {alphas!r}: expected a list of positive numbers")

    def build(self, seed: int) -> Any:
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        alphas = [float(a) for a in (self.defaults | self.params)["alphas"]]
        return make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))

    def fit(self, data: FitData) -> FitInfo:
        """Fit the scaler and ridge, then keep only their numbers (predictions before and after a save agree)."""
        info = super().fit(data)
        scaler, ridge = self.estimator[0], self.estimator[-1]
        self.estimator = _LinearPredictor(
            scaler.mean_.tolist(),
            scaler.scale_.tolist(),
            np.asarray(ridge.coef_, np.float64).tolist(),
            float(ridge.intercept_),
            float(ridge.alpha_),
        )
        info.parameters = self.n_parameters()
        return info

    def n_parameters(self) -> int:
        return int(self.estimator.coef.size + 1) if isinstance(self.estimator, _LinearPredictor) else 0

    def save_estimator(self, folder: Path) -> str:
        return "model.json"  # the coefficients live in the state (see state())

    def state(self, folder: Path) -> dict[str, Any]:
        out = super().state(folder)
        out["linear"] = self.estimator.to_json()
        return out

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        model = cls(dict(state.get("params", {})), "none")
        model.transform = TargetTransform.from_dict(state["target_transform"])
        model.features = WindowFeatures.from_state(state["features"])
        model.estimator = _LinearPredictor(**state["linear"])
        model.inputs = inputs
        return model


class _LinearPredictor:
    """A fitted ridge model rebuilt from JSON: predict = ((x - mean) / scale) @ coef + intercept."""

    def __init__(
        self, mean: list[float], scale: list[float], coef: list[float], intercept: float, alpha: float
    ) -> None:
        self.mean, self.scale = np.asarray(mean), np.asarray(scale)
        self.coef, self.intercept, self.alpha = np.asarray(coef), float(intercept), float(alpha)
        if not self.mean.size == self.scale.size == self.coef.size:
            raise InputError("linear model: mean, scale and coef differ in length")

    def predict(self, x: FloatArray) -> FloatArray:
        return np.asarray(((x - self.mean) / self.scale) @ self.coef + self.intercept, np.float64)

    def get_params(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "alpha": self.alpha,
        }
