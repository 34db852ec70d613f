"""The ``train`` stage: split, fit any registered model kind several times, score, keep the best, write a run.

``train(config, out)`` prepares (or reuses) the windows, draws the validation split of ``split.method``, fits
``train.num_runs`` models of kind ``train.model`` with seeds ``seed .. seed+N-1`` through the model interface
(:mod:`socmap.models`), scores each on the original scale, and writes the run folder laid out by
:class:`~socmap.runfolder.RunFolder`; the best run by validation R² becomes the folder's model. The stage
knows no model kind: a kind registered later trains, maps and reports without a change here.
"""

from __future__ import annotations

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
from socmap.errors import InputError, OutputError
from socmap.metrics import interval_metrics, regression_metrics
from socmap.models import FitData, create_model, load_model, read_rows, save_model
from socmap.runfolder import AGGREGATED, RunFolder, RunMetrics, RunSummary
from socmap.sampling import BalancedSampler, balance_report
from socmap.split import split_report, splitter_for
from socmap.synth import known_r2_ceiling
from socmap.windows import PreparedData, prepare

__all__ = ["MIN_SAMPLES", "RunResult", "SplitPlan", "TrainResult", "fit_run", "make_split", "train"]

MIN_SAMPLES = 20
INTERVAL_LEVELS = (0.05, 0.5, 0.95)
EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass
class SplitPlan:
    """Training and validation sample indices of one run, and the split's report (written as JSON)."""

    train: NDArray[np.int64]
    val: NDArray[np.int64]
    report: dict[str, Any] = field(default_factory=dict)


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
    """All runs, the typed summary (``metrics.json``) and the best run (kept as the run folder's model)."""

    out: Path
    runs: list[RunResult]
    best_run: int
    summary: RunSummary


def make_split(config: SocmapConfig, data: PreparedData, seed: int) -> SplitPlan:
    """The validation split of the config's method (k-fold methods: the first fold is validation)."""
    n = len(data.samples)
    if not config.train.use_validation:
        return SplitPlan(
            np.arange(n), np.empty(0, np.int64), {"note": "no validation (use_validation false)"}
        )
    method = config.split.method
    if method == "buffered":
        raise InputError(
            f"split.method {method!r} cannot give one validation set for training; "
            "use distance-split, spatial-block or random (buffered is for `socmap cv`)"
        )
    splitter = splitter_for(
        config.split, method, 1 if method == "distance-split" else config.split.folds, seed
    )
    coords = data.samples[["lon", "lat"]]
    train_idx, val_idx = next(iter(splitter.split(coords, data.target)))
    if len(val_idx) < 5 or len(train_idx) < 10:
        raise InputError(
            f"split {method} gave {len(train_idx)} training and {len(val_idx)} validation samples: too few; "
            "use more samples, a larger split.val_ratio, or --no_validation"
        )
    report = split_report(coords, data.target, train_idx, val_idx, unit=data.meta.target.unit)
    report["method"] = method
    return SplitPlan(np.asarray(train_idx, np.int64), np.asarray(val_idx, np.int64), report)


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


