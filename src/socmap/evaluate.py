"""Cross-validation of the deep model against the baselines, on identical folds.

The fold indices are generated once (``folds.csv``) and every model is fitted and scored on exactly those
folds, from the same prepared windows, so differences between models are differences between models, not
between validation sets. Metrics are on the original target scale (R² = 1 - SSE/SST, never Pearson r²).

The deep model never sees its test fold before predicting it: early stopping monitors an inner validation set
split off the fold's TRAINING part with the config's ``split.method`` (``buffered``, which has no single
validation set, falls back to ``distance-split`` with ``split.val_ratio`` and ``split.distance_km``); with
``train.use_validation: false`` it trains a fixed ``train.epochs`` on the whole training part instead. The
baselines have no early stopping and are fitted on the whole training part. One deep run per fold.

With ``buffered`` (leave one location out) a fold is one location, so per-fold metrics are left NaN and only
the pooled metrics (over all out-of-fold predictions) are reported.

Output folder: ``folds.csv`` (index, sample_id, time, fold: test membership), ``predictions.csv``
(out-of-fold, one row per model and test sample), ``metrics_per_fold.csv``, ``metrics_summary.csv`` (mean,
std, min, max over folds and the pooled value over all out-of-fold predictions), ``metrics.md``,
``comparison.png``, ``cv.json``, ``config.yaml`` and ``models/cnn_lstm/fold_<k>/`` (each fold's deep model).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap._atomic import atomic_file, check_output_dir, write_json, write_text
from socmap.baselines import BASELINES, INTERVAL_BASELINES, make_baseline, predict_quantiles
from socmap.config import SocmapConfig, dump_config
from socmap.errors import InputError, OutputError
from socmap.metrics import interval_metrics, regression_metrics
from socmap.split import make_splitter
from socmap.windows import PreparedData

DEEP_MODELS = ("cnn_lstm",)
MODELS: tuple[str, ...] = (*DEEP_MODELS, *BASELINES)
CV_DESIGNS = ("spatial-block", "buffered", "random", "distance-split", "knndm")
N_PREDICTION_POINTS = 2000
POINT_METRICS = ("r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc")
INTERVAL_METRICS = ("picp", "interval_width", "interval_score")
NOMINAL = 0.9  # the q05..q95 interval
INTERVAL_LOSSES = ("quantile", "gaussian_nll")
# what metrics.md and comparison.png show (the CSV files hold every metric)
REPORTED = ("r2", "rmse", "mae", "me", "rpiq", "ccc", *INTERVAL_METRICS)
LABELS = {
    "r2": "R²",
    "pearson_r2": "Pearson r²",
    "rmse": "RMSE",
    "mae": "MAE",
    "me": "ME",
    "rpiq": "RPIQ",
    "ccc": "CCC",
    "picp": "PICP (90%)",
    "interval_width": "interval width",
    "interval_score": "interval score",
}

IntArray = NDArray[np.int64]
Fold = tuple[IntArray, IntArray]


@dataclass
class CVResult:
    """The tables written to ``out`` (see the module docstring), plus the known R² ceiling if any."""

    out: Path
    cv: str
    folds: pd.DataFrame
    predictions: pd.DataFrame
    per_fold: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    r2_ceiling: float | None


# --------------------------------------------------------------------------------------------------- folds


def make_cv(config: SocmapConfig, cv: str, folds: int, seed: int) -> Any:
    """The cross-validator of design ``cv`` with the config's distances and block size.

    ``buffered``: ``folds`` locations left out in turn (drawn with ``seed``), buffer ``split.distance_km``.
    ``distance-split``: ``folds`` repeated hold-out splits (``split.val_ratio``, ``split.distance_km``) with
    seeds ``seed .. seed+folds-1``; test sets may overlap and need not cover every sample.
    """
    if cv not in CV_DESIGNS:
        raise InputError(f"cv {cv!r}: expected one of {', '.join(CV_DESIGNS)}")
    if (
        isinstance(folds, bool)
        or not isinstance(folds, int)
        or folds < (1 if cv in ("buffered", "distance-split") else 2)
    ):
        raise InputError(f"folds {folds!r}: expected an integer >= 2 (>= 1 for buffered and distance-split)")
    s = config.split
    if cv == "spatial-block":
        return make_splitter(cv, n_splits=folds, block_size_km=s.block_size_km, seed=seed)
    if cv == "random":
        return make_splitter(cv, n_splits=folds, seed=seed)
    if cv == "buffered":
        return make_splitter(cv, buffer_km=s.distance_km, n_splits=folds, seed=seed)
    if cv == "knndm":
        return make_splitter(cv, prediction_points=prediction_points(config, seed), n_splits=folds, seed=seed)
    return make_splitter(cv, val_ratio=s.val_ratio, min_distance_km=s.distance_km, n_splits=folds, seed=seed)


def prediction_points(config: SocmapConfig, seed: int, n: int = N_PREDICTION_POINTS) -> NDArray[np.float64]:
    """``n`` random lon/lat points inside the region to be mapped (``filters.region``, else Bavaria) for kNNDM."""
    import shapely

    from socmap.region import load_region

    region = load_region(config.resolve(config.filters.region) if config.filters.region is not None else None)
    minx, miny, maxx, maxy = region.bounds
    rng = np.random.default_rng(seed)
    points: list[NDArray[np.float64]] = []
    total = 0
    while total < n:
        cand = np.column_stack([rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n)])
        cand = cand[shapely.contains_xy(region, cand[:, 0], cand[:, 1])]
        points.append(cand)
        total += len(cand)
    return np.concatenate(points)[:n]


def make_folds(config: SocmapConfig, data: PreparedData, cv: str, folds: int, seed: int) -> list[Fold]:
    """(train, test) index arrays of every fold, generated once for all models."""
    splitter = make_cv(config, cv, folds, seed)
    out = []
    for train, test in splitter.split(data.samples[["lon", "lat"]], data.target):
        out.append((np.asarray(train, np.int64), np.asarray(test, np.int64)))
    return out


def folds_table(data: PreparedData, folds: list[Fold]) -> pd.DataFrame:
    """One row per (fold, test sample): index (row in the prepared data), sample_id, time, fold."""
    ids = data.samples["sample_id"].to_numpy()
    times = data.samples["time"].to_numpy()
    parts = [
        pd.DataFrame({"index": test, "sample_id": ids[test], "time": times[test], "fold": k})
        for k, (_, test) in enumerate(folds)
    ]
    return pd.concat(parts, ignore_index=True)


# -------------------------------------------------------------------------------------------------- models


@dataclass
class _FoldPrediction:
    predicted: NDArray[np.float64]
    intervals: tuple[NDArray[np.float64], NDArray[np.float64]] | None
    seconds: float
    n_train: int


def inner_plan(config: SocmapConfig, data: PreparedData, train: IntArray, seed: int) -> Any:
    """The deep model's training / early-stopping split of a fold's training part (never its test part).

    Uses :func:`socmap.train.make_split` on the training samples only, with the config's split method
    (``buffered`` -> ``distance-split``); indices are mapped back to rows of ``data``.
    """
    from socmap.train import SplitPlan, make_split

    cfg = config.model_copy(deep=True)
    if cfg.split.method == "buffered":
        cfg.split.method = "distance-split"
    subset = PreparedData(data.path, data.windows, data.samples.iloc[train].reset_index(drop=True), data.meta)
    plan = make_split(cfg, subset, seed)
    return SplitPlan(train[plan.train], train[plan.val], plan.report)


def _fit_deep(
    config: SocmapConfig, data: PreparedData, train: IntArray, test: IntArray, folder: Path, seed: int
) -> _FoldPrediction:
    from socmap.predictor import load_predictor
    from socmap.train import fit_run

    started = time.perf_counter()
    plan = inner_plan(config, data, train, seed)
    if folder.exists():
        shutil.rmtree(folder)  # a stale checkpoint.pt would be resumed by fit_run
    result = fit_run(config, data, plan, 0, folder)
    predictor = load_predictor(result.folder)
    windows = np.asarray(data.windows[test])
    predicted = predictor.predict(windows)
    intervals = None
    if config.train.loss_type in INTERVAL_LOSSES:
        q = predictor.predict_intervals(windows)
        if q is not None:
            intervals = (q["q05"], q["q95"])
    return _FoldPrediction(predicted, intervals, time.perf_counter() - started, int(plan.train.size))


def _fit_baseline(
    name: str,
    data: PreparedData,
    train: IntArray,
    test: IntArray,
    seed: int,
    n_jobs: int,
    params: dict[str, Any],
) -> _FoldPrediction:
    started = time.perf_counter()
    bands = list(data.meta["bands"])
    static = [bands.index(b) for b in data.meta["static_bands"]]
    pipe = make_baseline(name, seed=seed, n_jobs=n_jobs, static_channels=static, band_names=bands, **params)
    pipe.fit(np.asarray(data.windows[train]), data.target[train])
    windows = np.asarray(data.windows[test])
    predicted = np.asarray(pipe.predict(windows), dtype=np.float64)
    q = predict_quantiles(pipe, windows)
    intervals = (q[:, 0], q[:, -1]) if q is not None else None
    return _FoldPrediction(predicted, intervals, time.perf_counter() - started, int(train.size))


def has_intervals(config: SocmapConfig, model: str) -> bool:
    """Whether ``model`` gives a 90% prediction interval (qrf; the deep model with an interval loss)."""
    return model in INTERVAL_BASELINES or (model in DEEP_MODELS and config.train.loss_type in INTERVAL_LOSSES)


def check_models(models: Sequence[str]) -> list[str]:
    """Validated model names in the given order (duplicates dropped)."""
    names = list(dict.fromkeys(m.strip() for m in models))
    if not names:
        raise InputError(f"models: expected at least one of {', '.join(MODELS)}")
    for m in names:
        if m not in MODELS:
            raise InputError(f"model {m!r}: expected one of {', '.join(MODELS)}")
    return names


# ------------------------------------------------------------------------------------------------- metrics


def fold_metrics(table: pd.DataFrame, with_intervals: bool, scored: bool = True) -> dict[str, float]:
    """Point (and interval) metrics of one set of predictions; NaN when fewer than 2 samples or not
    ``scored``."""
    out: dict[str, float] = {"n": float(len(table))}
    if scored and len(table) >= 2:
        out |= {
            k: v for k, v in regression_metrics(table["observed"], table["predicted"]).items() if k != "n"
        }
    else:
        out |= dict.fromkeys(POINT_METRICS, float("nan"))
    if scored and with_intervals and len(table):
        m = interval_metrics(table["observed"], table["q05"], table["q95"], NOMINAL)
        out |= {k: m[k] for k in INTERVAL_METRICS}
    else:
        out |= dict.fromkeys(INTERVAL_METRICS, float("nan"))
    return out


def summarize(per_fold: pd.DataFrame, predictions: pd.DataFrame, interval_models: set[str]) -> pd.DataFrame:
    """Long table: model, metric, mean / std (ddof 1) / min / max over folds with a finite value, n_folds,
    and ``pooled`` = the metric over all out-of-fold predictions of the model at once."""
    rows = []
    for model, group in per_fold.groupby("model", sort=False):
        pooled = fold_metrics(predictions[predictions["model"] == model], model in interval_models)
        for metric in (*POINT_METRICS, *INTERVAL_METRICS):
            values = group[metric].to_numpy(np.float64)
            values = values[np.isfinite(values)]
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "mean": float(values.mean()) if values.size else float("nan"),
                    "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                    "min": float(values.min()) if values.size else float("nan"),
                    "max": float(values.max()) if values.size else float("nan"),
                    "n_folds": int(values.size),
                    "pooled": pooled[metric],
                }
            )
    return pd.DataFrame(rows)


def _cell(value: float, std: float | None = None) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"
    if std is not None and np.isfinite(std):
        text += f" ± {std:.3f}" if abs(std) < 100 else f" ± {std:.4g}"
    return text


def markdown_report(summary: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """Markdown: mean ± std over folds per model and metric, then the pooled out-of-fold values."""
    models = list(dict.fromkeys(summary["model"]))
    metrics = [m for m in REPORTED if summary.loc[summary["metric"] == m, "pooled"].notna().any()]
    head = "| model | " + " | ".join(LABELS[m] for m in metrics) + " |"
    rule = "|---|" + "---:|" * len(metrics)
    lines = [f"# {title}", "", *notes, "", "Mean ± standard deviation over folds:", "", head, rule]
    index = summary.set_index(["model", "metric"])
    for model in models:
        cells = [
            _cell(float(index.loc[(model, m), "mean"]), float(index.loc[(model, m), "std"])) for m in metrics
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Pooled over all out-of-fold predictions:", "", head, rule]
    for model in models:
        cells = [_cell(float(index.loc[(model, m), "pooled"])) for m in metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(per_fold: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str) -> None:
    """One panel per reported metric: a box per model over folds (a bar of the pooled value when the folds
    are too small for per-fold metrics, as with buffered leave-one-out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    metrics = [m for m in REPORTED if summary.loc[summary["metric"] == m, "pooled"].notna().any()]
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), dpi=110, squeeze=False)
    pooled = summary.set_index(["model", "metric"])["pooled"]
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        data = [per_fold.loc[per_fold["model"] == m, metric].dropna().to_numpy() for m in models]
        if all(len(d) >= 2 for d in data if len(d)) and any(len(d) >= 2 for d in data):
            ax.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=models, showmeans=True)
        else:
            ax.bar(models, [float(pooled[(m, metric)]) for m in models], color="tab:blue")
            ax.set_title("(pooled)", fontsize=7, loc="right")
        if metric == "picp":
            ax.axhline(NOMINAL, color="black", lw=0.8, ls="--")
        if metric == "me":
            ax.axhline(0.0, color="black", lw=0.8, ls="--")
        ax.set_title(LABELS[metric], fontsize=9, loc="left")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- the driver


