"""The ``cv`` stage: fit every model kind of ``cv.models`` on identical folds and score it out of fold.

The stage knows no model kind: each goes through :func:`socmap.models.create_model` and the
:class:`~socmap.models.SocModel` interface, so a kind registered later is cross-validated without a change here.
"""

from __future__ import annotations

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
from socmap.evaluate.tasks import INTERVAL_LEVELS, FitTask, FoldFit, fit_fingerprint, load_fit, run_fits
from socmap.models import available_models, create_model
from socmap.synth import known_r2_ceiling
from socmap.windows import PreparedData

__all__ = ["INTERVAL_LEVELS", "SUMMARY_FILE", "CVResult", "FoldHook", "check_models", "cross_validate"]

SUMMARY_FILE = "metrics_summary.csv"  # written last: marks a finished cross-validation
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
        n_resumed: (kind, fold) fits read back from an interrupted run (``resume``) instead of computed.
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
    n_resumed: int = 0

    @property
    def cv(self) -> str:
        """The design's name (``cv.design``)."""
        return self.fold_design.design


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


def _prediction_table(data: PreparedData, kind: str, k: int, test: IntArray, fit: FoldFit) -> pd.DataFrame:
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
    n_resumed: int = 0


def _fit_tasks(
    config: SocmapConfig, data: PreparedData, kinds: list[str], folds: list[Fold], out: Path
) -> list[FitTask]:
    """Every (kind, fold) fit, kinds in ``cv.models`` order, folds in order: the order results are assembled
    in, whatever order they ran in."""
    return [
        FitTask(
            kind,
            k,
            train,
            test,
            out / "models" / kind / f"fold_{k:02d}",
            fit_fingerprint(config, data, kind, train, test),
        )
        for kind in kinds
        for k, (train, test) in enumerate(folds)
    ]


def _run_or_resume(
    config: SocmapConfig,
    data: PreparedData,
    tasks: list[FitTask],
    out: Path,
    resume: bool,
    say: Progress,
    on_fold: FoldHook | None,
) -> tuple[list[FoldFit], int]:
    """Each task's fit, and how many finished fits of another config or data were recomputed: read back when
    ``resume`` finds it finished with the same fingerprint, else computed (in ``cv.scheduler``); ``on_fold``
    is called once per fit, resumed ones first."""
    n_folds = 1 + max(t.fold for t in tasks)
    fits: dict[int, FoldFit] = {}
    stale = 0
    if resume:
        fits = {i: fit for i, t in enumerate(tasks) if (fit := load_fit(t)) is not None}
        stale = sum((t.workdir / "result.json").is_file() for i, t in enumerate(tasks) if i not in fits)
        note = f"; {stale} made with another config or data are recomputed" if stale else ""
        say(f"resuming: {len(fits)} of {len(tasks)} fits finished{note}")
    for i in sorted(fits):
        if on_fold is not None:
            on_fold(tasks[i].kind, tasks[i].fold, n_folds, fits[i].seconds)
    todo = [i for i in range(len(tasks)) if i not in fits]

    def done(j: int, fit: FoldFit) -> None:
        task = tasks[todo[j]]
        fits[todo[j]] = fit
        if on_fold is not None:
            on_fold(task.kind, task.fold, n_folds, fit.seconds)

    def before(j: int) -> None:
        task = tasks[todo[j]]
        say(
            f"{task.kind}: fold {task.fold + 1}/{n_folds} ({task.train.size} training, {task.test.size} test samples)"
        )

    if todo and config.cv.scheduler is not None:
        say(f"{len(todo)} fits as Dask tasks ({config.cv.scheduler})")
    run_fits([tasks[i] for i in todo], config, data, config.cv.scheduler, done, out, before)
    return [fits[i] for i in range(len(tasks))], stale


