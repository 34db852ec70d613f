"""The ``cv`` stage: fit every model kind of ``cv.models`` on identical folds and score it out of fold.

The stage knows no model kind: each goes through :func:`socmap.models.create_model` and the
:class:`~socmap.models.SocModel` interface, so a kind registered later is cross-validated without a change here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap._atomic import atomic_file, check_output_dir, write_json, write_text
from socmap.config import SocmapConfig, dump_config
from socmap.errors import InputError, OutputError
from socmap.evaluate.folds import Fold, FoldDesign, folds_table, make_folds
from socmap.evaluate.intervals import (
    CURVE,
    add_dissimilarity,
    add_intervals,
    aoa_errors,
    interval_markdown,
    interval_table,
    plot_calibration,
)
from socmap.evaluate.tables import fold_metrics, markdown_report, plot_comparison, summarize
from socmap.models import FitData, FitInfo, available_models, create_model, predict_located, read_rows
from socmap.models.checks import degenerate_warning
from socmap.synth import known_r2_ceiling
from socmap.windows import PreparedData

__all__ = ["INTERVAL_LEVELS", "SUMMARY_FILE", "CVResult", "FoldHook", "check_models", "cross_validate"]

INTERVAL_LEVELS = (0.05, 0.5, 0.95)  # q05..q95: the nominal 90 % interval
SUMMARY_FILE = "metrics_summary.csv"  # written last: marks a finished cross-validation
CHECKPOINT = "checkpoint.pt"  # an iterative model's resume file, not needed once the fold's model is fitted
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Progress = Callable[[str], None]
FoldHook = Callable[[str, int, int, float], None]  # (model kind, fold index from 0, number of folds, seconds)


@dataclass
class CVResult:
    """What ``out`` holds (see :mod:`socmap.evaluate`).

    Args:
        out: the cross-validation folder.
        fold_design: how the folds were drawn (design, folds, seed, the splitter's parameters).
        models: the model kinds, in ``cv.models`` order.
        interval_models: the kinds that gave a q05..q95 interval in every fold.
        folds: ``folds.csv`` (index, sample_id, time, fold).
        predictions: ``predictions.csv`` (out of fold, one row per model and test sample).
        per_fold: ``metrics_per_fold.csv``.
        summary: ``metrics_summary.csv`` (mean, std, min, max over folds; pooled).
        markdown: ``metrics.md``.
        r2_ceiling: the known R² ceiling of the tested samples (synthetic data), else None.
        seconds: wall time per model kind, summed over folds (fit and predict).
        intervals: ``intervals.csv``: pooled PICP, width and interval score of every model's calibrated
            intervals at each of ``uncertainty.coverages``.
        calibration_curve: the same over the nominal coverages 0.05..0.95 (``calibration.png``).
        aoa_errors: ``aoa_errors.csv`` (OOF error inside / outside the area of applicability), or None.
        aoa_threshold: the AOA threshold of the cross-validated DI, or None (``uncertainty.aoa`` false).
        warnings: degenerate-model and under-training warnings of the fits, "kind, fold k: ...".
    """

    out: Path
    fold_design: FoldDesign
    models: list[str]
    interval_models: list[str]
    folds: pd.DataFrame
    predictions: pd.DataFrame
    per_fold: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    r2_ceiling: float | None
    seconds: dict[str, float]
    intervals: pd.DataFrame | None = None
    calibration_curve: pd.DataFrame | None = None
    aoa_errors: pd.DataFrame | None = None
    aoa_threshold: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def cv(self) -> str:
        """The design's name (``cv.design``)."""
        return self.fold_design.design


@dataclass
class _FoldFit:
    predicted: FloatArray
    quantiles: FloatArray | None  # [n, 3] at INTERVAL_LEVELS
    seconds: float
    info: FitInfo


def check_models(config: SocmapConfig) -> list[str]:
    """The kinds of ``cv.models`` (duplicates dropped), each created once so that an unknown kind or a bad
    option (``models.<kind>``) fails before any fitting.

    Args:
        config: the configuration (``cv.models``, ``models``, ``train``).
    """
    kinds = list(dict.fromkeys(config.cv.models))
    known = available_models()
    if not kinds:
        raise InputError(f"cv.models: expected at least one of {', '.join(known)}")
    bad = [k for k in kinds if k not in known]
    if bad:
        raise InputError(
            f"cv.models: {', '.join(map(repr, bad))} is not a model kind; expected one of {', '.join(known)}"
        )
    for kind in kinds:
        create_model(kind, config)
    return kinds


def _open_output(out: Path, overwrite: bool) -> None:
    if (out / SUMMARY_FILE).is_file() and not overwrite:
        raise OutputError(f"{out} already holds a cross-validation; pass --overwrite or choose another --out")
    check_output_dir(out, overwrite=True)


def _fit_fold(
    kind: str, config: SocmapConfig, data: PreparedData, fold: Fold, k: int, workdir: Path
) -> _FoldFit:
    """Fit a fresh model of ``kind`` on the fold's training rows only and predict its test rows."""
    train, test = fold
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)  # a stale checkpoint would be resumed
    workdir.mkdir(parents=True)
    model = create_model(kind, config)
    model.model_id = f"{config.name}-{kind}-cv-fold{k}"
    fit_data = FitData(
        data.windows,
        data.target,
        train,
        np.empty(0, np.int64),  # an early-stopping model carves its own rows from `train`
        data.meta.input_spec(),
        data.coords,
        data.sigma(),
        config.train.seed,
        workdir,
        xy=data.xy,
    )
    info = model.fit(fit_data)
    point, quantiles = predict_located(model, read_rows(data.windows, test), data.xy[test], INTERVAL_LEVELS)
    if quantiles is not None and np.shape(quantiles) != (test.size, len(INTERVAL_LEVELS)):
        raise InputError(
            f"model {kind!r} gave quantiles of shape {np.shape(quantiles)}, expected ({test.size}, 3)"
        )
    seconds = time.perf_counter() - started
    warning = degenerate_warning(data.target[test], point, "its test fold")
    info.warnings.extend([warning] if warning else [])
    (workdir / CHECKPOINT).unlink(missing_ok=True)
    write_json(workdir / "fit.json", {"kind": kind, "fold": k, "n_train": int(train.size), **info.to_json()})
    if info.history:
        with atomic_file(workdir / "history.csv") as tmp:
            pd.DataFrame(info.history).to_csv(tmp, index=False)
    return _FoldFit(np.asarray(point, np.float64), quantiles, seconds, info)


