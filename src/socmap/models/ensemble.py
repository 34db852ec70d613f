"""A blend of several model kinds fitted on the same rows: a model like any other (maps, predicts, reports).

``blend: mean`` averages the members. ``blend: stacking`` weights them by non-negative least squares on
out-of-fold predictions of an inner spatial-block cross-validation of the TRAINING rows only (weights sum to
1), then refits every member on all training rows: the weights never see the rows the blend is tested on.
Quantiles (when every member gives them) are the weighted mean of the members' quantiles.

Saved as ``model.json`` (members, weights, blend) plus one model folder per member (``member_<i>_<kind>/``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import nnls

from socmap.errors import InputError
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

__all__ = ["BLENDS", "EnsembleModel", "EnsembleOptions"]

BLENDS = ("mean", "stacking")
MemberFactory = Callable[[str], SocModel]


@dataclass(frozen=True)
class EnsembleOptions:
    """``models.ensemble`` options: member kinds, blend, inner folds and block size for stacking."""

    members: tuple[str, ...] = ("cnn_lstm", "rf", "xgb")
    blend: str = "stacking"
    inner_folds: int = 5
    block_size_km: float = 10.0

    @classmethod
    def parse(cls, options: dict[str, Any], known: Sequence[str]) -> EnsembleOptions:
        """Validate ``models.ensemble`` options, naming what is allowed."""
        allowed = {"members", "blend", "inner_folds", "block_size_km"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InputError(
                f"models.ensemble option(s) {', '.join(unknown)}: expected among {', '.join(sorted(allowed))}"
            )
        casts: dict[str, Any] = {"members": tuple, "blend": str, "inner_folds": int, "block_size_km": float}
        try:
            out = cls(**{k: casts[k](v) for k, v in options.items()})
        except (TypeError, ValueError) as exc:
            raise InputError(f"models.ensemble: {exc}") from None
        if out.blend not in BLENDS:
            raise InputError(f"models.ensemble.blend {out.blend!r}: expected one of {', '.join(BLENDS)}")
        if len(out.members) < 2:
            raise InputError(
                f"models.ensemble.members {list(out.members)}: expected at least two model kinds"
            )
        bad = [m for m in out.members if m not in known or m == "ensemble"]
        if bad:
            choices = ", ".join(k for k in known if k != "ensemble")
            raise InputError(
                f"models.ensemble.members: {', '.join(bad)} not a model kind; expected among {choices}"
            )
        if out.inner_folds < 2:
            raise InputError(f"models.ensemble.inner_folds {out.inner_folds}: expected at least 2")
        return out


def stacking_weights(predictions: FloatArray, target: FloatArray) -> FloatArray:
    """Non-negative least-squares weights of the columns of ``predictions`` [n, k], normalised to sum 1
    (equal weights if NNLS gives all zeros)."""
    weights, _ = nnls(np.asarray(predictions, np.float64), np.asarray(target, np.float64))
    total = weights.sum()
    return weights / total if total > 0 else np.full(predictions.shape[1], 1.0 / predictions.shape[1])


class EnsembleModel(SocModel):
    """Members of several kinds and their blend weights."""

    kind: ClassVar[str] = "ensemble"  # also set by the registry (socmap.models.zoo)

    def __init__(self, options: EnsembleOptions | None = None, factory: MemberFactory | None = None) -> None:
        self.options = options or EnsembleOptions()
        self.factory = factory
        self.members: list[SocModel] = []
        self.weights: FloatArray = np.empty(0)
        self.oof_r2: dict[str, float] = {}

    def _new(self, kind: str) -> SocModel:
        if self.factory is None:
            raise InputError("ensemble: a loaded ensemble cannot be refitted; train a new one")
        return self.factory(kind)

    def _inner_predictions(self, data: FitData) -> FloatArray:
        """Out-of-fold predictions [n_train, k] of every member over an inner spatial-block CV of the train rows."""
        from socmap.split import SpatialBlockKFold

        if data.coords is None:
            raise InputError("ensemble stacking needs sample coordinates (FitData.coords)")
        train = data.train
        splitter = SpatialBlockKFold(self.options.inner_folds, self.options.block_size_km, seed=data.seed)
        out = np.full((train.size, len(self.options.members)), np.nan)
        for inner_train, inner_test in splitter.split(data.coords[train]):
            for j, kind in enumerate(self.options.members):
                member = self._new(kind)
                member.fit(data.subset(train[inner_train], data.monitor))
                rows = train[inner_test]
                xy = data.xy[rows] if data.xy is not None else None
                out[inner_test, j] = predict_located(member, read_rows(data.windows, rows), xy)[0]
        return out

    def fit(self, data: FitData) -> FitInfo:
        """Weights (stacking: from inner out-of-fold predictions), then every member on all training rows."""
        from socmap.metrics import r2

        self.inputs = data.inputs
        k = len(self.options.members)
        if self.options.blend == "stacking":
            oof = self._inner_predictions(data)
            y = data.target[data.train]
            self.oof_r2 = {kind: r2(y, oof[:, j]) for j, kind in enumerate(self.options.members)}
            self.weights = stacking_weights(oof, y)
        else:
            self.weights = np.full(k, 1.0 / k)
        info = FitInfo()
        self.members = []
        for j, kind in enumerate(self.options.members):
            member = self._new(kind)
            workdir = data.workdir / f"member_{j}_{kind}" if data.workdir is not None else None
            sub = dataclasses.replace(data, workdir=workdir)
            part = member.fit(sub)
            member.model_id = f"{self.model_id}-{kind}" if self.model_id else kind
            info.parameters += part.parameters
            info.epochs_trained = max(info.epochs_trained, part.epochs_trained)
            info.warnings += [f"{kind}: {w}" for w in part.warnings]
            self.members.append(member)
        return info

    def uses_xy(self) -> bool:
        """True when a member uses locations (e.g. regression kriging): then ``xy=`` is passed on."""
        return any(m.uses_xy() for m in self.members)

    def predict(
        self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH, xy: FloatArray | None = None
    ) -> FloatArray:
        """Weighted sum of the members' point predictions."""
        preds = np.stack([predict_located(m, windows, xy, None, batch_size)[0] for m in self.members])
        return np.asarray(self.weights @ preds, np.float64)

    def gives_quantiles(self, levels: Sequence[float]) -> bool:
        return bool(self.members) and all(m.gives_quantiles(levels) for m in self.members)

    def predict_with_quantiles(
        self,
        windows: NDArray[np.float32],
        levels: Sequence[float],
        batch_size: int = PREDICT_BATCH,
        xy: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray | None]:
        pairs = [predict_located(m, windows, xy, levels, batch_size) for m in self.members]
        point = np.asarray(self.weights @ np.stack([p for p, _ in pairs]), np.float64)
        if any(q is None for _, q in pairs):
            return point, None
        quantiles = np.tensordot(self.weights, np.stack([q for _, q in pairs if q is not None]), axes=1)
        return point, np.sort(quantiles, axis=1)

    def predict_quantiles(
        self,
        windows: NDArray[np.float32],
        levels: Sequence[float],
        batch_size: int = PREDICT_BATCH,
        xy: FloatArray | None = None,
    ) -> FloatArray | None:
        return self.predict_with_quantiles(windows, levels, batch_size, xy)[1]

    def for_inference(self) -> SocModel:
        copy = EnsembleModel(self.options)
        copy.__dict__.update(self.__dict__)
        copy.members = [m.for_inference() for m in self.members]
        return copy

    def with_precision(self, precision: str) -> SocModel:
        """Every member in ``precision`` (deep members only change)."""
        copy = EnsembleModel(self.options)
        copy.__dict__.update(self.__dict__)
        copy.members = [m.with_precision(precision) for m in self.members]
        return copy

    def describe(self) -> str:
        parts = ", ".join(f"{m.kind} {w:.2f}" for m, w in zip(self.members, self.weights, strict=True))
        return f"ensemble ({self.options.blend}: {parts})"

    def state(self, folder: Path) -> dict[str, Any]:
        from socmap.models.registry import save_model

        names = []
        for j, member in enumerate(self.members):
            name = f"member_{j}_{member.kind}"
            save_model(member, folder / name)
            names.append(name)
        return {
            "members": names,
            "kinds": [m.kind for m in self.members],
            "weights": [float(w) for w in self.weights],
            "blend": self.options.blend,
            "inner_folds": self.options.inner_folds,
            "block_size_km": self.options.block_size_km,
            "inner_oof_r2": self.oof_r2,
        }

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        from socmap.models.registry import load_model

        names = [str(n) for n in state["members"]]
        inside = [
            re.fullmatch(r"member_\d+_\w+", n) and (folder / n).resolve().is_relative_to(folder.resolve())
            for n in names
        ]
        if not all(inside):
            raise InputError(
                f"model file {folder / 'model.json'}: member folders must lie inside the model folder"
            )
        options = EnsembleOptions(
            tuple(state["kinds"]),
            str(state["blend"]),
            int(state["inner_folds"]),
            float(state["block_size_km"]),
        )
        model = cls(options)
        model.members = [load_model(folder / n, list(inputs.bands)) for n in names]
        model.weights = np.asarray(state["weights"], np.float64)
        model.oof_r2 = {str(k): float(v) for k, v in state.get("inner_oof_r2", {}).items()}
        if model.weights.size != len(model.members):
            raise InputError(
                f"model file {folder / 'model.json'}: {model.weights.size} weights for {len(model.members)} members"
            )
        return model