def fit_run(
    config: SocmapConfig,
    data: PreparedData,
    plan: SplitPlan,
    run: int,
    folder: Path,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_epoch: int | None = None,
) -> RunResult:
    """Fit one model of kind ``train.model`` (resuming a deep model from ``folder/checkpoint.pt``), save it and
    its scores into ``folder``.

    Args:
        config: the run's configuration.
        data: the prepared windows.
        plan: training and validation rows.
        run: run number (seed = ``train.seed + run``).
        folder: the run's model folder.
        progress: called after every epoch of an iterative model.
        stop_after_epoch: interrupt after that epoch, as a crash would (tests of ``--resume``).
    """
    seed = config.train.seed + run
    folder.mkdir(parents=True, exist_ok=True)
    model = create_model(config.train.model, config)
    model.model_id = f"{config.name}-{config.train.model}-run{run}-seed{seed}"
    fit_data = FitData(
        data.windows,
        data.target,
        plan.train,
        plan.val,
        data.meta.input_spec(),
        data.coords,
        data.sigma(),
        seed,
        folder,
        progress,
        stop_after_epoch,
    )
    info = model.fit(fit_data)
    save_model(model, folder)
    has_val = plan.val.size > 0
    rows = plan.val if has_val else plan.train
    point, quantiles = model.predict_with_quantiles(read_rows(data.windows, rows), INTERVAL_LEVELS)
    table = _prediction_table(data, rows, point, quantiles)
    metrics = RunMetrics(
        run=run,
        seed=seed,
        model=model.kind,
        evaluated_on="validation" if has_val else "training (no validation held out)",
        metrics=regression_metrics(table["observed"], table["predicted"]),
        fit={k: v for k, v in info.to_json().items() if k != "warnings"},
        intervals=interval_metrics(table["observed"], table["q05"], table["q95"], 0.9)
        if quantiles is not None
        else None,
        warnings=info.warnings,
    )
    history = pd.DataFrame(info.history)
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
        shutil.rmtree(out)
    check_output_dir(out, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    folder.save_config(config)
    return config


def _write_split(folder: RunFolder, config: SocmapConfig, data: PreparedData, plans: list[SplitPlan]) -> None:
    """``split.csv`` (role of every sample, per run when splits vary), ``split_report.json``, balance report."""
    n, vary = len(data.samples), config.train.vary_split
    table = data.samples[["sample_id", "time", "lon", "lat", "target"]].copy()
    for i, plan in enumerate(plans if vary else plans[:1]):
        role = np.full(n, "unused", dtype=object)
        role[plan.train], role[plan.val] = "train", "validation"
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


def train(
    config: SocmapConfig,
    out: str | Path,
    prepared: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train ``train.num_runs`` models of kind ``train.model`` into the run folder ``out``; keep the best.

    Args:
        config: the configuration (``resume``: replaced by the run folder's own).
        out: the run folder (see :class:`~socmap.runfolder.RunFolder`).
        prepared: prepared folder to use or create (default ``out/prepared``).
        resume: continue an interrupted run folder (finished runs are kept, a deep run resumes its checkpoint).
        overwrite: replace a finished socmap run folder (never a foreign folder).
        on_epoch: called with (run, epoch, history row) after every epoch of an iterative model.
    """
    folder = RunFolder(Path(out))
    config = _open_run_folder(folder, config, resume, overwrite)
    if config.train.threads:
        import torch

        torch.set_num_threads(config.train.threads)
    prepared_dir = Path(prepared) if prepared is not None else folder.default_prepared
    data, _ = prepare(config, prepared_dir, overwrite=True)
    n = len(data.samples)
    if n < MIN_SAMPLES:
        raise InputError(f"only {n} samples after filters: too few to train (need at least {MIN_SAMPLES})")
    tcfg = config.train
    plans = [
        make_split(config, data, config.split.seed + (i if tcfg.vary_split else 0))
        for i in range(tcfg.num_runs)
    ]
    _write_split(folder, config, data, plans)
    runs: list[RunResult] = []
    for i in range(tcfg.num_runs):
        run_dir = folder.run_dir(i)
        if folder.run_is_finished(i):  # finished before an interruption: untouched
            metrics, history = RunFolder.load_run_files(run_dir)
            runs.append(RunResult(i, metrics.seed, run_dir, metrics, history))
            continue
        hook = (lambda e, row, i=i: on_epoch(i, e, row)) if on_epoch is not None else None
        runs.append(fit_run(config, data, plans[i], i, run_dir, progress=hook))
    best = max(
        runs, key=lambda r: r.metrics.metrics["r2"] if np.isfinite(r.metrics.metrics["r2"]) else -np.inf
    )
    save_model(load_model(best.folder), folder.path)
    ceiling = (
        known_r2_ceiling(config.resolve(config.samples.path), data.samples, plans[best.run].val)
        if tcfg.use_validation
        else None
    )
    summary = RunSummary(
        name=config.name,
        model=tcfg.model,
        n_samples=n,
        n_train=int(plans[best.run].train.size),
        n_validation=int(plans[best.run].val.size),
        n_test=0,
        evaluated_on=best.metrics.evaluated_on,
        target=data.meta.target,
        best_run=best.run,
        runs=[r.metrics for r in runs],
        aggregate=_aggregate(runs),
        r2_ceiling=ceiling,
        split_warning=plans[best.run].report.get("warning"),
        drops=data.meta.drops,
        prepared_dir=str(prepared_dir.resolve()),
        warnings=[f"run {r.run}: {w}" for r in runs for w in r.metrics.warnings],
    )
    _scatter(folder.scatter_file, best, config, ceiling)
    folder.save_summary(summary)  # written last: its presence marks a finished run folder
    return TrainResult(folder.path, runs, best.run, summary)


def _scatter(path: Path, run: RunResult, config: SocmapConfig, ceiling: float | None) -> None:
    """Predicted vs observed (original scale) of the best run, with its metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.read_csv(RunFolder.predictions_file(run.folder))
    m = run.metrics.metrics
    unit = config.samples.target_unit
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.scatter(table["observed"], table["predicted"], s=6, alpha=0.5, edgecolors="none")
    hi = float(max(table["observed"].max(), table["predicted"].max()))
    lo = float(min(table["observed"].min(), table["predicted"].min(), 0))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="1:1")
    ax.set_xlabel(f"observed {config.samples.target} ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    text = f"R² {m['r2']:.3f}  RMSE {m['rmse']:.3g}\nME {m['me']:+.3g}  CCC {m['ccc']:.3f}  n {int(m['n'])}"
    if ceiling is not None:
        text += f"\nceiling R² {ceiling:.3f}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_title(f"{config.name}: {run.metrics.model} run {run.run}, {run.metrics.evaluated_on}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