def _prediction_table(data: PreparedData, kind: str, k: int, test: IntArray, fit: _FoldFit) -> pd.DataFrame:
    q = fit.quantiles
    nan = np.full(test.size, np.nan)
    return pd.DataFrame(
        {
            "index": test,
            "sample_id": data.samples["sample_id"].to_numpy()[test],
            "time": data.samples["time"].to_numpy()[test],
            "fold": k,
            "model": kind,
            "observed": data.target[test],
            "predicted": fit.predicted,
            "q05": q[:, 0] if q is not None else nan,
            "q95": q[:, -1] if q is not None else nan,
        }
    )


@dataclass
class _Scores:
    predictions: pd.DataFrame
    per_fold: pd.DataFrame
    interval_models: list[str]
    seconds: dict[str, float]
    warnings: list[str]


def _score_models(
    config: SocmapConfig,
    data: PreparedData,
    kinds: list[str],
    folds: list[Fold],
    out: Path,
    say: Progress,
    on_fold: FoldHook | None = None,
) -> _Scores:
    """Every kind on every fold: out-of-fold predictions and per-fold metrics."""
    samples_path = config.resolve(config.samples.path)
    ceilings = [known_r2_ceiling(samples_path, data.samples, test) for _, test in folds]
    scored = config.cv.design != "buffered"  # one location per fold: only pooled metrics are meaningful
    parts: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    seconds = dict.fromkeys(kinds, 0.0)
    interval_models, warnings = [], []
    for kind in kinds:
        with_intervals = True
        for k, (train, test) in enumerate(folds):
            say(f"{kind}: fold {k + 1}/{len(folds)} ({train.size} training, {test.size} test samples)")
            fit = _fit_fold(kind, config, data, (train, test), k, out / "models" / kind / f"fold_{k:02d}")
            table = _prediction_table(data, kind, k, test, fit)
            parts.append(table)
            row: dict[str, Any] = {"model": kind, "fold": k, "n_train": int(train.size)}
            row |= fold_metrics(table, fit.quantiles is not None, scored=scored)
            rows.append(row | {"r2_ceiling": ceilings[k], "seconds": round(fit.seconds, 3)})
            seconds[kind] += fit.seconds
            with_intervals &= fit.quantiles is not None
            warnings += [f"{kind}, fold {k + 1}: {w}" for w in fit.info.warnings]
            if on_fold is not None:
                on_fold(kind, k, len(folds), fit.seconds)
        if with_intervals:
            interval_models.append(kind)
    predictions = pd.concat(parts, ignore_index=True)
    seconds = {k: round(v, 3) for k, v in seconds.items()}
    return _Scores(predictions, pd.DataFrame(rows), interval_models, seconds, warnings)


