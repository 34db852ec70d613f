"""How the members' predictions become the four bands: prediction, Q05, Q95, std (the uncertainty method).

Band 1 is always the mean of the members' point predictions (:meth:`SocModel.predict`: the conditional mean
of a forest or a Gaussian head, the median of a quantile head). Bands 2-4 come from the first method that
applies:

- ``model_intervals`` (every member gives Q05/Q50/Q95, :meth:`SocModel.gives_quantiles`): Q05 and Q95 are the
  members' own quantiles averaged across members; std = sqrt(mean member variance + variance of member
  predictions), with a member's sd = (Q95 - Q05) / (2 x 1.645);
- ``ensemble_spread`` (>= 2 members): the 5 % / 95 % quantiles (linear interpolation) and the standard
  deviation (ddof=1) of the members' point predictions: the spread of runs, not a prediction interval;
- ``none`` (one model without intervals): bands 2-4 are nodata, and their descriptions say so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from socmap.errors import InputError
from socmap.models import SocModel, model_entry
from socmap.models.base import FloatArray

__all__ = [
    "BAND_NAMES",
    "ENSEMBLE_SPREAD",
    "LEVELS",
    "METHODS",
    "MODEL_INTERVALS",
    "NO_UNCERTAINTY",
    "Z95",
    "band_descriptions",
    "combine",
    "interval_source",
    "model_kinds",
    "uncertainty_method",
]

BAND_NAMES = ("prediction", "q05", "q95", "std")
LEVELS = (0.05, 0.5, 0.95)  # the quantiles asked of every member (Q50 is asked so that heads are complete)
Z95 = 1.6448536269514722  # standard normal 95 % quantile
MODEL_INTERVALS, ENSEMBLE_SPREAD, NO_UNCERTAINTY = "model_intervals", "ensemble_spread", "none"
METHODS = (MODEL_INTERVALS, ENSEMBLE_SPREAD, NO_UNCERTAINTY)


def uncertainty_method(members: Sequence[SocModel]) -> str:
    """``model_intervals``, ``ensemble_spread`` or ``none`` (see the module docstring).

    Args:
        members: the run's models.
    """
    if members and all(m.gives_quantiles(LEVELS) for m in members):
        return MODEL_INTERVALS
    return ENSEMBLE_SPREAD if len(members) >= 2 else NO_UNCERTAINTY


def combine(points: Sequence[FloatArray], quantiles: Sequence[FloatArray | None], method: str) -> FloatArray:
    """[4, N] float64 bands from the members' point predictions ``[N]`` and quantiles ``[N, 3]`` (``LEVELS``).

    Args:
        points: every member's point predictions.
        quantiles: every member's quantiles (only read with ``model_intervals``).
        method: one of :data:`METHODS`.
    """
    pred = np.stack(points)
    out = np.full((4, pred.shape[1]), np.nan)
    out[0] = pred.mean(axis=0)
    if method == MODEL_INTERVALS:
        if any(q is None for q in quantiles):
            raise InputError("a model promised quantiles (gives_quantiles) but predicted none")
        q = np.stack([q for q in quantiles if q is not None])  # [members, N, 3]
        lo, hi = q[:, :, 0], q[:, :, 2]
        out[1], out[2] = lo.mean(axis=0), hi.mean(axis=0)
        out[3] = np.sqrt((((hi - lo) / (2 * Z95)) ** 2).mean(axis=0) + pred.var(axis=0))
    elif method == ENSEMBLE_SPREAD:
        out[1], out[2] = np.quantile(pred, [0.05, 0.95], axis=0)
        out[3] = pred.std(axis=0, ddof=1)
    return out


def _members_of(model: SocModel) -> list[SocModel]:
    """The sub-models of a blend (a model with a ``members`` list of models), else none."""
    members = getattr(model, "members", None)
    return (
        list(members) if isinstance(members, list) and all(isinstance(m, SocModel) for m in members) else []
    )


def _kind_label(model: SocModel) -> str:
    inner = _members_of(model)
    return f"{model.kind} of {'+'.join(m.kind for m in inner)}" if inner else model.kind


def model_kinds(members: Sequence[SocModel]) -> str:
    """The distinct model kinds of the members, e.g. ``cnn_lstm`` or ``ensemble of rf+linear``.

    Args:
        members: the run's models.
    """
    return ", ".join(dict.fromkeys(_kind_label(m) for m in members))


def interval_source(model: SocModel) -> str:
    """Where a model's quantiles come from, e.g. ``cnn_lstm quantile head`` or ``qrf quantile regression
    forest quantiles`` (from its loss head, its blend members or its kind's registry summary).

    Args:
        model: a model that gives quantiles.
    """
    loss = getattr(model, "loss_type", None)
    if loss in {"quantile", "gaussian_nll"}:
        return f"{model.kind} {loss} head"
    inner = _members_of(model)
    if inner:
        sources = "; ".join(dict.fromkeys(interval_source(m) for m in inner))
        return f"{model.kind}: weighted mean of its members' quantiles ({sources})"
    try:
        summary = re.sub(r"\s*\([^)]*\)", "", model_entry(model.kind).summary).strip()
    except InputError:
        summary = "model"
    return f"{model.kind} {summary} quantiles"


def band_descriptions(
    method: str, members: Sequence[SocModel], unit: str, target: str | None = None
) -> tuple[str, str, str, str]:
    """What each band holds and exactly how it was produced (GDAL band descriptions).

    Args:
        method: one of :data:`METHODS`.
        members: the run's models (their number and kinds are named).
        unit: the target's unit.
        target: the predicted property's name (None: the first member's target column).
    """
    n = len(members)
    models, kinds = f"{n} model{'s' if n > 1 else ''}", model_kinds(members)
    whose = f"{models}'" if n > 1 else f"{models}'s"  # 2 models' / 1 model's
    if target is None:
        target = members[0].require_inputs().target.column if members else "the target"
    pred = f"prediction of {target} ({unit}): mean of {whose} point predictions ({kinds})"
    if method == MODEL_INTERVALS:
        sources = "; ".join(dict.fromkeys(interval_source(m) for m in members))

        def own(level: str) -> str:
            if n == 1:
                return f"the model's own {level} quantile ({sources})"
            return f"the {models}' own {level} quantiles ({sources}), averaged"

        return (
            pred,
            f"Q05 ({unit}): {own('5%')}",
            f"Q95 ({unit}): {own('95%')}",
            f"std ({unit}): sqrt(mean member variance + variance of member predictions), member sd = "
            "(Q95-Q05)/3.29",
        )
    if method == ENSEMBLE_SPREAD:
        spread = f"run spread of {kinds}, not a prediction interval"
        return (
            pred,
            f"Q05 ({unit}): 5% quantile of the {models}' predictions ({spread})",
            f"Q95 ({unit}): 95% quantile of the {models}' predictions ({spread})",
            f"std ({unit}): standard deviation (ddof=1) of the {models}' predictions (run spread of {kinds})",
        )
    none = (
        f"not available: one point-prediction model ({kinds}) without intervals (train.num_runs >= 2 or a "
        "model with prediction intervals); nodata"
    )
    return (pred, f"Q05: {none}", f"Q95: {none}", f"std: {none}")
