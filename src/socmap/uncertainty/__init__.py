"""Honest uncertainty: conformal prediction intervals (:mod:`.conformal`) and the area of applicability
(:mod:`.aoa`) of any socmap model."""

from socmap.uncertainty.aoa import AreaOfApplicability, cross_validated_di, fit_aoa, whisker_threshold
from socmap.uncertainty.conformal import (
    COVERAGES,
    DEFAULT_NOMINAL,
    Calibration,
    ScaleModel,
    calibrate,
    conformal_offsets,
    cross_conformal,
    level_name,
    quantile_levels,
)

__all__ = [
    "COVERAGES",
    "DEFAULT_NOMINAL",
    "AreaOfApplicability",
    "Calibration",
    "ScaleModel",
    "calibrate",
    "conformal_offsets",
    "cross_conformal",
    "cross_validated_di",
    "fit_aoa",
    "level_name",
    "quantile_levels",
    "whisker_threshold",
]