def cross_validate(
    config: SocmapConfig,
    data: PreparedData,
    models: Sequence[str] = MODELS,
    cv: str = "spatial-block",
    folds: int | None = None,
    out: str | Path = "cv",
    seed: int | None = None,
    overwrite: bool = False,
    baseline_params: dict[str, dict[str, Any]] | None = None,
    n_jobs: int = 2,
    progress: Callable[[str], None] | None = None,
) -> CVResult:
    """Cross-validate ``models`` on identical folds of design ``cv`` and write the tables into ``out``.

    ``folds`` defaults to ``split.folds``; ``seed`` (default ``split.seed``) draws the folds, the models are
    seeded with ``train.seed``. The deep model trains ``train.epochs`` (one run per fold, early stopping on
    an inner split of fold k's training part drawn with ``seed + k``). ``baseline_params`` maps a baseline
    name to model options, e.g. ``{"rf": {"n_estimators": 1000, "max_depth": 10}}``. ``out`` may already
    hold other files (e.g. the prepared folder) but not a finished cross-validation unless ``overwrite``.
    """
    names = check_models(models)
    params = baseline_params or {}
    for key in params:
        if key not in BASELINES:
            raise InputError(f"baseline_params {key!r}: expected one of {', '.join(BASELINES)}")
    for name in names:
        if name in BASELINES:
            make_baseline(name, **params.get(name, {}))  # bad options fail now, not after hours of training
    n_folds = config.split.folds if folds is None else folds
    fold_seed = config.split.seed if seed is None else seed
    out = Path(out)
    if (out / "metrics_summary.csv").is_file() and not overwrite:
        raise OutputError(f"{out} already holds a cross-validation; pass --overwrite or choose another --out")
    check_output_dir(out, overwrite=True)
    say = progress or (lambda _msg: None)

    fold_list = make_folds(config, data, cv, n_folds, fold_seed)
    out.mkdir(parents=True, exist_ok=True)
    fold_rows_table = folds_table(data, fold_list)
    with atomic_file(out / "folds.csv") as tmp:
        fold_rows_table.to_csv(tmp, index=False)
    write_text(out / "config.yaml", dump_config(config))
    if config.train.threads and any(m in DEEP_MODELS for m in names):
        import torch

        torch.set_num_threads(config.train.threads)

    from socmap.train import r2_ceiling_for

    ids, times, y = data.samples["sample_id"].to_numpy(), data.samples["time"].to_numpy(), data.target
    ceilings = [r2_ceiling_for(config, data, test) if test.size >= 2 else None for _, test in fold_list]
    interval_models = {m for m in names if has_intervals(config, m)}
    pred_parts, fold_rows = [], []
    for model in names:
        for k, (train, test) in enumerate(fold_list):
            say(f"{model}: fold {k + 1}/{len(fold_list)} ({train.size} training, {test.size} test samples)")
            if model in DEEP_MODELS:
                folder = out / "models" / model / f"fold_{k:02d}"
                fp = _fit_deep(config, data, train, test, folder, fold_seed + k)
            else:
                fp = _fit_baseline(model, data, train, test, config.train.seed, n_jobs, params.get(model, {}))
            table = pd.DataFrame(
                {
                    "index": test,
                    "sample_id": ids[test],
                    "time": times[test],
                    "fold": k,
                    "model": model,
                    "observed": y[test],
                    "predicted": fp.predicted,
                }
            )
            if model in interval_models:
                if fp.intervals is None:
                    raise InputError(f"model {model!r} gave no prediction interval")  # pragma: no cover
                table["q05"], table["q95"] = fp.intervals
            pred_parts.append(table)
            row: dict[str, Any] = {"model": model, "fold": k, "n_train": fp.n_train}
            row |= fold_metrics(table, model in interval_models, scored=cv != "buffered")
            row |= {"r2_ceiling": ceilings[k], "seconds": round(fp.seconds, 3)}
            fold_rows.append(row)
    predictions = pd.concat(pred_parts, ignore_index=True)
    if not interval_models:
        predictions["q05"], predictions["q95"] = np.nan, np.nan
    per_fold = pd.DataFrame(fold_rows)
    summary = summarize(per_fold, predictions, interval_models)
    tested = np.unique(np.concatenate([t for _, t in fold_list]))
    ceiling = r2_ceiling_for(config, data, tested) if tested.size >= 2 else None

    title = f"{config.name}: {cv} cross-validation, {len(fold_list)} folds"
    notes = [
        f"{len(data.samples)} samples; {tested.size} tested at least once; target unit "
        f"{data.meta['target']['unit']}. R² = 1 - SSE/SST. Intervals: Q05-Q95 (nominal 90%).",
    ]
    if ceiling is not None:
        notes.append(f"Known R² ceiling of the tested samples (noise-free truth, pooled): {ceiling:.3f}.")
    markdown = markdown_report(summary, title, notes)
    with atomic_file(out / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    with atomic_file(out / "metrics_per_fold.csv") as tmp:
        per_fold.to_csv(tmp, index=False)
    write_text(out / "metrics.md", markdown)
    plot_comparison(per_fold, summary, out / "comparison.png", title)
    write_json(
        out / "cv.json",
        {
            "name": config.name,
            "cv": cv,
            "folds": len(fold_list),
            "seed": fold_seed,
            "models": names,
            "n_samples": len(data.samples),
            "n_tested": int(tested.size),
            "r2_ceiling": ceiling,
            "deep_epochs": config.train.epochs,
            "deep_early_stopping": "inner split of the training part"
            if config.train.use_validation
            else "none",
            "baseline_params": params,
        },
    )
    with atomic_file(out / "metrics_summary.csv") as tmp:  # written last: marks a finished cross-validation
        summary.to_csv(tmp, index=False)
    return CVResult(out, cv, fold_rows_table, predictions, per_fold, summary, markdown, ceiling)
