"""Cross-validation of any registered model kinds on identical folds (``socmap cv``), and model selection.

The fold indices are generated once (``folds.csv``) and every model kind of ``cv.models`` is fitted and scored
on exactly those folds, from the same prepared windows, so differences between models are differences between
models, not between validation sets. Metrics are on the original target scale (R² = 1 - SSE/SST, never
Pearson r²). The stage names no model kind: each is created through :func:`socmap.models.create_model`.

No model sees a fold's test rows before predicting them: a model is given the fold's training rows only. A
model that early-stops (the CNN-LSTM with ``train.use_validation``) carves its monitoring rows out of those
with the config's ``split.method`` (``buffered`` -> ``distance-split``); the others fit on all of them.

With ``buffered`` (leave one location out) a fold is one location, so per-fold metrics are left NaN and only
the pooled metrics (over all out-of-fold predictions) are reported.

Output folder: ``folds.csv`` (index, sample_id, time, fold: test membership), ``predictions.csv`` (out of
fold, one row per model and test sample; q05/q95 for models with intervals), ``metrics_per_fold.csv``
(n_train = the fold's training rows given to the model, seconds = fit + predict wall time),
``metrics_summary.csv`` (mean, std, min, max over folds and the pooled value; written last), ``metrics.md``,
``comparison.png``, ``cv.json`` (fold design and splitter parameters, models, wall time per model, known R²
ceiling), ``config.yaml`` and ``models/<kind>/fold_<k>/`` (each fit's work folder: ``fit.json``,
``history.csv`` of iterative models, ``oof.npz`` and ``result.json``: the finished fit that ``resume`` reuses).
:func:`select_model` adds ``selected.yaml``.

Each (kind, fold) fit is a task (:mod:`socmap.evaluate.tasks`): ``cv.scheduler`` runs them in this process, on
Dask's local threads or processes, or on a dask.distributed cluster, with the same tables.
"""

from __future__ import annotations

from socmap.config import CV_DESIGNS
from socmap.evaluate.folds import (
    N_PREDICTION_POINTS,
    FoldDesign,
    folds_table,
    make_folds,
    prediction_points,
)
from socmap.evaluate.select import (
    SELECTED_FILE,
    SELECTION_METRICS,
    Selection,
    rank_models,
    select_model,
)
from socmap.evaluate.stage import INTERVAL_LEVELS, SUMMARY_FILE, CVResult, check_models, cross_validate
from socmap.evaluate.tables import (
    INTERVAL_METRICS,
    NOMINAL,
    POINT_METRICS,
    REPORTED,
    fold_metrics,
    markdown_report,
    plot_comparison,
    summarize,
)

__all__ = [
    "CV_DESIGNS",
    "INTERVAL_LEVELS",
    "INTERVAL_METRICS",
    "NOMINAL",
    "N_PREDICTION_POINTS",
    "POINT_METRICS",
    "REPORTED",
    "SELECTED_FILE",
    "SELECTION_METRICS",
    "SUMMARY_FILE",
    "CVResult",
    "FoldDesign",
    "Selection",
    "check_models",
    "cross_validate",
    "fold_metrics",
    "folds_table",
    "make_folds",
    "markdown_report",
    "plot_comparison",
    "prediction_points",
    "rank_models",
    "select_model",
    "summarize",
]
