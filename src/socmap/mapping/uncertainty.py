"""How the members' predictions become the map's bands (SoilGrids-style names; GDAL descriptions say how
each band was made).

=====  ===================  ==============================================================================
band   name                 what it holds
=====  ===================  ==============================================================================
1      ``mean``             mean of the members' point predictions (:meth:`SocModel.predict`)
2      ``Q0.05``            lower end of the nominal prediction interval (``uncertainty.nominal``; 0.9:
                            Q0.05 .. Q0.95)
3      ``Q0.5``             the calibrated median
4      ``Q0.95``            upper end of the nominal prediction interval
5      ``PI90_width``       Q0.95 - Q0.05
6      ``model_spread_sd``  standard deviation (ddof=1) of the members' point predictions: the spread
                            between runs/models, *not* a prediction interval (nodata with one member)
7      ``DI``               dissimilarity index to the training data (:mod:`socmap.uncertainty.aoa`)
8      ``AOA``              1 inside the area of applicability (DI <= threshold), 0 outside
=====  ===================  ==============================================================================

Bands 2-5 come from the first method that applies:

- ``conformal`` (the run folder holds ``calibration.json``, written by ``socmap train``): the quantiles
  ``mean + σ(x) · offset(p)`` of the calibration of the runs' mean (:mod:`socmap.uncertainty.conformal`),
  locally adaptive through σ(x) (prediction, the members' own Q95-Q05 width, DI);
- ``model_intervals`` (no calibration; every member gives Q05/Q50/Q95): the members' own quantiles averaged
  (uncalibrated);
- ``none``: nodata, and the descriptions say so.

Bands 7-8 are nodata when the run folder holds no ``aoa.json``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from socmap.errors import InputError
from socmap.models import SocModel, model_entry
from socmap.models.base import FloatArray
from socmap.uncertainty.conformal import level_name
from socmap.uncertainty.runcal import RunUncertainty

__all__ = [
    "BAND_NAMES",
    "CONFORMAL",
    "LEVELS",
    "METHODS",
    "MODEL_INTERVALS",
    "NO_UNCERTAINTY",
    "N_BANDS",
    "Z95",
    "asks_quantiles",
    "band_descriptions",
    "band_names",
    "combine",
    "interval_source",
    "model_kinds",
    "uncertainty_method",
]

LEVELS = (0.05, 0.5, 0.95)  # the quantiles asked of every member (Q50 is asked so that heads are complete)
Z95 = 1.6448536269514722  # standard normal 95 % quantile
CONFORMAL, MODEL_INTERVALS, NO_UNCERTAINTY = "conformal", "model_intervals", "none"
METHODS = (CONFORMAL, MODEL_INTERVALS, NO_UNCERTAINTY)
N_BANDS = 8


def band_names(nominal: float = 0.9) -> tuple[str, ...]:
    """The eight band names for an interval of coverage ``nominal`` (0.9: ``Q0.05``, ``Q0.95``, ``PI90_width``)."""
    lo, hi = round((1 - nominal) / 2, 6), round((1 + nominal) / 2, 6)
    pct = f"{100 * nominal:.3g}"
    return ("mean", level_name(lo), "Q0.5", level_name(hi), f"PI{pct}_width", "model_spread_sd", "DI", "AOA")


BAND_NAMES = band_names(0.9)


def uncertainty_method(members: Sequence[SocModel], found: RunUncertainty | None = None) -> str:
    """``conformal``, ``model_intervals`` or ``none`` (see the module docstring).

    Args:
        members: the run's models.
        found: the run folder's calibration and AOA.
    """
    if found is not None and found.calibration is not None:
        return CONFORMAL
    if members and all(m.gives_quantiles(LEVELS) for m in members):
        return MODEL_INTERVALS
    return NO_UNCERTAINTY


def asks_quantiles(method: str, found: RunUncertainty | None) -> bool:
    """Whether the members' own quantiles are needed (own intervals, or the calibration's scale input)."""
    return method == MODEL_INTERVALS or (method == CONFORMAL and found is not None and found.uses_width)


def combine(
    points: Sequence[FloatArray],
    quantiles: Sequence[FloatArray | None],
    method: str,
    found: RunUncertainty | None = None,
    di: FloatArray | None = None,
) -> FloatArray:
    """``[8, N]`` float64 bands from the members' point predictions ``[N]`` and quantiles ``[N, 3]``
    (``LEVELS``), the run's calibration and the pixels' DI.

    Args:
        points: every member's point predictions.
        quantiles: every member's quantiles (read with ``model_intervals`` and a width-scaled calibration).
        method: one of :data:`METHODS`.
        found: the run folder's calibration and AOA (``conformal``).
        di: the pixels' dissimilarity index (None: bands 7-8 nodata).
    """
    pred = np.stack(points)
    out = np.full((N_BANDS, pred.shape[1]), np.nan)
    out[0] = pred.mean(axis=0)
    own = None
    if asks_quantiles(method, found):
        if any(q is None for q in quantiles):
            raise InputError("a model promised quantiles (gives_quantiles) but predicted none")
        own = np.stack([q for q in quantiles if q is not None])  # [members, N, 3]
    if method == CONFORMAL and found is not None and found.calibration is not None:
        calib = found.calibration
        width = (own[:, :, 2] - own[:, :, 0]).mean(axis=0) if own is not None else None
        out[1:4] = calib.quantiles(out[0], calib.interval_levels, width, di).T
    elif method == MODEL_INTERVALS and own is not None:
        out[1:4] = own.mean(axis=0).T
    out[4] = out[3] - out[1]
    if pred.shape[0] >= 2:
        out[5] = pred.std(axis=0, ddof=1)
    if di is not None and found is not None and found.aoa is not None:
        out[6] = di
        out[7] = (di <= found.aoa.threshold).astype(np.float64)
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


def _interval_texts(
    method: str, members: Sequence[SocModel], unit: str, found: RunUncertainty | None, names: Sequence[str]
) -> list[str]:
    """Descriptions of bands 2-5."""
    n = len(members)
    lo, mid, hi, width = names[1], names[2], names[3], names[4]
    if method == CONFORMAL and found is not None and found.calibration is not None:
        how = f"calibrated conformal quantile of the mean prediction: {found.calibration.describe()}"
        return [
            f"{lo} ({unit}): {how}",
            f"{mid} ({unit}): calibrated median ({how})",
            f"{hi} ({unit}): {how}",
            f"{width} ({unit}): {hi} - {lo}, the width of the calibrated "
            f"{100 * found.calibration.nominal:.3g}% prediction interval",
        ]
    if method == MODEL_INTERVALS:
        sources = "; ".join(dict.fromkeys(interval_source(m) for m in members))
        own = "the model's own" if n == 1 else f"the {n} models' own (averaged)"
        note = "uncalibrated: train with uncertainty.calibration_folds >= 2 for calibrated intervals"
        return [
            f"{lo} ({unit}): {own} 5% quantile ({sources}; {note})",
            f"{mid} ({unit}): {own} median ({sources}; {note})",
            f"{hi} ({unit}): {own} 95% quantile ({sources}; {note})",
            f"{width} ({unit}): {hi} - {lo} ({note})",
        ]
    none = (
        "not available: the run holds no interval calibration (train with uncertainty.calibration_folds >= 2) "
        "and its models give no intervals; nodata"
    )
    return [f"{name}: {none}" for name in names[1:5]]


def band_descriptions(
    method: str,
    members: Sequence[SocModel],
    unit: str,
    target: str | None = None,
    found: RunUncertainty | None = None,
) -> tuple[str, ...]:
    """What each of the eight bands holds and exactly how it was produced (GDAL band descriptions).

    Args:
        method: one of :data:`METHODS`.
        members: the run's models (their number and kinds are named).
        unit: the target's unit.
        target: the predicted property's name (None: the first member's target column).
        found: the run folder's calibration and AOA.
    """
    n = len(members)
    models, kinds = f"{n} model{'s' if n > 1 else ''}", model_kinds(members)
    whose = f"{models}'" if n > 1 else f"{models}'s"  # 2 models' / 1 model's
    if target is None:
        target = members[0].require_inputs().target.column if members else "the target"
    names = band_names(
        found.calibration.nominal if found and found.calibration and method == CONFORMAL else 0.9
    )
    pred = f"mean: prediction of {target} ({unit}): mean of {whose} point predictions ({kinds})"
    spread = (
        f"model_spread_sd ({unit}): standard deviation (ddof=1) of the {models}' point predictions: the spread "
        f"between runs/models ({kinds}), not a prediction interval"
        if n > 1
        else "model_spread_sd: not available: one model (train.num_runs >= 2 for a spread); nodata"
    )
    if found is not None and found.aoa is not None:
        di = f"DI (unitless): {found.aoa.describe()}"
        aoa = f"AOA: 1 inside the area of applicability (DI <= {found.aoa.threshold:.4g}), 0 outside"
    else:
        di = "DI: not available: the run holds no area of applicability (aoa.json); nodata"
        aoa = "AOA: not available: the run holds no area of applicability (aoa.json); nodata"
    return (pred, *_interval_texts(method, members, unit, found, names), spread, di, aoa)
