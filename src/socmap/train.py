"""The ``train`` stage: hold out a test set, fit any registered model kind several times, score, write a run.

``train(config, out)`` prepares (or reuses) the windows, holds out a test set of about ``split.val_ratio`` of
the samples with ``split.method`` (:func:`socmap.split.holdout_splitter`), fits ``train.num_runs`` models of
kind ``train.model`` with seeds ``seed .. seed+N-1`` on the rest through the model interface
(:mod:`socmap.models`), and writes the run folder laid out by :class:`~socmap.runfolder.RunFolder`.

The test set is never seen before scoring: a model that early-stops (the CNN-LSTM) carves its early-stopping
set out of the training rows itself, and the run kept as the folder's model is chosen by the early-stopping
R² (deep models) or is run 0 (kinds without one), never by the test score. Every score is labelled
(:class:`~socmap.runfolder.Score`): the held-out test set (the headline), the early-stopping set, the training
fit, and the test score of the runs' mean prediction, which is what ``socmap map`` and ``predict`` use. With
``train.use_validation: false`` there is no test set and the only score is the training fit (not a
validation). The stage knows no model kind: a kind registered later trains, maps and reports unchanged.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap._atomic import atomic_file, check_output_dir, write_json
from socmap.config import SocmapConfig
from socmap.errors import InputError, OutputError, SocmapError
from socmap.metrics import interval_metrics, regression_metrics
from socmap.models import SocModel, create_model, load_model, predict_located, read_rows, save_model
from socmap.models.checks import degenerate_warning
from socmap.runfolder import (
    AGGREGATED,
    EARLY_STOPPING,
    MEAN_OF_RUNS,
    TEST,
    TRAINING_FIT,
    RunFolder,
    RunMetrics,
    RunSummary,
    Score,
)
from socmap.sampling import BalancedSampler, balance_report
from socmap.split import holdout_splitter, split_report
from socmap.synth import known_r2_ceiling
from socmap.uncertainty.runcal import CALIBRATION_FILE, CALIBRATION_OOF_FILE, calibrate_run, score_test
from socmap.windows import PreparedData, prepare

__all__ = [
    "MIN_SAMPLES",
    "RunResult",
    "SplitPlan",
    "TrainResult",
    "early_stopping_score",
    "fit_run",
    "make_split",
    "select_run",
    "train",
]

MIN_SAMPLES = 20
INTERVAL_LEVELS = (0.05, 0.5, 0.95)
EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass
class SplitPlan:
    """Training and held-out test sample indices of one run, and the split's report (written as JSON)."""

    train: NDArray[np.int64]
    test: NDArray[np.int64]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def val(self) -> NDArray[np.int64]:
        """Deprecated name of :attr:`test`."""
        return self.test


@dataclass
class RunResult:
    """One training run: its metrics, history and where its model lies."""

    run: int
    seed: int
    folder: Path
    metrics: RunMetrics
    history: pd.DataFrame


@dataclass
class TrainResult:
    """All runs, the typed summary (``metrics.json``) and the run kept as the folder's model."""

    out: Path
    runs: list[RunResult]
    best_run: int
    summary: RunSummary


def make_split(config: SocmapConfig, data: PreparedData, seed: int) -> SplitPlan:
    """The held-out test set: about ``split.val_ratio`` of the samples by ``split.method`` (whole locations,
    blocks or distance clusters; :func:`socmap.split.holdout_splitter`); none with ``train.use_validation``
    false.

    Args:
        config: the configuration (``split``, ``train.use_validation``).
        data: the prepared samples.
        seed: seed of the split.
    """
    n = len(data.samples)
    if not config.train.use_validation:
        note = (
            "no test set (train.use_validation false): the only score is the training fit, not a validation"
        )
        return SplitPlan(np.arange(n), np.empty(0, np.int64), {"note": note})
    method, ratio = config.split.method, config.split.val_ratio
    if method == "buffered":
        raise InputError(
            f"split.method {method!r} cannot give one test set for training; "
            "use distance-split, spatial-block or random (buffered is for `socmap cv`)"
        )
    coords = data.samples[["lon", "lat"]]
    try:
        train_idx, test_idx = next(iter(holdout_splitter(config.split, seed).split(coords, data.target)))
    except InputError as exc:
        raise InputError(f"split.method {method} with split.val_ratio {ratio}: {exc}") from None
    if len(test_idx) < 5 or len(train_idx) < 10:
        raise InputError(
            f"split {method} gave {len(train_idx)} training and {len(test_idx)} test samples: too few; "
            "use more samples, a larger split.val_ratio, or train.use_validation: false"
        )
    unit = data.meta.target.unit
    report = split_report(coords, data.target, train_idx, test_idx, unit=unit, held_out="test")
    report |= {"method": method, "held_out": "test", "val_ratio_requested": ratio}
    return SplitPlan(np.asarray(train_idx, np.int64), np.asarray(test_idx, np.int64), report)


