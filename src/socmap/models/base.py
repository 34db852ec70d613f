"""The one interface every socmap model implements, deep or tree, and the typed records it exchanges.

A model reads raw window stacks ``[N, C, H, W, T]`` (float32, NaN = nodata) and predicts in the target's
original unit: it owns its own input handling (normalisation, hand-made features) and the target transform,
so ``train``, ``cv``, ``predict``, ``map`` and ``report`` never need to know which kind of model they hold.

- :class:`InputSpec`: what the model reads (bands, window geometry, time labels, grid, target); checked by
  name when the model is applied to other data.
- :class:`FitData`: one fit's inputs: all windows and targets plus the row indices to train on and, for
  models that early-stop, the rows to monitor (never test rows).
- :class:`FitInfo`: what a fit reports (epochs, best epoch, parameter count, warnings).
- :class:`SocModel`: ``fit``, ``predict``, ``predict_quantiles``, ``save``/``load``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from socmap.errors import InputError

__all__ = [
    "PRECISIONS",
    "PREDICT_BATCH",
    "FitData",
    "FitInfo",
    "InputSpec",
    "MemberFit",
    "SocModel",
    "TargetInfo",
    "check_precision",
    "predict_located",
]

PREDICT_BATCH = 4096
PRECISIONS = ("fp32", "bf16")  # map.precision / --precision: deep-model inference


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else an error naming them."""
    if precision not in PRECISIONS:
        raise InputError(f"map.precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def precision_note(precision: str) -> str | None:
    """A warning when ``bf16`` is asked on a CPU without native bf16 instructions (AVX512-BF16 or AMX): torch
    then emulates bf16 and deep-model inference is slower than in fp32, not faster."""
    if precision != "bf16":
        return None
    import torch

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if native:
        return None
    return (
        "map.precision bf16: this CPU has no native bf16 instructions (AVX512-BF16 or AMX); torch emulates "
        "bf16 and deep models run slower than in fp32 (use fp32 here)"
    )


FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TargetInfo:
    """The predicted soil property: its column name in the sample table and its unit after scaling."""

    column: str
    unit: str

    def to_json(self) -> dict[str, str]:
        """JSON form (``model.json``, ``meta.json``)."""
        return {"column": self.column, "unit": self.unit}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetInfo:
        """Inverse of :meth:`to_json`."""
        return cls(str(data.get("column", "target")), str(data.get("unit", "unknown")))


@dataclass(frozen=True)
class InputSpec:
    """What a model reads: band names (in order), window geometry, time labels, working grid, target."""

    bands: tuple[str, ...]
    static_bands: tuple[str, ...]
    window_size: int
    time_steps: int
    time_labels: tuple[str, ...]
    grid: dict[str, Any]
    target: TargetInfo
    categorical: tuple[str, ...] = ()  # bands holding class codes (covariates.categorical)

    @property
    def window_shape(self) -> tuple[int, int, int, int]:
        """(C, H, W, T) of one window."""
        return (len(self.bands), self.window_size, self.window_size, self.time_steps)

    @property
    def static_channels(self) -> tuple[int, ...]:
        """Channel indices of the static bands."""
        return tuple(self.bands.index(b) for b in self.static_bands)

    @property
    def categorical_channels(self) -> tuple[int, ...]:
        """Channel indices of the categorical bands."""
        return tuple(self.bands.index(b) for b in self.categorical)

    def check_bands(self, bands: Sequence[str], where: str) -> None:
        """Refuse data whose bands differ (by name or order) from the model's."""
        if list(bands) != list(self.bands):
            raise InputError(
                f"model {where} was trained on bands {list(self.bands)}, but the data have {list(bands)}"
            )

    def check_windows(self, shape: Sequence[int], where: str) -> None:
        """Refuse windows of another geometry than the model's ``[N, C, H, W, T]``."""
        if tuple(int(v) for v in shape[1:]) != self.window_shape:
            raise InputError(
                f"model {where} expects {self.window_size}x{self.window_size} windows of {self.time_steps} "
                f"steps and {len(self.bands)} bands, the data have {list(shape[1:])}; set windows.size / "
                "windows.time_steps"
            )

    def to_json(self) -> dict[str, Any]:
        """JSON form, flat (the keys ``model.json`` has always had)."""
        return {
            "bands": list(self.bands),
            "static_bands": list(self.static_bands),
            "window_size": self.window_size,
            "time_steps": self.time_steps,
            "time_labels": list(self.time_labels),
            "grid": self.grid,
            "target": self.target.to_json(),
        } | ({"categorical": list(self.categorical)} if self.categorical else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_json`."""
        return cls(
            bands=tuple(data["bands"]),
            static_bands=tuple(data.get("static_bands", ())),
            window_size=int(data["window_size"]),
            time_steps=int(data["time_steps"]),
            time_labels=tuple(str(t) for t in data.get("time_labels", ())),
            grid=dict(data.get("grid", {})),
            target=TargetInfo.from_json(data.get("target", {})),
            categorical=tuple(str(b) for b in data.get("categorical", ())),
        )


@dataclass
class FitData:
    """One fit's inputs. ``windows``/``target`` hold every prepared sample (a memory map is fine);
    ``train`` are the rows to fit on and ``monitor`` the rows an early-stopping model may watch (empty: none).
    Test rows are in neither.

    Args:
        windows: ``[N, C, H, W, T]`` raw windows, NaN = nodata.
        target: ``[N]`` targets in the original unit.
        train: rows to fit on.
        monitor: rows for early stopping / run selection inside the fit (may be empty).
        inputs: the data's :class:`InputSpec`.
        coords: ``[N, 2]`` lon/lat degrees (for models that split their training part spatially).
        sigma: optional ``[N]`` per-sample measurement standard deviation (original unit).
        seed: seed of everything random in the fit.
        workdir: folder for checkpoints (resume) or ``None``.
        on_epoch: called after every epoch of an iterative model with (epoch, history row).
        stop_after_epoch: interrupt an iterative model after that epoch, as a crash would (tests of resume).
        xy: ``[N, 2]`` sample locations in the working grid's CRS (pixel-centre convention of the grid), for
            models that use locations (kriging: ``needs_xy``).
    """

    windows: NDArray[np.float32]
    target: FloatArray
    train: IntArray
    monitor: IntArray
    inputs: InputSpec
    coords: FloatArray | None = None
    sigma: FloatArray | None = None
    seed: int = 0
    workdir: Path | None = None
    on_epoch: EpochCallback | None = None
    stop_after_epoch: int | None = None
    xy: FloatArray | None = None

    def subset(self, train: IntArray, monitor: IntArray | None = None) -> FitData:
        """The same data with other training / monitoring rows (used by stacking's inner folds)."""
        empty = np.empty(0, np.int64)
        return FitData(
            self.windows,
            self.target,
            np.asarray(train, np.int64),
            np.asarray(monitor if monitor is not None else empty, np.int64),
            self.inputs,
            self.coords,
            self.sigma,
            self.seed,
            None,
            None,
            xy=self.xy,
        )


@dataclass
class FitInfo:
    """What a fit reports (stored in the run's metrics)."""

    parameters: int = 0
    epochs_trained: int = 0
    best_epoch: int = -1
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    schedule: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The scalar fields (the history goes to ``history.csv``)."""
        out: dict[str, Any] = {
            "parameters": self.parameters,
            "epochs_trained": self.epochs_trained,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "warnings": list(self.warnings),
        }
        return out | ({"schedule": dict(self.schedule)} if self.schedule else {})


@runtime_checkable
class MemberFit(Protocol):
    """A model whose fit is a set of independent members (a deep model's seed ensemble): each member can be
    fitted as its own task, in any process, and the fit joined from them afterwards (cv's finer unit of work,
    which keeps every worker busy; the joined fit equals :meth:`SocModel.fit`'s)."""

    def member_count(self, n_train: int) -> int:
        """Members of a fit on ``n_train`` training rows (1: the fit is one unit of work)."""
        ...

    def fit_member(self, data: FitData, index: int) -> Path:
        """Fit member ``index`` and write it under ``data.workdir``; returns its file."""
        ...

    def fit_from_members(self, data: FitData) -> FitInfo:
        """The fit, from the members :meth:`fit_member` wrote for every index."""
        ...


def read_rows(windows: NDArray[np.float32], idx: IntArray) -> NDArray[np.float32]:
    """``windows[idx]`` as an in-memory array, read in sorted order (fast on a memory map), in ``idx`` order."""
    idx = np.asarray(idx, np.int64)
    order = np.argsort(idx, kind="stable")
    out = np.empty((idx.size, *windows.shape[1:]), dtype=np.float32)
    out[order] = np.asarray(windows[idx[order]], dtype=np.float32)
    return out


class SocModel(ABC):
    """A soil-property model: fit on window stacks, predict in the original unit, save without pickle.

    Subclasses set ``kind`` (the registry name) and implement :meth:`fit`, :meth:`predict`, :meth:`state`
    and :meth:`from_state`; models with prediction intervals also override :meth:`gives_quantiles` and
    :meth:`predict_quantiles`. ``state`` returns JSON-serialisable data and writes any binary files into the
    model folder (never a pickle); :func:`socmap.models.save_model` writes ``model.json`` around it.
    """

    kind: ClassVar[str] = ""
    needs_xy: ClassVar[bool] = False  # predict methods take ``xy=`` (grid-CRS locations, [N, 2])
    inputs: InputSpec | None = None
    model_id: str = ""

    @abstractmethod
    def fit(self, data: FitData) -> FitInfo:
        """Fit on ``data.train`` (monitoring ``data.monitor`` if the model early-stops)."""

    @abstractmethod
    def predict(self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH) -> FloatArray:
        """Point predictions ``[N]`` in the original unit for raw windows ``[N, C, H, W, T]``."""

    def gives_quantiles(self, levels: Sequence[float]) -> bool:
        """Whether :meth:`predict_quantiles` gives every level in ``levels`` (False: point predictions only)."""
        return False

    def predict_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> FloatArray | None:
        """``[N, len(levels)]`` quantiles in the original unit (sorted per row), or None without intervals."""
        return None

    def predict_with_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> tuple[FloatArray, FloatArray | None]:
        """Point predictions and quantiles in one call (models override it to share one pass)."""
        point = self.predict(windows, batch_size)
        quantiles = (
            self.predict_quantiles(windows, levels, batch_size) if self.gives_quantiles(levels) else None
        )
        return point, quantiles

    def uses_xy(self) -> bool:
        """Whether this model's predict methods take ``xy=`` (a wrapper asks its members)."""
        return self.needs_xy

    def for_inference(self) -> SocModel:
        """A copy tuned for bulk prediction in one thread (mapping); by default the model itself."""
        return self

    def with_precision(self, precision: str) -> SocModel:
        """The model predicting in ``precision`` (:data:`PRECISIONS`): deep models run their network under
        bf16 autocast with ``bf16``; every other kind ignores it (the model itself is returned)."""
        check_precision(precision)
        return self

    def describe(self) -> str:
        """One line for logs and reports."""
        return self.kind

    @abstractmethod
    def state(self, folder: Path) -> dict[str, Any]:
        """Write binary parts into ``folder`` (atomically) and return the JSON part of the model."""

    @classmethod
    @abstractmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        """Rebuild a model saved by :meth:`state` (refusing anything that could execute code)."""

    def require_inputs(self) -> InputSpec:
        """The fitted model's :class:`InputSpec` (an error before ``fit``)."""
        if self.inputs is None:
            raise InputError(f"model {self.kind!r}: call fit before predict or save")
        return self.inputs


def predict_located(
    model: SocModel,
    windows: NDArray[np.float32],
    xy: FloatArray | None,
    levels: Sequence[float] | None = None,
    batch_size: int = PREDICT_BATCH,
) -> tuple[FloatArray, FloatArray | None]:
    """Point predictions (and quantiles at ``levels`` when given and the model has them) of ``windows`` at
    grid-CRS locations ``xy`` [N, 2]: the locations go only to models that use them (:meth:`SocModel.uses_xy`),
    so every caller (cv, train, predict, map) can pass them and models without locations are unchanged."""
    kwargs: dict[str, Any] = {}
    if model.uses_xy():
        if xy is None:
            raise InputError(f"model {model.kind!r} needs sample locations (x/y in the grid CRS)")
        kwargs["xy"] = np.asarray(xy, np.float64).reshape(-1, 2)
    if levels is None:
        return np.asarray(model.predict(windows, batch_size, **kwargs), np.float64), None
    return model.predict_with_quantiles(windows, levels, batch_size, **kwargs)
