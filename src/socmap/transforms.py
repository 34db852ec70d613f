"""Target transforms applied before training; the inverse is applied to every prediction that leaves a model.

``none``: identity. ``log``: log1p (SOC is right-skewed; log1p keeps 0 valid). ``normalize``: z-score with the
TRAINING targets' mean and standard deviation. Parameters are stored with the model as JSON.
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
        if self.name == "normalize":
            std = float(np.std(y))
            self.params = {"mean": float(np.mean(y)), "std": std if std > 0 else 1.0}
        return self

    def forward(self, y: NDArray[np.float64]) -> NDArray[np.float64]:
        y = np.asarray(y, dtype=np.float64)
        if self.name == "log":
            return np.log1p(y)
        if self.name == "normalize":
            return (y - self.params["mean"]) / self.params["std"]
        return y.copy()

    def inverse(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        z = np.asarray(z, dtype=np.float64)
        if self.name == "log":
            return np.expm1(z)
        if self.name == "normalize":
            return z * self.params["std"] + self.params["mean"]
        return z.copy()

    def inverse_torch(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "log":
            return torch.expm1(z)
        if self.name == "normalize":
            return z * self.params["std"] + self.params["mean"]
        return z

    def scale_sigma(self, sigma: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """A measurement sd on the original scale expressed on the transformed scale (delta method)."""
        if self.name == "log":
            return np.asarray(sigma) / (1.0 + np.asarray(y))
        if self.name == "normalize":
            return np.asarray(sigma) / self.params["std"]
        return np.asarray(sigma, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetTransform:
        return cls(str(data["name"]), {k: float(v) for k, v in data.get("params", {}).items()})
