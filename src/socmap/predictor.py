"""A trained model with everything needed to use it: weights, architecture, normalisation, target transform.

Saved as ``model.pt`` (a state dict, loaded with ``torch.load(..., weights_only=True)``: no pickled code) and
``model.json`` (architecture, loss head, bands, window geometry, normalisation and target transform), so
predictions leave on the original target scale and a checkpoint from another band set is refused by name.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from socmap._atomic import atomic_file, write_json
from socmap.errors import InputError
from socmap.losses import point_prediction
from socmap.models import build_model
from socmap.normalize import Normalizer
from socmap.transforms import TargetTransform

PREDICT_BATCH = 4096


@dataclass
class Predictor:
    """Model + normalizer + target transform; ``predict`` takes raw windows (NaN allowed)."""

    model: torch.nn.Module
    spec: dict[str, Any]
    normalizer: Normalizer
    transform: TargetTransform

    @property
    def loss_type(self) -> str:
        return str(self.spec["loss_type"])

    @property
    def quantiles(self) -> tuple[float, ...]:
        return tuple(self.spec.get("quantiles", (0.05, 0.5, 0.95)))

    @property
    def bands(self) -> list[str]:
        return list(self.spec["bands"])

    def raw_output(
        self, windows: NDArray[np.float32] | torch.Tensor, batch_size: int = PREDICT_BATCH
    ) -> torch.Tensor:
        """Head outputs on the transformed scale, [N, K], in evaluation mode (no dropout)."""
        self.model.eval()
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                chunk = torch.as_tensor(np.array(windows[start : start + batch_size], dtype=np.float32))
                outputs.append(self.model(self.normalizer.transform_torch(chunk)))
        return torch.cat(outputs) if outputs else torch.empty((0, 1))

    def predict(
        self, windows: NDArray[np.float32] | torch.Tensor, batch_size: int = PREDICT_BATCH
    ) -> NDArray[np.float64]:
        """Point predictions on the original target scale (the inverse transform applied)."""
        out = self.raw_output(windows, batch_size)
        point = point_prediction(out, self.loss_type, self.quantiles).double().numpy()
        return self.transform.inverse(point)

    def predict_intervals(
        self, windows: NDArray[np.float32] | torch.Tensor, batch_size: int = PREDICT_BATCH
    ) -> dict[str, NDArray[np.float64]] | None:
        """Q05/Q95 (original scale) from a quantile or Gaussian head; None for point-only heads.

        Monotone inverse transforms map quantiles exactly, so intervals are computed on the transformed scale.
        """
        out = self.raw_output(windows, batch_size).double()
        if self.loss_type == "quantile":
            q = sorted(self.quantiles)
            values = out.sort(dim=1).values.numpy()
            return {f"q{round(100 * p):02d}": self.transform.inverse(values[:, i]) for i, p in enumerate(q)}
        if self.loss_type == "gaussian_nll":
            mean, sd = out[:, 0].numpy(), np.exp(0.5 * out[:, 1].clamp(-10, 10).numpy())
            return {
                "q05": self.transform.inverse(mean - 1.6448536 * sd),
                "q50": self.transform.inverse(mean),
                "q95": self.transform.inverse(mean + 1.6448536 * sd),
            }
        return None


def save_predictor(folder: str | Path, predictor: Predictor) -> None:
    """Write ``model.pt`` and ``model.json`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in predictor.model.state_dict().items()}
    with atomic_file(folder / "model.pt") as tmp:
        torch.save(state, tmp)
    spec = dict(predictor.spec)
    spec["normalizer"] = predictor.normalizer.to_dict()
    spec["target_transform"] = predictor.transform.to_dict()
    write_json(folder / "model.json", spec)


def load_predictor(folder: str | Path, expected_bands: list[str] | None = None) -> Predictor:
    """Load ``model.pt`` + ``model.json`` from a run folder; refuses code-carrying pickles and band mismatches."""
    folder = Path(folder)
    spec_path, weights_path = folder / "model.json", folder / "model.pt"
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise InputError(f"model folder {folder}: {path.name} is missing (is it a socmap run folder?)")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(
            f"model file {spec_path} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if expected_bands is not None and list(spec["bands"]) != list(expected_bands):
        raise InputError(
            f"model {folder} was trained on bands {spec['bands']}, but the data have {list(expected_bands)}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"model file {weights_path} holds more than weights (e.g. pickled code) and was refused "
            "(weights_only=True); load only model files written by socmap"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(
            f"model file {weights_path} is truncated or corrupt: {str(exc).splitlines()[0]}"
        ) from None
    model = build_model(spec["model"]["name"], **spec["model"]["kwargs"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"model file {weights_path} does not fit model.json: {str(exc).splitlines()[0]}"
        ) from None
    model.eval()
    return Predictor(
        model,
        spec,
        Normalizer.from_dict(spec["normalizer"]),
        TargetTransform.from_dict(spec["target_transform"]),
    )


def member_dirs(run_dir: str | Path) -> list[Path]:
    """Every run's model folder (``runs/run_<i>``, by i); a folder without runs is its own single model."""
    run_dir = Path(run_dir)
    runs = [p for p in run_dir.glob("runs/run_*") if p.name[4:].isdigit() and (p / "model.pt").is_file()]
    return sorted(runs, key=lambda p: int(p.name[4:])) or [run_dir]


def load_ensemble(run_dir: str | Path, expected_bands: list[str] | None = None) -> list[Predictor]:
    """Every run's model of a run folder (see :func:`member_dirs`)."""
    return [load_predictor(f, expected_bands) for f in member_dirs(run_dir)]


def predict_table(
    predictors: list[Predictor], windows: NDArray[np.float32]
) -> dict[str, NDArray[np.float64]]:
    """Ensemble prediction (mean of the models) and its spread, on the original scale."""
    preds = np.stack([p.predict(windows) for p in predictors])
    out = {"predicted": preds.mean(axis=0)}
    if len(predictors) > 1:
        out["ensemble_std"] = preds.std(axis=0, ddof=1)
    return out
