"""The tables and figures of a cross-validation, recomputed from the out-of-fold predictions alone."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from socmap._atomic import atomic_file
from socmap.metrics import interval_metrics, regression_metrics

__all__ = [
    "INTERVAL_METRICS",
    "LABELS",
    "NOMINAL",
    "POINT_METRICS",
    "REPORTED",
    "fold_metrics",
    "markdown_report",
    "plot_comparison",
    "summarize",
]

POINT_METRICS = ("r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc")
INTERVAL_METRICS = ("picp", "interval_width", "interval_score")
NOMINAL = 0.9  # the q05..q95 interval
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
    "picp": "own PICP (90%)",
    "interval_width": "own interval width",
    "interval_score": "own interval score",
}


def fold_metrics(table: pd.DataFrame, with_intervals: bool, scored: bool = True) -> dict[str, float]:
    """Point (and interval) metrics of one set of predictions.

    Args:
        table: columns observed, predicted (and q05, q95 for intervals).
        with_intervals: compute PICP, width and interval score of the q05..q95 interval.
        scored: False leaves every metric NaN (folds too small to score, e.g. one location); so do fewer
            than 2 rows.
    """
    out: dict[str, float] = {"n": float(len(table))}
    if scored and len(table) >= 2:
        metrics = regression_metrics(table["observed"], table["predicted"])
        out |= {k: v for k, v in metrics.items() if k != "n"}
    else:
        out |= dict.fromkeys(POINT_METRICS, float("nan"))
    if scored and with_intervals and len(table):
        m = interval_metrics(table["observed"], table["q05"], table["q95"], NOMINAL)
        out |= {k: m[k] for k in INTERVAL_METRICS}
    else:
        out |= dict.fromkeys(INTERVAL_METRICS, float("nan"))
    return out


def _stats(values: np.ndarray) -> dict[str, float | int]:
    values = values[np.isfinite(values)]
    nan = float("nan")
    return {
        "mean": float(values.mean()) if values.size else nan,
        "std": float(values.std(ddof=1)) if values.size > 1 else nan,
        "min": float(values.min()) if values.size else nan,
        "max": float(values.max()) if values.size else nan,
        "n_folds": int(values.size),
    }


def summarize(
    per_fold: pd.DataFrame, predictions: pd.DataFrame, interval_models: Collection[str]
) -> pd.DataFrame:
    """Long table: model, metric, mean / std (ddof 1) / min / max over folds with a finite value, n_folds,
    and ``pooled`` = the metric over all out-of-fold predictions of the model at once.

    Args:
        per_fold: ``metrics_per_fold.csv``.
        predictions: ``predictions.csv``.
        interval_models: models whose q05..q95 intervals are scored.
    """
    rows = []
    for model, group in per_fold.groupby("model", sort=False):
        pooled = fold_metrics(predictions[predictions["model"] == model], model in interval_models)
        for metric in (*POINT_METRICS, *INTERVAL_METRICS):
            stats = _stats(group[metric].to_numpy(np.float64))
            rows.append({"model": model, "metric": metric, **stats, "pooled": pooled[metric]})
    return pd.DataFrame(rows)


def _cell(value: float, std: float | None = None) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"
    if std is not None and np.isfinite(std):
        text += f" ± {std:.3f}" if abs(std) < 100 else f" ± {std:.4g}"
    return text


def _reported(summary: pd.DataFrame) -> list[str]:
    return [m for m in REPORTED if summary.loc[summary["metric"] == m, "pooled"].notna().any()]


def markdown_report(summary: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """Markdown: mean ± std over folds per model and metric, then the pooled out-of-fold values.

    Args:
        summary: ``metrics_summary.csv``.
        title: the heading.
        notes: paragraphs under the heading.
    """
    models = list(dict.fromkeys(summary["model"]))
    metrics = _reported(summary)
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
    are too small for per-fold metrics, as with buffered leave-one-out, or too few to draw a box).

    Args:
        per_fold: ``metrics_per_fold.csv``.
        summary: ``metrics_summary.csv``.
        path: the PNG file (written atomically).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    metrics = _reported(summary)
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
        if metric in ("picp", "me"):
            ax.axhline(NOMINAL if metric == "picp" else 0.0, color="black", lw=0.8, ls="--")
        ax.set_title(LABELS[metric], fontsize=9, loc="left")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
