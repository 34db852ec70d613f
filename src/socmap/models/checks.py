"""Checks that a fitted model learned something: a degenerate model must never pass silently.

A network that early-stops at an untrained epoch, or a fit that collapsed, predicts an almost constant value:
its R² is about 0 and its CCC about 0, which a pooled table can hide among better folds. These checks turn
that into a warning that ``train``, ``cv`` and the report show.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from socmap.metrics import regression_metrics

__all__ = ["MIN_CCC", "MIN_SPREAD_RATIO", "degenerate_warning"]

MIN_SPREAD_RATIO = 0.1  # sd(predicted) / sd(observed) below this: near-constant predictions
MIN_CCC = 0.05  # Lin's concordance below this: predictions do not follow the target
MIN_ROWS = 10
MIN_ROWS_CCC = 50  # below this a CCC near 0 is noise (its standard error is ~1/sqrt(n)), not evidence


def degenerate_warning(observed: ArrayLike, predicted: ArrayLike, where: str) -> str | None:
    """A one-line warning when ``predicted`` is near-constant (spread < 10 % of the target's; 10 rows or more)
    or does not follow ``observed`` (CCC < 0.05; 50 rows or more) on the rows ``where`` names; None when the
    fit looks sane or there are too few finite rows to tell."""
    obs, pred = np.asarray(observed, np.float64), np.asarray(predicted, np.float64)
    ok = np.isfinite(obs) & np.isfinite(pred)
    if ok.sum() < MIN_ROWS or float(np.std(obs[ok])) == 0:
        return None
    ratio = float(np.std(pred[ok]) / np.std(obs[ok]))
    ccc = float(regression_metrics(obs[ok], pred[ok])["ccc"])
    if ratio < MIN_SPREAD_RATIO:
        return (
            f"degenerate model on {where}: predictions are near-constant (spread {ratio:.1%} of the target's, "
            f"CCC {ccc:.3f}); the fit learned (almost) nothing: check the data, or train longer / more samples"
        )
    if ccc < MIN_CCC and ok.sum() >= MIN_ROWS_CCC:
        return (
            f"degenerate model on {where}: predictions do not follow the target (CCC {ccc:.3f}, spread "
            f"{ratio:.0%} of the target's)"
        )
    return None