def _prediction_table(
    data: PreparedData,
    rows: NDArray[np.int64],
    point: NDArray[np.float64],
    quantiles: NDArray[np.float64] | None,
) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "sample_id": data.samples["sample_id"].to_numpy()[rows],
            "time": data.samples["time"].to_numpy()[rows],
            "observed": data.target[rows],
            "predicted": point,
        }
    )
    if quantiles is not None:
        for j, level in enumerate(INTERVAL_LEVELS):
            table[f"q{round(100 * level):02d}"] = quantiles[:, j]
    return table


def _score_rows(
    model: SocModel, data: PreparedData, rows: NDArray[np.int64], label: str
) -> tuple[Score, pd.DataFrame]:
    """The model's predictions of ``rows`` (with Q05/Q50/Q95 where it gives them) and their score."""
    point, quantiles = predict_located(model, read_rows(data.windows, rows), data.xy[rows], INTERVAL_LEVELS)
    table = _prediction_table(data, rows, point, quantiles)
    intervals = (
        interval_metrics(table["observed"], table["q05"], table["q95"], 0.9)
        if quantiles is not None
        else None
    )
    return Score(label, regression_metrics(table["observed"], table["predicted"]), intervals), table


def _training_fit(model: SocModel, data: PreparedData, rows: NDArray[np.int64]) -> Score:
    """Point metrics of the model on the rows it was given to fit (not a validation)."""
    point = predict_located(model, read_rows(data.windows, rows), data.xy[rows])[0]
    return Score(TRAINING_FIT, regression_metrics(data.target[rows], point))


def early_stopping_score(history: pd.DataFrame, best_epoch: int) -> Score | None:
    """The early-stopping set's metrics at the epoch kept, from the training history (``val_*`` columns are
    the early-stopping set's); None for models that do not early-stop.

    Args:
        history: the run's ``history.csv``.
        best_epoch: the epoch whose weights were kept.
    """
    if "val_r2" not in history.columns or best_epoch < 0:
        return None
    rows = (
        history[history["epoch"] == best_epoch] if "epoch" in history.columns else history.iloc[[best_epoch]]
    )
    if rows.empty:
        return None
    row = rows.iloc[0]
    names = {"val_r2": "r2", "val_rmse": "rmse", "val_mae": "mae", "val_loss": "loss"}
    return Score(EARLY_STOPPING, {new: float(row[old]) for old, new in names.items() if old in row.index})


def fit_run(
    config: SocmapConfig,
    data: PreparedData,
    plan: SplitPlan,
    run: int,
    folder: Path,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_epoch: int | None = None,
) -> RunResult:
    """Fit one model of kind ``train.model`` on ``plan.train`` (resuming a deep model from
    ``folder/checkpoint.pt``), save it and its labelled scores into ``folder``.

    The model never sees ``plan.test``: no monitoring rows are given, so a model that early-stops carves its
    early-stopping set out of ``plan.train``.

    Args:
        config: the run's configuration.
        data: the prepared windows.
        plan: training and held-out test rows.
        run: run number (seed = ``train.seed + run``).
        folder: the run's model folder.
        progress: called after every epoch of an iterative model.
        stop_after_epoch: interrupt after that epoch, as a crash would (tests of ``--resume``).
    """
    seed = config.train.seed + run
    folder.mkdir(parents=True, exist_ok=True)
    model = create_model(config.train.model, config)
    model.model_id = f"{config.name}-{config.train.model}-run{run}-seed{seed}"
    info = model.fit(data.fit_data(plan.train, seed, folder, progress, stop_after_epoch))
    save_model(model, folder)
    history = pd.DataFrame(info.history)
    fit = {k: v for k, v in info.to_json().items() if k != "warnings"}
    if plan.test.size:
        test, table = _score_rows(model, data, plan.test, TEST)
        training = _training_fit(model, data, plan.train)
        warning = degenerate_warning(table["observed"], table["predicted"], "the held-out test set")
        info.warnings.extend([warning] if warning else [])
    else:
        test = None
        training, table = _score_rows(model, data, plan.train, TRAINING_FIT)
    es = early_stopping_score(history, info.best_epoch)
    metrics = RunMetrics(run, seed, model.kind, test, training, es, fit, info.warnings)
    RunFolder.save_run_files(folder, metrics, history, table)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return RunResult(run, seed, folder, metrics, history)