def _score_models(
    config: SocmapConfig,
    data: PreparedData,
    kinds: list[str],
    folds: list[Fold],
    out: Path,
    say: Progress,
    on_fold: FoldHook | None = None,
    resume: bool = False,
) -> _Scores:
    """Every kind on every fold: out-of-fold predictions and per-fold metrics, assembled in task order."""
    samples_path = config.resolve(config.samples.path)
    ceilings = [known_r2_ceiling(samples_path, data.samples, test) for _, test in folds]
    scored = config.cv.design != "buffered"  # one location per fold: only pooled metrics are meaningful
    tasks = _fit_tasks(config, data, kinds, folds, out)
    fits, stale = _run_or_resume(config, data, tasks, out, resume, say, on_fold)
    parts: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    seconds = dict.fromkeys(kinds, 0.0)
    without_intervals: set[str] = set()
    warnings = (
        [
            f"--resume: {stale} finished fits in {out} were made with another config or data and were "
            "recomputed"
        ]
        if stale
        else []
    )
    for task, fit in zip(tasks, fits, strict=True):
        kind, k = task.kind, task.fold
        table = _prediction_table(data, kind, k, task.test, fit)
        parts.append(table)
        row: dict[str, Any] = {"model": kind, "fold": k, "n_train": int(task.train.size)}
        row |= fold_metrics(table, fit.quantiles is not None, scored=scored)
        rows.append(row | {"r2_ceiling": ceilings[k], "seconds": round(fit.seconds, 3)})
        seconds[kind] += fit.seconds
        if fit.quantiles is None:
            without_intervals.add(kind)
        warnings += [f"{kind}, fold {k + 1}: {w}" for w in fit.info.warnings]
    predictions = pd.concat(parts, ignore_index=True)
    seconds = {k: round(v, 3) for k, v in seconds.items()}
    interval_models = [k for k in kinds if k not in without_intervals]
    n_resumed = sum(fit.resumed for fit in fits)
    return _Scores(predictions, pd.DataFrame(rows), interval_models, seconds, warnings, n_resumed)


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


def worse_than_mean_warnings(summary: pd.DataFrame) -> list[str]:
    """One warning per model whose pooled out-of-fold R² is below 0: its predictions are further from the
    observations than the observations' mean is, so its map would mislead (small data sets and unstable
    kinds, e.g. a transformer on 80 training samples). ``summary``: :func:`summarize`'s table."""
    r2 = summary[summary["metric"] == "r2"]
    return [
        f"{model}: pooled out-of-fold R² {pooled:.3f} is below 0: it predicts worse than the mean of the "
        "observations; do not map with it"
        for model, pooled in zip(r2["model"], r2["pooled"], strict=True)
        if np.isfinite(pooled) and pooled < 0
    ]


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
    resume: bool = False,
) -> CVResult:
    """Cross-validate the kinds of ``cv.models`` on identical folds and write the tables into ``out``.

    The folds (``cv.design``, ``cv.folds`` else ``split.folds``, ``cv.seed`` else ``split.seed``) are drawn
    once; every kind is created from the config (options in ``models.<kind>``), fitted with seed
    ``train.seed`` on each fold's training rows only (a model that early-stops carves its monitoring rows out
    of them) and predicts the fold's test rows. ``out/models/<kind>/fold_<k>/`` is each fit's work folder
    (checkpoints while fitting; ``fit.json``, the training history, ``oof.npz`` and ``result.json`` after).

    Every (kind, fold) fit is an independent task (:mod:`socmap.evaluate.tasks`) run where ``cv.scheduler``
    says: in this process one after another (None), as Dask tasks on local ``threads`` or ``processes``, or
    on a dask.distributed cluster (``tcp://host:port``). Results are assembled in the fixed order (kinds of
    ``cv.models``, then folds), so the tables are the same whichever scheduler ran the fits.

    Args:
        config: the configuration (``cv``, ``models``, ``split``, ``train``).
        data: the prepared windows.
        out: the cross-validation folder; may hold other files (e.g. the prepared folder) but not a finished
            cross-validation unless ``overwrite``.
        overwrite: replace a finished cross-validation in ``out``.
        progress: called with one line before each fold of each model (what is being fitted; on Dask: one
            line before all).
        on_fold: called after each fold of each model with (model kind, fold index from 0, number of folds,
            seconds the fold's fit and prediction took): resumed fits first, then in order (every fold of the
            first kind of ``cv.models``, then the next kind) or, on Dask, as fits finish; for a progress bar
            of ``len(models) x n_folds`` steps.
        resume: reuse the fits an interrupted run of the same config and data finished (``result.json``
            with the same fingerprint); the others, and fits of another config or data, are computed.
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
    scores = _score_models(config, data, kinds, folds, out, say, on_fold, resume)
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
        warnings=scores.warnings + worse_than_mean_warnings(summary),
        n_resumed=scores.n_resumed,
    )
    _write_outputs(config, data, result, int(tested.size))
    return result
