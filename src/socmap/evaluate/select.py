"""Model selection from a finished cross-validation: the kind with the best pooled out-of-fold metric.

The pooled value (every out-of-fold prediction of a model at once) is used rather than the mean over folds:
it is defined for every design (buffered folds of one location have no per-fold R²) and weights every sample
equally. The selection is written as ``selected.yaml``: the cross-validation's own ``config.yaml`` with
``train.model`` set to the winner, ready for ``socmap train --config <cv>/selected.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from socmap._atomic import write_text
from socmap.config import dump_config, load_config
from socmap.errors import InputError
from socmap.evaluate.stage import SUMMARY_FILE

__all__ = ["SELECTED_FILE", "SELECTION_METRICS", "Selection", "rank_models", "select_model"]

SELECTED_FILE = "selected.yaml"
# metric -> how it ranks: "max" (larger is better), "min" (smaller is better), "abs" (closer to 0 is better)
SELECTION_METRICS = {"r2": "max", "ccc": "max", "rpiq": "max", "rmse": "min", "mae": "min", "me": "abs"}


@dataclass(frozen=True)
class Selection:
    """The chosen model kind.

    Args:
        kind: the winning model kind.
        metric: the metric it was chosen by.
        value: its pooled out-of-fold value of ``metric``.
        ranking: (kind, pooled value) of every model, best first (models without a finite value last).
        config_path: ``selected.yaml``: the cross-validation's config with ``train.model`` = ``kind``.
    """

    kind: str
    metric: str
    value: float
    ranking: list[tuple[str, float]]
    config_path: Path


def _sort_key(direction: str, value: float) -> float:
    if not math.isfinite(value):
        return math.inf
    return {"max": -value, "min": value, "abs": abs(value)}[direction]


def rank_models(summary: pd.DataFrame, metric: str = "r2") -> list[tuple[str, float]]:
    """(model, pooled value) of ``metric`` from a ``metrics_summary.csv`` table, best first; ties keep the
    table's (``cv.models``) order.

    Args:
        summary: the long summary table (columns model, metric, pooled).
        metric: one of r2, ccc, rpiq (larger is better), rmse, mae (smaller is better), me (|me| smaller).
    """
    if metric not in SELECTION_METRICS:
        raise InputError(f"selection metric {metric!r}: expected one of {', '.join(SELECTION_METRICS)}")
    missing = {"model", "metric", "pooled"} - set(summary.columns)
    if missing:
        raise InputError(f"metrics summary: column(s) {', '.join(sorted(missing))} missing")
    rows = summary[summary["metric"] == metric]
    values = [(str(m), float(v)) for m, v in zip(rows["model"], rows["pooled"], strict=True)]
    if not values:
        raise InputError(f"metrics summary has no {metric!r} rows")
    return sorted(values, key=lambda mv: _sort_key(SELECTION_METRICS[metric], mv[1]))


def select_model(cv_dir: str | Path, metric: str = "r2") -> Selection:
    """Pick the model with the best pooled out-of-fold ``metric`` of the finished cross-validation in
    ``cv_dir`` and write ``cv_dir/selected.yaml`` (its ``config.yaml`` with ``train.model`` = the winner).

    Args:
        cv_dir: a folder written by :func:`socmap.evaluate.cross_validate`.
        metric: r2, ccc or rpiq (maximised), rmse or mae (minimised), or me (|me| minimised).
    """
    cv_dir = Path(cv_dir)
    summary_path, config_path = cv_dir / SUMMARY_FILE, cv_dir / "config.yaml"
    if not summary_path.is_file() or not config_path.is_file():
        raise InputError(
            f"{cv_dir} holds no finished cross-validation ({SUMMARY_FILE} or config.yaml missing); run socmap cv"
        )
    ranking = rank_models(pd.read_csv(summary_path), metric)
    kind, value = ranking[0]
    if not math.isfinite(value):
        raise InputError(f"{cv_dir}: no model has a finite pooled {metric}; cannot select one")
    config = load_config(config_path, {"train.model": kind})
    header = (
        f"# socmap cv selection: {kind} (pooled out-of-fold {metric} {value:.4g}) from {cv_dir.resolve()}\n"
    )
    selected = cv_dir / SELECTED_FILE
    write_text(selected, header + dump_config(config))
    return Selection(kind, metric, value, ranking, selected)
