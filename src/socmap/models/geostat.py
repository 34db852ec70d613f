"""Kriging model kinds: ordinary kriging (``ok``) and regression kriging of any other kind (``rk``).

Both read sample locations (``FitData.xy`` when fitting, ``xy=`` when predicting: working-grid coordinates,
turned into km by :class:`~socmap.kriging.LocationFrame`), so they set ``needs_xy``; cv, train, predict and
map pass locations to every model through :func:`~socmap.models.base.predict_located`.

- ``ok``: the target itself is kriged (local neighbourhood, fitted variogram): the geostatistical baseline.
- ``rk``: a base model of any kind (``models.rk.base``) plus the kriged base-model residuals. The residuals are
  OUT-OF-FOLD: an inner K-fold over the training rows' locations (one location never spans inner folds) fits
  the base model on the other inner folds and predicts the held-out one, so a forest's near-zero in-sample
  residuals never reach the variogram or the kriging. Only ``FitData.train`` rows are used (in cv: the fold's
  training part), then the base model is refitted on all of them. Prediction = base prediction + kriged
  residual; the interval is Gaussian with the kriging variance of the residual (the residuals are errors of
  the base model, so their kriging variance already is the RK prediction-error variance; adding a base
  model's own interval would count that error twice).

Saved without pickle: variogram, location frame and residual points in ``model.json``; the base model in
``base/`` (its own safe format).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from socmap.errors import InputError
from socmap.kriging import (
    VARIOGRAM_MODELS,
    LocalKriging,
    LocationFrame,
    Variogram,
    fit_variogram,
    merge_duplicates,
)
from socmap.models.base import (
    PREDICT_BATCH,
    FitData,
    FitInfo,
    FloatArray,
    InputSpec,
    SocModel,
    predict_located,
    read_rows,
)

__all__ = ["KrigingOptions", "OrdinaryKrigingModel", "RegressionKrigingModel", "gaussian_quantiles"]

BASE_FOLDER = "base"
NOT_BASES = ("rk", "ok")
MemberFactory = Callable[[str], SocModel]


@dataclass(frozen=True)
class KrigingOptions:
    """``models.rk`` / ``models.ok`` options (``base`` and ``inner_folds`` only for ``rk``)."""

    base: str = "xgb"
    inner_folds: int = 5
    neighbours: int = 32
    variogram_models: tuple[str, ...] = VARIOGRAM_MODELS
    n_bins: int = 20
    max_lag_km: float | None = None

    @classmethod
    def parse(cls, kind: str, options: dict[str, Any], known: Sequence[str]) -> KrigingOptions:
        """Validate ``models.<kind>`` options, naming what is allowed."""
        allowed = {"neighbours", "variogram_models", "n_bins", "max_lag_km"}
        if kind == "rk":
            allowed |= {"base", "inner_folds"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InputError(
                f"models.{kind} option(s) {', '.join(unknown)}: expected among {', '.join(sorted(allowed))}"
            )
        casts: dict[str, Any] = {
            "base": str,
            "inner_folds": int,
            "neighbours": int,
            "variogram_models": lambda v: tuple([v] if isinstance(v, str) else v),
            "n_bins": int,
            "max_lag_km": lambda v: None if v is None else float(v),
        }
        try:
            out = cls(**{k: casts[k](v) for k, v in options.items()})
        except (TypeError, ValueError) as exc:
            raise InputError(f"models.{kind}: {exc}") from None
        bad = [m for m in out.variogram_models if m not in VARIOGRAM_MODELS]
        if bad or not out.variogram_models:
            raise InputError(
                f"models.{kind}.variogram_models {list(out.variogram_models)}: expected among "
                f"{', '.join(VARIOGRAM_MODELS)}"
            )
        if kind == "rk" and (out.base not in known or out.base in NOT_BASES):
            choices = ", ".join(k for k in known if k not in NOT_BASES)
            raise InputError(f"models.rk.base {out.base!r}: expected one of {choices}")
        for name, value, low in (("inner_folds", out.inner_folds, 2), ("neighbours", out.neighbours, 3)):
            if value < low:
                raise InputError(f"models.{kind}.{name} {value}: expected at least {low}")
        if out.n_bins < 5:
            raise InputError(f"models.{kind}.n_bins {out.n_bins}: expected at least 5")
        if out.max_lag_km is not None and out.max_lag_km <= 0:
            raise InputError(f"models.{kind}.max_lag_km {out.max_lag_km}: expected a positive distance")
        return out


def gaussian_quantiles(mean: FloatArray, variance: FloatArray, levels: Sequence[float]) -> FloatArray:
    """``[n, len(levels)]`` quantiles of N(mean, variance)."""
    from scipy.stats import norm

    z = norm.ppf(np.asarray(levels, np.float64))
    return np.asarray(mean[:, None] + np.sqrt(variance)[:, None] * z[None, :], np.float64)


def _training_xy(data: FitData) -> FloatArray:
    if data.xy is None:
        raise InputError("kriging needs sample locations (FitData.xy, x/y in the grid CRS)")
    return np.asarray(data.xy, np.float64)[data.train]


def _check_xy(xy: FloatArray | None, n: int, kind: str) -> FloatArray:
    if xy is None:
        raise InputError(f"model {kind!r} needs locations: pass xy= (x/y in the grid CRS)")
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy) != n:
        raise InputError(f"model {kind!r}: {len(xy)} locations for {n} windows")
    return xy


class _Kriged(SocModel):
    """Shared parts: a location frame, a variogram, kriged points; Gaussian quantiles from the variance."""

    needs_xy = True

    def __init__(self, options: KrigingOptions | None = None) -> None:
        self.options = options or KrigingOptions()
        self.frame: LocationFrame | None = None
        self.variogram: Variogram | None = None
        self.points = np.empty((0, 2))
        self.values = np.empty(0)
        self._kriging: LocalKriging | None = None

    def _fit_kriging(self, data: FitData, values: FloatArray) -> None:
        """Variogram and kriging of ``values`` at the training rows' locations (duplicates averaged)."""
        xy = _training_xy(data)
        self.frame = LocationFrame.for_grid(data.inputs.grid, xy)
        self.points, self.values = merge_duplicates(self.frame.to_km(xy), values)
        self.variogram = fit_variogram(
            self.points,
            self.values,
            self.options.variogram_models,
            self.options.n_bins,
            self.options.max_lag_km,
            data.seed,
        )
        self._kriging = None

    def krige(self, xy: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Kriged value and kriging variance at grid-CRS locations ``xy``."""
        if self.frame is None or self.variogram is None:
            raise InputError(f"model {self.kind!r}: call fit before predict")
        if self._kriging is None:
            self._kriging = LocalKriging(self.points, self.values, self.variogram, self.options.neighbours)
        return self._kriging.predict(self.frame.to_km(xy))

    def gives_quantiles(self, levels: Sequence[float]) -> bool:
        return all(0.0 < q < 1.0 for q in levels)

    def kriging_state(self) -> dict[str, Any]:
        if self.frame is None or self.variogram is None:
            raise InputError(f"model {self.kind!r}: call fit before save")
        return {
            "neighbours": self.options.neighbours,
            "variogram_models": list(self.options.variogram_models),
            "n_bins": self.options.n_bins,
            "max_lag_km": self.options.max_lag_km,
            "frame": self.frame.to_json(),
            "variogram": self.variogram.to_json(),
            "points_km": self.points.tolist(),
            "values": self.values.tolist(),
        }

    def load_kriging(self, state: dict[str, Any]) -> None:
        self.frame = LocationFrame.from_json(state["frame"])
        self.variogram = Variogram.from_json(state["variogram"])
        self.points = np.asarray(state["points_km"], np.float64).reshape(-1, 2)
        self.values = np.asarray(state["values"], np.float64)
        if len(self.points) != len(self.values) or not np.isfinite(self.values).all():
            raise InputError("kriging state: points and values differ in length or are not finite")


class OrdinaryKrigingModel(_Kriged):
    """Ordinary kriging of the target (no covariates): the geostatistical baseline."""

    kind = "ok"

    def fit(self, data: FitData) -> FitInfo:
        """Variogram of the training targets; the kriging system is built at predict time."""
        self.inputs = data.inputs
        self._fit_kriging(data, data.target[data.train])
        return FitInfo(parameters=3 + len(self.variogram.extra if self.variogram else {}))

    def predict(
        self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH, xy: FloatArray | None = None
    ) -> FloatArray:
        return self.krige(_check_xy(xy, len(windows), self.kind))[0]

    def predict_with_quantiles(
        self,
        windows: NDArray[np.float32],
        levels: Sequence[float],
        batch_size: int = PREDICT_BATCH,
        xy: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray | None]:
        mean, var = self.krige(_check_xy(xy, len(windows), self.kind))
        return mean, np.sort(gaussian_quantiles(mean, var, levels), axis=1)

    def predict_quantiles(
        self,
        windows: NDArray[np.float32],
        levels: Sequence[float],
        batch_size: int = PREDICT_BATCH,
        xy: FloatArray | None = None,
    ) -> FloatArray | None:
        return self.predict_with_quantiles(windows, levels, batch_size, xy)[1]

    def describe(self) -> str:
        v = self.variogram
        return f"ok ({v.model} variogram, {self.options.neighbours} neighbours)" if v else "ok"

    def state(self, folder: Path) -> dict[str, Any]:
        return self.kriging_state()

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        options = KrigingOptions(
            neighbours=int(state["neighbours"]),
            variogram_models=tuple(state["variogram_models"]),
            n_bins=int(state["n_bins"]),
            max_lag_km=None if state["max_lag_km"] is None else float(state["max_lag_km"]),
        )
        model = cls(options)
        model.load_kriging(state)
        return model


class RegressionKrigingModel(_Kriged):
    """A base model of any kind plus ordinary kriging of its out-of-fold residuals."""

    kind = "rk"

    def __init__(self, options: KrigingOptions | None = None, factory: MemberFactory | None = None) -> None:
        super().__init__(options)
        self.factory = factory
        self.base: SocModel | None = None
        self.oof_residual_sd = float("nan")

    def _new_base(self) -> SocModel:
        if self.factory is None:
            raise InputError("rk: a loaded regression-kriging model cannot be refitted; train a new one")
        return self.factory(self.options.base)

    def inner_folds(self, data: FitData) -> NDArray[np.int64]:
        """Inner fold (0..k-1) of every training row: locations shuffled with the seed, dealt round-robin,
        so repeated samples of one place never sit on both sides."""
        xy = _training_xy(data)
        _, location = np.unique(np.round(xy, 6), axis=0, return_inverse=True)
        location = location.reshape(-1)
        order = np.random.default_rng(data.seed).permutation(int(location.max()) + 1)
        fold_of_location = np.empty_like(order)
        fold_of_location[order] = np.arange(order.size) % self.options.inner_folds
        return np.asarray(fold_of_location[location], np.int64)

    def out_of_fold(self, data: FitData) -> FloatArray:
        """Out-of-fold base predictions ``[n_train]`` over the inner folds of the training rows only."""
        train = data.train
        folds = self.inner_folds(data)
        xy = np.asarray(data.xy, np.float64)
        oof = np.full(train.size, np.nan)
        for f in range(self.options.inner_folds):
            held = np.flatnonzero(folds == f)
            if held.size == 0:
                continue
            member = self._new_base()
            member.fit(data.subset(train[folds != f]))
            rows = train[held]
            oof[held] = predict_located(member, read_rows(data.windows, rows), xy[rows])[0]
        return oof

    def fit(self, data: FitData) -> FitInfo:
        """Out-of-fold residuals -> variogram and kriging points; then the base model on all training rows."""
        self.inputs = data.inputs
        residuals = data.target[data.train] - self.out_of_fold(data)
        self.oof_residual_sd = float(np.std(residuals))
        self._fit_kriging(data, residuals)
        self.base = self._new_base()
        workdir = data.workdir / BASE_FOLDER if data.workdir is not None else None
        sub = dataclasses.replace(data, workdir=workdir)
        info = self.base.fit(sub)
        self.base.model_id = f"{self.model_id}-base" if self.model_id else self.options.base
        info.parameters += 3
        return info

    def _base(self) -> SocModel:
        if self.base is None:
            raise InputError("model 'rk': call fit before predict")
        return self.base

    def predict(
        self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH, xy: FloatArray | None = None
    ) -> FloatArray:
        xy = _check_xy(xy, len(windows), self.kind)
        point = predict_located(self._base(), windows, xy, None, batch_size)[0]
        return point + self.krige(xy)[0]

    def predict_with_quantiles(
        self,
        windows: NDArray[np.float32],
        levels: Sequence[float],
        batch_size: int = PREDICT_BATCH,
        xy: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray | None]:
        xy = _check_xy(xy, len(windows), self.kind)
        point = predict_located(self._base(), windows, xy, None, batch_size)[0]
        mean, var = self.krige(xy)
        point = point + mean
        return point, np.sort(gaussian_quantiles(point, var, levels), axis=1)

    def predict_quantiles(
        self,
        windows: NDArray[np.float32],
        levels: Sequence[float],
        batch_size: int = PREDICT_BATCH,
        xy: FloatArray | None = None,
    ) -> FloatArray | None:
        return self.predict_with_quantiles(windows, levels, batch_size, xy)[1]

    def for_inference(self) -> SocModel:
        copy = RegressionKrigingModel(self.options, self.factory)
        copy.__dict__.update(self.__dict__)
        copy.base = self._base().for_inference()
        return copy

    def with_precision(self, precision: str) -> SocModel:
        """The base model in ``precision`` (kriging itself stays float64)."""
        copy = RegressionKrigingModel(self.options, self.factory)
        copy.__dict__.update(self.__dict__)
        copy.base = self._base().with_precision(precision)
        return copy

    def describe(self) -> str:
        base = self.base.describe() if self.base is not None else self.options.base
        v = self.variogram
        return f"rk ({base} + {v.model if v else ''} kriging of out-of-fold residuals)"

    def state(self, folder: Path) -> dict[str, Any]:
        from socmap.models.registry import save_model

        save_model(self._base(), folder / BASE_FOLDER)
        return self.kriging_state() | {
            "base": self.options.base,
            "inner_folds": self.options.inner_folds,
            "oof_residual_sd": self.oof_residual_sd,
        }

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        from socmap.models.registry import load_model

        options = KrigingOptions(
            base=str(state["base"]),
            inner_folds=int(state["inner_folds"]),
            neighbours=int(state["neighbours"]),
            variogram_models=tuple(state["variogram_models"]),
            n_bins=int(state["n_bins"]),
            max_lag_km=None if state["max_lag_km"] is None else float(state["max_lag_km"]),
        )
        model = cls(options)
        model.load_kriging(state)
        model.oof_residual_sd = float(state.get("oof_residual_sd", float("nan")))
        model.base = load_model(folder / BASE_FOLDER, list(inputs.bands))
        return model
