"""Target transforms applied before training; the inverse is applied to every prediction that leaves a model.

``none``: identity. ``log``: log1p, then a z-score of the log values with the TRAINING targets' mean and sd
(SOC is right-skewed; log1p keeps 0 valid; the z-score gives a network unit-scale outputs whatever the unit).
``normalize``: z-score with the TRAINING targets' mean and standard deviation. Parameters are stored with the
model as JSON (a log transform saved before the z-score existed has mean 0, sd 1: plain log1p).

``inverse`` maps any quantile exactly (the transforms are monotone), so a back-transformed mean on the log scale
is the MEDIAN on the original scale. ``inverse_mean`` gives the mean: Duan's (1983) smearing estimate
``E[y] = exp(m + s z) * mean(exp(s * (residual - mean residual))) - 1`` with the factor fitted by
:meth:`fit_smearing` on residuals the model did not train on (e.g. its early-stopping rows), or the lognormal correction
``exp(mu + var / 2)`` for a model that predicts a log-scale variance.
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
]

TransformName = Literal["none", "log", "normalize"]
TRANSFORMS: tuple[str, ...] = ("none", "log", "normalize")


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

    def fit_smearing(self, z_true: NDArray[np.float64], z_pred: NDArray[np.float64]) -> TargetTransform:
        """Duan's smearing factor of a log transform from transformed-scale targets and predictions of rows the
        model did not fit on (no-op for other transforms or without rows).

        The residuals are centred first. Duan's estimate assumes mean-zero residuals (true in-sample for least
        squares); held-out rows, such as a spatial block of early-stopping rows, carry that block's own level
        error. Keeping it would move every prediction by one region's bias instead of correcting the Jensen gap.
        """
        if self.name != "log" or len(z_true) == 0:
            return self
        _, std = self._affine()
        residual = std * (np.asarray(z_true, np.float64) - np.asarray(z_pred, np.float64))
        self.params["smearing"] = float(np.mean(np.exp(residual - residual.mean())))
        return self

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
        when a transformed-scale ``log_variance`` is given, else Duan's smearing factor (1 until fitted);
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