def _aggregate(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in AGGREGATED:
        values = np.array([r.metrics.metrics[key] for r in runs], dtype=np.float64)
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def _open_run_folder(folder: RunFolder, config: SocmapConfig, resume: bool, overwrite: bool) -> SocmapConfig:
    """Refuse a finished or foreign folder, continue an interrupted one (``resume``: its own config)."""
    out = folder.path
    if folder.is_finished() and not overwrite:
        raise OutputError(
            f"run folder {out} already holds a finished run; pass --overwrite or choose another --out"
        )
    if resume:
        if not folder.is_run_folder():
            raise InputError(f"--resume: {out} holds no config.yaml of an interrupted run")
        return folder.load_config()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(
                f"run folder {out} exists and is not empty; pass --resume to continue it or --overwrite"
            )
        if not folder.is_run_folder():
            raise OutputError(
                f"run folder {out} is not empty and is not a socmap run folder (no config.yaml); refusing to "
                "delete it: choose a new or empty --out"
            )
        _set_aside(folder)
    try:
        check_output_dir(out, overwrite=True)
        out.mkdir(parents=True, exist_ok=True)
        folder.save_config(config)
    except Exception:
        _restore_replaced(out)
        raise
    return config


def replaced_dir(out: Path) -> Path:
    """Where ``--overwrite`` keeps the previous finished run until the new one is finished."""
    return out.with_name(f".{out.name}.replaced")


def _set_aside(folder: RunFolder) -> None:
    """Move the run folder that ``--overwrite`` replaces out of the way, keeping the last finished run: a new
    run that fails gets it back, one that is killed leaves it in :func:`replaced_dir` until a ``--resume``
    finishes."""
    out, kept = folder.path, replaced_dir(folder.path)
    if kept.exists() and not folder.is_finished():
        shutil.rmtree(out)  # an unfinished attempt; the finished run set aside before is kept
        return
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(out, kept)


def _restore_replaced(out: Path) -> bool:
    """Put back the run set aside by :func:`_set_aside` after a failed new run; True if there was one."""
    kept = replaced_dir(out)
    if not kept.is_dir():
        return False
    shutil.rmtree(out, ignore_errors=True)
    os.replace(kept, out)
    return True


def _write_split(folder: RunFolder, config: SocmapConfig, data: PreparedData, plans: list[SplitPlan]) -> None:
    """``split.csv`` (role of every sample: train / test, per run when splits vary), ``split_report.json``,
    balance report."""
    n, vary = len(data.samples), config.train.vary_split
    table = data.samples[["sample_id", "time", "lon", "lat", "target"]].copy()
    for i, plan in enumerate(plans if vary else plans[:1]):
        role = np.full(n, "unused", dtype=object)
        role[plan.train], role[plan.test] = "train", "test"
        table[f"role_run{i}" if vary else "role"] = role
    with atomic_file(folder.split_file) as tmp:
        table.to_csv(tmp, index=False)
    write_json(
        folder.split_report_file,
        {f"run{i}": p.report for i, p in enumerate(plans)} if vary else plans[0].report,
    )
    if config.sampling.balanced:
        y = data.target[plans[0].train]
        s = config.sampling
        sampler = BalancedSampler(
            y, n_bins=s.n_bins, min_fraction=s.min_fraction, binning=s.binning, seed=config.train.seed
        )
        write_json(folder.balance_report_file, balance_report(y, sampler.indices(0)))


def select_run(runs: list[RunMetrics]) -> tuple[int, str]:
    """The run kept as the folder's model, and why: the highest early-stopping R² when every run has one
    (models that early-stop), else run 0. The test set is never looked at.

    Args:
        runs: every run's metrics, by run number.
    """
    scores = [r.early_stopping.metrics.get("r2", np.nan) if r.early_stopping else np.nan for r in runs]
    if len(runs) == 1:
        return 0, "run 0: the only run"
    if all(np.isfinite(scores)):
        best = int(np.argmax(scores))
        return best, (
            f"run {best}: highest early-stopping R² ({scores[best]:.3f}) of {len(runs)} runs "
            "(the test set is never used to choose)"
        )
    return 0, (
        f"run 0: {runs[0].model} records no early-stopping score to choose by and the test set is never "
        f"used to choose, so the first run is kept (map and predict use the mean of all {len(runs)} runs)"
    )


def _mean_of_runs(data: PreparedData, runs: list[RunResult], plans: list[SplitPlan]) -> Score | None:
    """The runs' mean prediction (what map and predict use) scored on the rows held out in every run."""
    common = plans[0].test
    for plan in plans[1:]:
        common = np.intersect1d(common, plan.test)
    if common.size < 5:
        return None
    predictions = []
    for run, plan in zip(runs, plans, strict=True):
        table = pd.read_csv(RunFolder.predictions_file(run.folder))
        if len(table) != plan.test.size:  # an interrupted run folder of another version
            return None
        order = np.argsort(plan.test, kind="stable")  # rows of `common`, in its (sorted) order
        keep = order[np.isin(plan.test[order], common)]
        predictions.append(table["predicted"].to_numpy(np.float64)[keep])
    label = (
        MEAN_OF_RUNS if common.size == plans[0].test.size else f"{MEAN_OF_RUNS} (rows held out in every run)"
    )
    return Score(label, regression_metrics(data.target[common], np.mean(predictions, axis=0)))


def _fit_runs(
    config: SocmapConfig,
    data: PreparedData,
    folder: RunFolder,
    plans: list[SplitPlan],
    on_epoch: EpochHook | None,
) -> list[RunResult]:
    """Every run (a run finished before an interruption is loaded, untouched)."""
    runs: list[RunResult] = []
    for i in range(config.train.num_runs):
        run_dir = folder.run_dir(i)
        if folder.run_is_finished(i):
            metrics, history = RunFolder.load_run_files(run_dir)
            runs.append(RunResult(i, metrics.seed, run_dir, metrics, history))
            continue
        hook = (lambda e, row, i=i: on_epoch(i, e, row)) if on_epoch is not None else None
        runs.append(fit_run(config, data, plans[i], i, run_dir, progress=hook))
    return runs


def _prepare(
    config: SocmapConfig, folder: RunFolder, prepared: str | Path | None, overwrite: bool
) -> PreparedData:
    """The run folder's own prepared folder is rebuilt when its inputs changed; a user-given one (``--prepared``)
    made from another config or other input files is refused unless ``overwrite``."""
    if prepared is None:
        data, _ = prepare(config, folder.default_prepared, overwrite=True)
        return data
    data, _ = prepare(config, Path(prepared), overwrite=overwrite)
    return data


def train(
    config: SocmapConfig,
    out: str | Path,
    prepared: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train ``train.num_runs`` models of kind ``train.model`` into the run folder ``out`` and score them on a
    held-out test set none of them saw (see the module docstring).

    Args:
        config: the configuration (``resume``: replaced by the run folder's own).
        out: the run folder (see :class:`~socmap.runfolder.RunFolder`).
        prepared: prepared folder to use or create (default ``out/prepared``, rebuilt when its inputs changed);
            a given folder made from another config or other input files is refused unless ``overwrite``.
        resume: continue an interrupted run folder (finished runs are kept, a deep run resumes its checkpoint).
        overwrite: replace a finished socmap run folder (never a foreign folder) and rebuild a given prepared
            folder made from another config.
        on_epoch: called with (run, epoch, history row) after every epoch of an iterative model; the row's
            ``val_*`` values are the early-stopping set's.
    """
    folder = RunFolder(Path(out))
    config = _open_run_folder(folder, config, resume, overwrite)
    try:
        result = _train_into(folder, config, prepared, overwrite, on_epoch)
    except Exception as exc:
        if _restore_replaced(folder.path) and isinstance(exc, SocmapError) and exc.args:
            exc.args = (f"{exc.args[0]} (the previous run in {folder.path} was put back)", *exc.args[1:])
        raise
    shutil.rmtree(replaced_dir(folder.path), ignore_errors=True)  # the new run is finished
    return result


def _train_into(
    folder: RunFolder,
    config: SocmapConfig,
    prepared: str | Path | None,
    overwrite: bool,
    on_epoch: EpochHook | None,
) -> TrainResult:
    """The body of :func:`train` once the run folder is open."""
    if config.train.threads:
        import torch

        torch.set_num_threads(config.train.threads)
    data = _prepare(config, folder, prepared, overwrite)
    n = len(data.samples)
    if n < MIN_SAMPLES:
        raise InputError(f"only {n} samples after filters: too few to train (need at least {MIN_SAMPLES})")
    tcfg = config.train
    plans = [
        make_split(config, data, config.split.seed + (i if tcfg.vary_split else 0))
        for i in range(tcfg.num_runs)
    ]
    _write_split(folder, config, data, plans)
    runs = _fit_runs(config, data, folder, plans, on_epoch)
    best, selection = select_run([r.metrics for r in runs])
    save_model(load_model(runs[best].folder), folder.path)
    _calibrate(config, data, folder, plans[best], runs)
    test_rows = plans[best].test
    ceiling = (
        known_r2_ceiling(config.resolve(config.samples.path), data.samples, test_rows)
        if test_rows.size
        else None
    )
    summary = RunSummary(
        name=config.name,
        model=tcfg.model,
        n_samples=n,
        n_train=int(plans[best].train.size),
        n_test=int(test_rows.size),
        target=data.meta.target,
        best_run=best,
        selection=selection,
        runs=[r.metrics for r in runs],
        aggregate=_aggregate(runs),
        mean_of_runs=_mean_of_runs(data, runs, plans) if test_rows.size else None,
        r2_ceiling=ceiling,
        split_warning=plans[best].report.get("warning"),
        drops=data.meta.drops,
        prepared_dir=str(data.path.resolve()),
        warnings=[f"run {r.run}: {w}" for r in runs for w in r.metrics.warnings],
    )
    _scatter(folder.scatter_file, runs[best], summary, config)
    folder.save_summary(summary)  # written last: its presence marks a finished run folder
    return TrainResult(folder.path, runs, best, summary)


def _calibrate(
    config: SocmapConfig, data: PreparedData, folder: RunFolder, plan: SplitPlan, runs: list[RunResult]
) -> None:
    """Calibrate the runs' mean prediction and fit the area of applicability on the training rows
    (``uncertainty.calibration_folds`` >= 2; :mod:`socmap.uncertainty.runcal`), then score the calibrated
    intervals on the held-out test set. Without calibration, stale files of an earlier run are removed."""
    from socmap.uncertainty.aoa import AOA_FILE, AOA_TRAIN_FILE

    if config.uncertainty.calibration_folds < 2:
        for name in (CALIBRATION_FILE, CALIBRATION_OOF_FILE, AOA_FILE, AOA_TRAIN_FILE):
            (folder.path / name).unlink(missing_ok=True)
        return
    found = calibrate_run(config, data, plan.train, folder.path)
    members = [load_model(r.folder) for r in runs]
    score_test(found, members, data, plan.test, folder.path, config.uncertainty.coverages)


def _scatter(path: Path, run: RunResult, summary: RunSummary, config: SocmapConfig) -> None:
    """Predicted vs observed (original scale) of the folder's model on the test set (else the training fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.read_csv(RunFolder.predictions_file(run.folder))
    m = run.metrics.metrics
    unit = config.samples.target_unit
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.scatter(table["observed"], table["predicted"], s=6, alpha=0.5, edgecolors="none")
    hi = float(max(table["observed"].max(), table["predicted"].max()))
    lo = float(min(table["observed"].min(), table["predicted"].min()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="1:1")
    ax.set_xlabel(f"observed {config.samples.target} ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    text = f"R² {m['r2']:.3f}  RMSE {m['rmse']:.3g}\nME {m['me']:+.3g}  CCC {m['ccc']:.3f}  n {int(m['n'])}"
    if summary.mean_of_runs is not None:
        text += f"\nmean of {len(summary.runs)} runs: R² {summary.mean_of_runs.metrics['r2']:.3f}"
    if summary.r2_ceiling is not None:
        text += f"\nceiling R² {summary.r2_ceiling:.3f}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
    where = "held-out test set" if run.metrics.test is not None else "training fit (not a validation)"
    ax.set_title(f"{config.name}: {run.metrics.model} run {run.run}, {where}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