@dataclass
class _Uncertainty:
    intervals: pd.DataFrame
    curve: pd.DataFrame
    aoa_errors: pd.DataFrame | None
    threshold: float | None
    markdown: str


def _uncertainty(
    config: SocmapConfig, data: PreparedData, folds: list[Fold], scores: _Scores, say: Progress
) -> _Uncertainty:
    """Cross-validated DI (``uncertainty.aoa``) and calibrated intervals of every model's OOF predictions;
    adds ``di``, ``in_aoa`` and ``pi<coverage>_lower/upper`` columns to the predictions."""
    unc = config.uncertainty
    predictions = scores.predictions
    threshold = None
    if unc.aoa:
        say("area of applicability: cross-validated dissimilarity index")
        threshold = add_dissimilarity(config, data, folds, predictions)
    coverages = sorted({*unc.coverages, unc.nominal})
    say("calibrating prediction intervals (conformal, out of fold)")
    add_intervals(predictions, coverages, scores.interval_models, unc.adaptive)
    keep = [c for c in ("model", "fold", "observed", "predicted", "q05", "q95", "di") if c in predictions]
    curve_rows = predictions[keep].copy()
    add_intervals(curve_rows, CURVE, scores.interval_models, unc.adaptive)
    table = interval_table(predictions, coverages)
    errors = aoa_errors(predictions) if threshold is not None else None
    markdown = "\n" + interval_markdown(table, coverages, unc.nominal, errors, threshold)
    return _Uncertainty(table, interval_table(curve_rows, CURVE), errors, threshold, markdown)


def _notes(data: PreparedData, n_tested: int, ceiling: float | None) -> list[str]:
    notes = [
        f"{len(data.samples)} samples; {n_tested} tested at least once; target unit "
        f'{data.meta.target.unit}. R² = 1 - SSE/SST. "own" intervals: the model\'s own Q05-Q95 (nominal 90%); '
        "calibrated (conformal) intervals below.",
    ]
    if ceiling is not None:
        notes.append(f"Known R² ceiling of the tested samples (noise-free truth, pooled): {ceiling:.3f}.")
    return notes


def _cv_json(config: SocmapConfig, result: CVResult, n_samples: int, n_tested: int) -> dict[str, Any]:
    design = result.fold_design
    return {
        "name": config.name,
        "cv": design.design,
        "folds": design.folds,
        "seed": design.seed,
        "fold_design": design.to_json(),
        "models": result.models,
        "interval_models": result.interval_models,
        "model_options": {k: config.models.get(k, {}) for k in result.models},
        "train_seed": config.train.seed,
        "seconds": result.seconds,
        "n_samples": n_samples,
        "n_tested": n_tested,
        "r2_ceiling": result.r2_ceiling,
        "uncertainty": {
            "method": "cross-conformal: each fold's intervals calibrated on the other folds' out-of-fold "
            "residuals (normalised split-conformal, crepes)",
            **config.uncertainty.model_dump(),
            "aoa_threshold": result.aoa_threshold,
        },
        "warnings": result.warnings,
    }


