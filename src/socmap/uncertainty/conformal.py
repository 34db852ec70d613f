"""Conformal prediction intervals for any socmap model, from out-of-fold residuals of a spatial CV.

Method (normalised split-conformal with a conformal predictive system, Vovk et al. 2017; crepes):

1. Out-of-fold (OOF) predictions ``ŷ`` of a spatial cross-validation give residuals ``r = y - ŷ``; the
   model never saw the sample it is scored on, so ``r`` is an honest sample of the error at new places.
2. A small model of the residual scale (:class:`ScaleModel`) makes the intervals locally adaptive:
   ``|r| ~ β·[1, ŷ, own width, DI]`` (iteratively reweighted ridge least squares on standardised inputs, floored at 10 % of the
   mean |r|), so that ``σ(x)`` is large where errors were large: at high predicted values (soil properties are
   heteroscedastic), where a quantile model's own interval is wide, and far from the training data (large
   dissimilarity index, :mod:`socmap.uncertainty.aoa`). Fewer than :data:`MIN_ADAPTIVE` residuals: σ = 1.
3. The normalised signed residuals ``r / σ`` calibrate a conformal predictive system (``crepes``), whose
   percentiles are stored as *offsets*: the quantile at level ``p`` of a new prediction is
   ``ŷ + σ(x) · offset(p)``. Intervals are asymmetric when the errors are (skewed soil properties), and the
   calibrated median Q0.5 removes a systematic bias of the model.

Nothing is pickled: a :class:`Calibration` is a few numbers in JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from socmap.errors import InputError

__all__ = [
    "COVERAGES",
    "DEFAULT_NOMINAL",
    "MIN_ADAPTIVE",
    "Calibration",
    "ScaleModel",
    "calibrate",
    "conformal_offsets",
    "cross_conformal",
    "level_name",
    "quantile_levels",
]

FloatArray = NDArray[np.float64]
COVERAGES = (0.5, 0.8, 0.9, 0.95)  # the coverages every cv reports
DEFAULT_NOMINAL = 0.9
MIN_ADAPTIVE = 50  # fewer calibration residuals: no scale model (σ = 1, plain split-conformal)
RIDGE = 1.0
SCALE_INPUTS = ("prediction", "width", "di")


def level_name(level: float) -> str:
    """SoilGrids-style name of a quantile level: 0.05 -> ``Q0.05``, 0.5 -> ``Q0.5``."""
    return f"Q{float(level):.4g}"


def quantile_levels(coverages: Sequence[float]) -> tuple[float, ...]:
    """The sorted quantile levels of central intervals at ``coverages`` plus the median."""
    levels = {0.5}
    for c in coverages:
        check_coverage(c)
        levels |= {round((1 - c) / 2, 6), round((1 + c) / 2, 6)}
    return tuple(sorted(levels))


def check_coverage(coverage: float, where: str = "coverage") -> float:
    """``coverage`` if it lies in (0, 1), else a one-line error."""
    if not 0.0 < float(coverage) < 1.0:
        raise InputError(f"{where} {coverage}: expected a coverage between 0 and 1 (e.g. 0.9)")
    return float(coverage)


def _inputs(
    prediction: ArrayLike, width: ArrayLike | None, di: ArrayLike | None
) -> dict[str, FloatArray | None]:
    pred = np.asarray(prediction, np.float64).ravel()
    w = None if width is None else np.asarray(width, np.float64).ravel()
    d = None if di is None else np.asarray(di, np.float64).ravel()
    return {"prediction": pred, "width": w, "di": d}


@dataclass(frozen=True)
class ScaleModel:
    """``σ(x) = clip(β0 + Σ βj (xj - cj) / sj, lp_min, lp_max)``: the residual scale, fitted on OOF residuals.

    Args:
        names: the inputs used, a subset of ``prediction``, ``width`` (a quantile model's own Q95-Q05),
            ``di`` (dissimilarity index); empty: constant σ = 1.
        center, scale: standardisation of each input.
        coef: intercept then one coefficient per input.
        lp_min, lp_max: σ's floor (10 % of the mean |r|, or the smallest fitted value if larger) and its
            largest fitted value (σ never extrapolates beyond it).
    """

    names: tuple[str, ...] = ()
    center: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    coef: tuple[float, ...] = (0.0,)
    lp_min: float = 0.0
    lp_max: float = 0.0

    @classmethod
    def fit(
        cls,
        residuals: ArrayLike,
        prediction: ArrayLike,
        width: ArrayLike | None = None,
        di: ArrayLike | None = None,
    ) -> ScaleModel:
        """Ridge least squares of ``|r|`` on the standardised inputs, reweighted by 1/σ² (σ = 1 with too few
        residuals)."""
        r = np.abs(np.asarray(residuals, np.float64).ravel())
        if r.size < MIN_ADAPTIVE:
            return cls()
        inputs = _inputs(prediction, width, di)
        names, columns = [], []
        for name in SCALE_INPUTS:
            x = inputs[name]
            if x is not None and np.all(np.isfinite(x)) and np.std(x) > 0:
                names.append(name)
                columns.append(x)
        if not names:
            return cls()
        x = np.column_stack(columns)
        center, scale = x.mean(axis=0), x.std(axis=0)
        z = np.column_stack([np.ones(r.size), (x - center) / scale])
        target = r
        penalty = RIDGE * np.eye(z.shape[1])
        penalty[0, 0] = 0.0
        floor = 0.1 * max(float(r.mean()), 1e-12)
        weights = np.ones(r.size)
        for _ in range(3):  # reweighted: the spread of |r| grows with σ, so small-σ rows get more weight
            zw = z * weights[:, None]
            coef = np.linalg.solve(zw.T @ z + penalty, zw.T @ target)
            lp = z @ coef
            weights = 1.0 / np.maximum(lp, floor) ** 2
            weights /= weights.mean()
        return cls(
            tuple(names),
            tuple(float(v) for v in center),
            tuple(float(v) for v in scale),
            tuple(float(v) for v in coef),
            max(float(lp.min()), floor),
            max(float(lp.max()), floor),
        )

    @property
    def needs(self) -> tuple[str, ...]:
        """The inputs :meth:`sigma` needs besides the prediction (``width``, ``di``)."""
        return tuple(n for n in self.names if n != "prediction")

    def sigma(
        self, prediction: ArrayLike, width: ArrayLike | None = None, di: ArrayLike | None = None
    ) -> FloatArray:
        """σ(x) ``[N]`` (> 0); an input the model uses must be given."""
        inputs = _inputs(prediction, width, di)
        pred = inputs["prediction"]
        assert pred is not None
        lp = np.full(pred.size, self.coef[0])
        for j, name in enumerate(self.names):
            x = inputs[name]
            if x is None:
                raise InputError(f"the interval calibration needs {name!r} (it was calibrated with it)")
            lp = lp + self.coef[j + 1] * (x - self.center[j]) / self.scale[j]
        if not self.names:
            return np.ones(pred.size)
        return np.clip(lp, self.lp_min, self.lp_max)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "names": list(self.names),
            "center": list(self.center),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "lp_min": self.lp_min,
            "lp_max": self.lp_max,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScaleModel:
        """Inverse of :meth:`to_json`."""
        names = tuple(str(n) for n in data.get("names", ()))
        bad = [n for n in names if n not in SCALE_INPUTS]
        if bad:
            raise InputError(
                f"calibration scale model: unknown inputs {bad}; expected some of {SCALE_INPUTS}"
            )
        return cls(
            names,
            tuple(float(v) for v in data.get("center", ())),
            tuple(float(v) for v in data.get("scale", ())),
            tuple(float(v) for v in data.get("coef", (0.0,))),
            float(data.get("lp_min", 0.0)),
            float(data.get("lp_max", 0.0)),
        )


def conformal_offsets(normalised: ArrayLike, levels: Sequence[float]) -> dict[float, float]:
    """Percentiles of the conformal predictive system of the normalised residuals ``r / σ`` (crepes,
    without smoothing): level ``p`` -> the ``ceil((n+1) p)``-th smallest for ``p >= 0.5``, the
    ``floor((n+1) p)``-th for ``p < 0.5`` (±inf when n is too small for that level).

    Args:
        normalised: calibration residuals divided by their σ.
        levels: quantile levels in (0, 1).
    """
    from crepes import ConformalPredictiveSystem

    alphas = np.asarray(normalised, np.float64).ravel()
    if alphas.size < 2 or not np.all(np.isfinite(alphas)):
        raise InputError(f"interval calibration: {alphas.size} residuals (finite ones needed, at least 2)")
    cps = ConformalPredictiveSystem().fit(alphas, sigmas=np.ones(alphas.size))
    lower = [100 * p for p in levels if p < 0.5]
    higher = [100 * p for p in levels if p >= 0.5]
    values = cps.predict(
        np.zeros(1),
        sigmas=np.ones(1),
        lower_percentiles=lower or None,
        higher_percentiles=higher or None,
        smoothing=False,
    )
    row = np.asarray(values, np.float64).reshape(-1)
    ordered = [p for p in levels if p < 0.5] + [p for p in levels if p >= 0.5]
    return {float(p): float(v) for p, v in zip(ordered, row, strict=True)}


@dataclass(frozen=True)
class Calibration:
    """A calibrated interval model: quantile at level p = ``ŷ + σ(x) · offsets[p]``.

    Args:
        nominal: the nominal coverage of the mapped interval (``uncertainty.nominal``).
        scale: the residual-scale model.
        offsets: quantile level -> normalised offset.
        n: number of calibration residuals.
        source: how the residuals were obtained (for band descriptions and reports).
    """

    nominal: float
    scale: ScaleModel
    offsets: dict[float, float]
    n: int
    source: str = "out-of-fold residuals of a spatial cross-validation"

    @property
    def interval_levels(self) -> tuple[float, float, float]:
        """(lower, median, upper) levels of the nominal interval, e.g. (0.05, 0.5, 0.95)."""
        return (round((1 - self.nominal) / 2, 6), 0.5, round((1 + self.nominal) / 2, 6))

    def quantiles(
        self,
        prediction: ArrayLike,
        levels: Sequence[float],
        width: ArrayLike | None = None,
        di: ArrayLike | None = None,
    ) -> FloatArray:
        """``[N, len(levels)]`` calibrated quantiles; every level must be one of :attr:`offsets`."""
        missing = [p for p in levels if round(float(p), 6) not in self.offsets]
        if missing:
            raise InputError(f"calibration has no quantile level {missing}; it has {sorted(self.offsets)}")
        pred = np.asarray(prediction, np.float64).ravel()
        sigma = self.scale.sigma(pred, width, di)
        offsets = np.array([self.offsets[round(float(p), 6)] for p in levels])
        return pred[:, None] + sigma[:, None] * offsets[None, :]

    def interval(
        self,
        prediction: ArrayLike,
        coverage: float,
        width: ArrayLike | None = None,
        di: ArrayLike | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """(lower, upper) of the central interval of ``coverage``."""
        lo, hi = round((1 - coverage) / 2, 6), round((1 + coverage) / 2, 6)
        q = self.quantiles(prediction, (lo, hi), width, di)
        return q[:, 0], q[:, 1]

    def describe(self) -> str:
        """One line: the method, σ's inputs and the number of residuals."""
        inputs = ", ".join(self.scale.names) if self.scale.names else "none (constant σ)"
        return (
            f"normalised split-conformal (crepes conformal predictive system) on {self.n} {self.source}; "
            f"residual scale σ from {inputs}"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form (``calibration.json``)."""
        return {
            "method": "normalised split-conformal (conformal predictive system, crepes)",
            "nominal": self.nominal,
            "n": self.n,
            "source": self.source,
            "scale": self.scale.to_json(),
            "offsets": {f"{p:.6g}": v for p, v in sorted(self.offsets.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_json`."""
        try:
            offsets = {round(float(k), 6): float(v) for k, v in dict(data["offsets"]).items()}
            return cls(
                check_coverage(float(data["nominal"]), "calibration nominal"),
                ScaleModel.from_json(data.get("scale", {})),
                offsets,
                int(data.get("n", 0)),
                str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"calibration: invalid calibration.json ({exc})") from None


def calibrate(
    observed: ArrayLike,
    predicted: ArrayLike,
    *,
    width: ArrayLike | None = None,
    di: ArrayLike | None = None,
    nominal: float = DEFAULT_NOMINAL,
    coverages: Sequence[float] = COVERAGES,
    adaptive: bool = True,
    source: str = "out-of-fold residuals of a spatial cross-validation",
) -> Calibration:
    """Fit the residual-scale model and the conformal offsets on OOF predictions (see the module docstring).

    Args:
        observed, predicted: OOF pairs ``[N]``.
        width: a quantile model's own interval width per sample (None: not used).
        di: the cross-validated dissimilarity index per sample (None: not used).
        nominal: the coverage of the mapped interval.
        coverages: further coverages to store offsets for.
        adaptive: False: constant σ (plain split-conformal).
        source: how the residuals were obtained.
    """
    check_coverage(nominal, "uncertainty.nominal")
    y = np.asarray(observed, np.float64).ravel()
    p = np.asarray(predicted, np.float64).ravel()
    if y.shape != p.shape:
        raise InputError(f"calibration: {y.size} observed but {p.size} predicted values")
    r = y - p
    levels = quantile_levels((*coverages, nominal))
    flat = Calibration(nominal, ScaleModel(), conformal_offsets(r, levels), int(y.size), source)
    if not adaptive:
        return flat
    scale = ScaleModel.fit(r, p, width, di)
    sigma = scale.sigma(p, width, di)
    fitted = Calibration(nominal, scale, conformal_offsets(r / sigma, levels), int(y.size), source)
    # keep the residual-scale model only when it narrows the nominal interval on the calibration rows: a
    # scale model unrelated to the errors only fattens the tails of r / σ
    lo, hi = fitted.interval_levels[0], fitted.interval_levels[2]
    adaptive_width = float(np.mean(sigma)) * (fitted.offsets[hi] - fitted.offsets[lo])
    flat_width = flat.offsets[hi] - flat.offsets[lo]
    return fitted if adaptive_width <= flat_width else flat


def cross_conformal(
    observed: ArrayLike,
    predicted: ArrayLike,
    fold: ArrayLike,
    coverages: Sequence[float],
    *,
    width: ArrayLike | None = None,
    di: ArrayLike | None = None,
    adaptive: bool = True,
) -> dict[float, tuple[FloatArray, FloatArray]]:
    """Honest intervals of OOF predictions: each fold's intervals are calibrated on the other folds only.

    Args:
        observed, predicted: OOF pairs ``[N]``.
        fold: the fold of every row.
        coverages: central-interval coverages.
        width, di: optional scale inputs ``[N]`` (see :func:`calibrate`).
        adaptive: see :func:`calibrate`.

    Returns:
        coverage -> (lower ``[N]``, upper ``[N]``).
    """
    y = np.asarray(observed, np.float64).ravel()
    p = np.asarray(predicted, np.float64).ravel()
    f = np.asarray(fold).ravel()
    w = None if width is None else np.asarray(width, np.float64).ravel()
    d = None if di is None else np.asarray(di, np.float64).ravel()
    out = {c: (np.full(y.size, np.nan), np.full(y.size, np.nan)) for c in coverages}
    for k in np.unique(f):
        test, cal = f == k, f != k
        if cal.sum() < 2:
            continue
        calib = calibrate(
            y[cal],
            p[cal],
            width=None if w is None else w[cal],
            di=None if d is None else d[cal],
            coverages=coverages,
            adaptive=adaptive,
        )
        for c in coverages:
            lo, hi = calib.interval(
                p[test], c, None if w is None else w[test], None if d is None else d[test]
            )
            out[c][0][test], out[c][1][test] = lo, hi
    return out
