"""Target transforms applied before training; the inverse is applied to every prediction that leaves a model.

``none``: identity. ``log``: log1p, then a z-score of the log values with the TRAINING targets' mean and sd
(SOC is right-skewed; log1p keeps 0 valid; the z-score gives a network unit-scale outputs whatever the unit).
``normalize``: z-score with the TRAINING targets' mean and standard deviation. Parameters are stored with the
model as JSON (a log transform saved before the z-score existed has mean 0, sd 1: plain log1p).

``inverse`` maps any quantile exactly (the transforms are monotone), so a back-transformed mean on the log scale
is the MEDIAN on the original scale. ``inverse_mean`` gives the mean: ``E[y] = exp(m + s z) * factor - 1``
with the factor fitted by :meth:`fit_smearing` on rows the model did not train on (e.g. its early-stopping
rows), or the lognormal correction ``exp(mu + var / 2)`` for a model that predicts a log-scale variance.

The factor is Snowdon's (1991) ratio estimator on level-centred residuals (see :func:`ratio_smearing`), not
Duan's (1983) ``mean(exp(residual))``: Duan's assumes the residuals are independent of the prediction, which
a noisy network breaks (its own error widens the log predictions and the residuals alike, so it is counted
twice): on a log-normal target with 400 training windows Duan's factor over-predicted the mean of new windows
by 22 % (one network) and 9 % (five), the ratio by 5 % and 0 % (``benchmarks/bench_backtransform.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from socmap.errors import InputError

__all__ = [
    "TargetTransform",
    "ratio_smearing",
]

TransformName = Literal["none", "log", "normalize"]
TRANSFORMS: tuple[str, ...] = ("none", "log", "normalize")


def ratio_smearing(log_true: NDArray[np.float64], log_pred: NDArray[np.float64]) -> float:
    """The factor ``S`` that makes ``mean(exp(log_pred) * S)`` equal the observed ``mean(exp(log_true))`` of
    held-out rows once their mean log residual is removed (Snowdon's ratio estimator, level-centred).

    Why centred: held-out rows such as a spatial block of early-stopping rows carry that block's own level
    error; keeping it would move every prediction by one region's bias instead of correcting the Jensen gap.
    Why a ratio: it needs no assumption on how the residuals relate to the predictions, so a noisy model's
    error (in the predictions and the residuals at once) is not counted twice as in Duan's estimate.
    """
    log_true, log_pred = np.asarray(log_true, np.float64), np.asarray(log_pred, np.float64)
    if len(log_true) == 0:
        return 1.0
    residual = log_true - log_pred
    weight = np.exp(log_pred - log_pred.max())  # exp(log_pred) up to a constant that cancels
    return float(np.sum(weight * np.exp(residual - residual.mean())) / np.sum(weight))


@dataclass
class TargetTransform:
    """A fitted target transform (``fit`` on training targets only)."""

    name: str = "none"
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in TRANSFORMS:
            raise InputError(f"target_transform {self.name!r}: expected one of {', '.join(TRANSFORMS)}")

    def fit(self, y: NDArray[np.float64]) -> TargetTransform:
        y = np.asarray(y, dtype=np.float64)
        if self.name == "log" and np.nanmin(y) <= -1:
            raise InputError("target_transform log: targets must be > -1 (log1p)")
        if self.name in ("normalize", "log"):
            values = np.log1p(y) if self.name == "log" else y
            std = float(np.std(values))
            self.params = {"mean": float(np.mean(values)), "std": std if std > 0 else 1.0}
        return self

    def _affine(self) -> tuple[float, float]:
        return self.params.get("mean", 0.0), self.params.get("std", 1.0)

    def smearing_factor(self, z_true: NDArray[np.float64], z_pred: NDArray[np.float64]) -> float:
        """The mean back-transform's factor (:func:`ratio_smearing`) from transformed-scale targets and
        predictions of rows the model did not fit on; 1 for other transforms or without rows."""
        if self.name != "log" or len(z_true) == 0:
            return 1.0
        _, std = self._affine()
        return ratio_smearing(std * np.asarray(z_true, np.float64), std * np.asarray(z_pred, np.float64))

    def fit_smearing(self, z_true: NDArray[np.float64], z_pred: NDArray[np.float64]) -> TargetTransform:
        """Set the mean back-transform's factor of a log transform (:meth:`smearing_factor`; no-op for
        other transforms or without rows)."""
        if self.name == "log" and len(z_true):
            self.params["smearing"] = self.smearing_factor(z_true, z_pred)
        return self

    @property
    def log_scale(self) -> float:
        """The sd that turns a transformed-scale value of a log transform into log1p units."""
        return self._affine()[1]

    def forward(self, y: NDArray[np.float64]) -> NDArray[np.float64]:
        y = np.asarray(y, dtype=np.float64)
        if self.name == "log":
            mean, std = self._affine()
            return (np.log1p(y) - mean) / std
        if self.name == "normalize":
            return (y - self.params["mean"]) / self.params["std"]
        return y.copy()

    def inverse(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        z = np.asarray(z, dtype=np.float64)
        if self.name == "log":
            mean, std = self._affine()
            return np.expm1(z * std + mean)
        if self.name == "normalize":
            return z * self.params["std"] + self.params["mean"]
        return z.copy()

    def inverse_mean(
        self, z: NDArray[np.float64], log_variance: NDArray[np.float64] | None = None
    ) -> NDArray[np.float64]:
        """The original-scale MEAN of a transformed-scale prediction: for ``log``, the lognormal correction
        when a transformed-scale ``log_variance`` is given, else the fitted factor (1 until fitted);
        other transforms: :meth:`inverse`."""
        if self.name != "log":
            return self.inverse(z)
        mean, std = self._affine()
        log_y = np.asarray(z, np.float64) * std + mean
        if log_variance is not None:
            return np.exp(log_y + 0.5 * std**2 * np.exp(np.asarray(log_variance, np.float64))) - 1.0
        return np.exp(log_y) * self.params.get("smearing", 1.0) - 1.0

    def inverse_torch(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "log":
            mean, std = self._affine()
            return torch.expm1(z * std + mean)
        if self.name == "normalize":
            return z * self.params["std"] + self.params["mean"]
        return z

    def scale_sigma(self, sigma: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """A measurement sd on the original scale expressed on the transformed scale (delta method)."""
        if self.name == "log":
            return np.asarray(sigma) / (1.0 + np.asarray(y)) / self._affine()[1]
        if self.name == "normalize":
            return np.asarray(sigma) / self.params["std"]
        return np.asarray(sigma, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetTransform:
        return cls(str(data["name"]), {k: float(v) for k, v in data.get("params", {}).items()})
