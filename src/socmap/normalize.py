"""Per-band (and per-step for time-varying bands) standardisation fitted on the TRAINING windows only.

Saved as JSON beside the model and applied identically at training, validation and mapping time. NaN
(nodata, gaps) becomes 0 after standardisation, i.e. the training mean of its band and step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from socmap._atomic import write_json
from socmap.errors import InputError

__all__ = [
    "CHUNK",
    "Normalizer",
]

CHUNK = 4096


@dataclass
class Normalizer:
    """mean/std of shape [C, T]; static bands share one value across steps."""

    bands: list[str]
    static_bands: list[str]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]

    @classmethod
    def fit(
        cls,
        windows: NDArray[np.float32],
        indices: NDArray[np.int64],
        bands: list[str],
        static_bands: list[str],
    ) -> Normalizer:
        """Fit on ``windows[indices]`` (the training samples), in chunks, ignoring NaN."""
        if indices.size == 0:
            raise InputError("cannot fit normalisation on an empty training set")
        _, c, _, _, t = windows.shape
        total = np.zeros((c, t))
        total_sq = np.zeros((c, t))
        count = np.zeros((c, t))
        for start in range(0, indices.size, CHUNK):
            chunk = np.asarray(windows[np.sort(indices[start : start + CHUNK])], dtype=np.float64)
            finite = np.isfinite(chunk)
            values = np.where(finite, chunk, 0.0)
            total += values.sum(axis=(0, 2, 3))
            total_sq += (values**2).sum(axis=(0, 2, 3))
            count += finite.sum(axis=(0, 2, 3))
        for ch, band in enumerate(bands):  # static bands: pool all steps
            if band in static_bands:
                total[ch], total_sq[ch], count[ch] = total[ch].sum(), total_sq[ch].sum(), count[ch].sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            var = np.maximum(total_sq / count - mean**2, 0.0)
        mean = np.where(count > 0, mean, 0.0)
        std = np.sqrt(np.where(count > 1, var, 1.0))
        std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)  # constant band: leave unscaled
        return cls(list(bands), list(static_bands), mean, std)

    def transform(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Standardise [N, C, H, W, T] windows; NaN -> 0 (the training mean)."""
        mean = self.mean[None, :, None, None, :].astype(np.float32)
        std = self.std[None, :, None, None, :].astype(np.float32)
        out = (np.asarray(x, dtype=np.float32) - mean) / std
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    def transform_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The same in torch (mapping and training batches)."""
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)[None, :, None, None, :]
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)[None, :, None, None, :]
        return torch.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bands": self.bands,
            "static_bands": self.static_bands,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "fitted_on": "training samples only",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        return cls(
            list(data["bands"]), list(data["static_bands"]), np.asarray(data["mean"]), np.asarray(data["std"])
        )

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