def _write_outputs(config: SocmapConfig, data: PreparedData, result: CVResult, n_tested: int) -> None:
    """Every table, the figure and cv.json; ``metrics_summary.csv`` last."""
    out = result.out
    with atomic_file(out / "predictions.csv") as tmp:
        result.predictions.to_csv(tmp, index=False)
    with atomic_file(out / "metrics_per_fold.csv") as tmp:
        result.per_fold.to_csv(tmp, index=False)
    write_text(out / "metrics.md", result.markdown)
    title = result.markdown.splitlines()[0].removeprefix("# ")
    plot_comparison(result.per_fold, result.summary, out / "comparison.png", title)
    if result.intervals is not None:
        with atomic_file(out / "intervals.csv") as tmp:
            result.intervals.to_csv(tmp, index=False)
    if result.calibration_curve is not None:
        plot_calibration(result.calibration_curve, out / "calibration.png", f"{title}: interval calibration")
    if result.aoa_errors is not None:
        with atomic_file(out / "aoa_errors.csv") as tmp:
            result.aoa_errors.to_csv(tmp, index=False)
    write_json(out / "cv.json", _cv_json(config, result, len(data.samples), n_tested))
    with atomic_file(out / SUMMARY_FILE) as tmp:  # written last: marks a finished cross-validation
        result.summary.to_csv(tmp, index=False)


def cross_validate(
    config: SocmapConfig,
    data: PreparedData,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_fold: FoldHook | None = None,
) -> CVResult:
    """Cross-validate the kinds of ``cv.models`` on identical folds and write the tables into ``out``.

    The folds (``cv.design``, ``cv.folds`` else ``split.folds``, ``cv.seed`` else ``split.seed``) are drawn
    once; every kind is created from the config (options in ``models.<kind>``), fitted with seed
    ``train.seed`` on each fold's training rows only (a model that early-stops carves its monitoring rows out
    of them) and predicts the fold's test rows. ``out/models/<kind>/fold_<k>/`` is each fit's work folder
    (checkpoints while fitting; ``fit.json`` and the training history after).

    Args:
        config: the configuration (``cv``, ``models``, ``split``, ``train``).
        data: the prepared windows.
        out: the cross-validation folder; may hold other files (e.g. the prepared folder) but not a finished
            cross-validation unless ``overwrite``.
        overwrite: replace a finished cross-validation in ``out``.
        progress: called with one line before each fold of each model (what is being fitted).
        on_fold: called after each fold of each model with (model kind, fold index from 0, number of folds,
            seconds the fold's fit and prediction took), in order: every fold of the first kind of
            ``cv.models``, then the next kind; for a progress bar of ``len(models) x n_folds`` steps.
    """
    kinds = check_models(config)
    out = Path(out)
    _open_output(out, overwrite)
    say = progress or (lambda _msg: None)
    folds, design = make_folds(config, data)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (SUMMARY_FILE, "selected.yaml"):  # an interrupted overwrite must not look finished
        (out / stale).unlink(missing_ok=True)
    folds_frame = folds_table(data, folds)
    with atomic_file(out / "folds.csv") as tmp:
        folds_frame.to_csv(tmp, index=False)
    write_text(out / "config.yaml", dump_config(config))
    if config.train.threads:
        import torch

        torch.set_num_threads(config.train.threads)
    scores = _score_models(config, data, kinds, folds, out, say, on_fold)
    uncertain = _uncertainty(config, data, folds, scores, say)
    summary = summarize(scores.per_fold, scores.predictions, set(scores.interval_models))
    tested = np.unique(np.concatenate([test for _, test in folds]))
    ceiling = known_r2_ceiling(config.resolve(config.samples.path), data.samples, tested)
    title = f"{config.name}: {design.design} cross-validation, {design.folds} folds"
    result = CVResult(
        out=out,
        fold_design=design,
        models=kinds,
        interval_models=scores.interval_models,
        folds=folds_frame,
        predictions=scores.predictions,
        per_fold=scores.per_fold,
        summary=summary,
        markdown=markdown_report(summary, title, _notes(data, int(tested.size), ceiling))
        + uncertain.markdown,
        r2_ceiling=ceiling,
        seconds=scores.seconds,
        intervals=uncertain.intervals,
        calibration_curve=uncertain.curve,
        aoa_errors=uncertain.aoa_errors,
        aoa_threshold=uncertain.threshold,
        warnings=scores.warnings,
    )
    _write_outputs(config, data, result, int(tested.size))
    return result
