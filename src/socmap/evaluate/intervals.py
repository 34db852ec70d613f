"""Calibrated prediction intervals and the area of applicability of a cross-validation's OOF predictions.

Every model's out-of-fold (OOF) predictions get conformal intervals (:func:`socmap.uncertainty.
cross_conformal`): the rows of fold k are calibrated on the OOF residuals of the other folds only, so the
reported coverage (PICP) is itself out of sample. The residual-scale model uses the prediction, a quantile
model's own Q05-Q95 width and the cross-validated dissimilarity index (DI) of the row.

Outputs (beside ``metrics.md``): ``intervals.csv`` (model, nominal coverage, PICP, mean width, interval score,
pooled over all OOF rows), ``calibration.png`` (observed vs nominal coverage) and ``aoa_errors.csv`` (OOF
error inside and outside the area of applicability).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap._atomic import atomic_file
from socmap.config import SocmapConfig
from socmap.metrics import interval_metrics
from socmap.models.features import WindowFeatures
from socmap.uncertainty import cross_conformal
from socmap.uncertainty.aoa import fold_dissimilarity, weighted_space, whisker_threshold
from socmap.windows import PreparedData

__all__ = [
    "CURVE",
    "add_dissimilarity",
    "add_intervals",
    "aoa_errors",
    "interval_columns",
    "interval_markdown",
    "interval_table",
    "plot_calibration",
]

CURVE = tuple(round(c, 2) for c in np.arange(0.05, 0.96, 0.05))  # the calibration plot's nominal coverages
Fold = tuple[NDArray[np.int64], NDArray[np.int64]]


def interval_columns(coverage: float) -> tuple[str, str]:
    """The predictions.csv columns of a calibrated interval, e.g. ``pi90_lower``, ``pi90_upper``."""
    pct = f"{100 * coverage:.3g}"
    return f"pi{pct}_lower", f"pi{pct}_upper"


def add_dissimilarity(
    config: SocmapConfig, data: PreparedData, folds: Sequence[Fold], predictions: pd.DataFrame
) -> float:
    """Add ``di`` (cross-validated DI of each OOF row: distance to that fold's training rows) and ``in_aoa``
    to ``predictions``; return the AOA threshold (upper whisker of the rows' DI). The feature weights are
    the importance on all samples (as CAST uses the final model's).

    Args:
        config: ``train.seed``.
        data: the prepared windows.
        folds: (train, test) rows of every fold.
        predictions: ``predictions.csv`` (columns index, fold), changed in place.
    """
    spec = data.meta.input_spec()
    raw = WindowFeatures(spec.static_channels, spec.bands).fit_transform(data.windows)
    space = weighted_space(raw, data.target, config.train.seed)
    di = fold_dissimilarity(space, folds)
    lookup = {
        (k, int(i)): float(d) for k, (_, test) in enumerate(folds) for i, d in zip(test, di[k], strict=True)
    }
    predictions["di"] = [
        lookup[(int(f), int(i))] for f, i in zip(predictions["fold"], predictions["index"], strict=True)
    ]
    threshold = whisker_threshold(np.concatenate(di))
    predictions["in_aoa"] = predictions["di"] <= threshold
    return threshold


def add_intervals(
    predictions: pd.DataFrame, coverages: Sequence[float], interval_models: Sequence[str], adaptive: bool
) -> None:
    """Add the calibrated interval columns of every coverage to ``predictions`` (in place), per model.

    Args:
        predictions: ``predictions.csv`` (observed, predicted, fold, model; q05/q95; di when computed).
        coverages: central-interval coverages.
        interval_models: models whose own Q05-Q95 width feeds the residual-scale model.
        adaptive: see :func:`socmap.uncertainty.calibrate`.
    """
    for c in coverages:
        for col in interval_columns(c):
            predictions[col] = np.nan
    for model, rows in predictions.groupby("model", sort=False).groups.items():
        part = predictions.loc[rows]
        width = (part["q95"] - part["q05"]).to_numpy() if model in interval_models else None
        di = part["di"].to_numpy() if "di" in part else None
        out = cross_conformal(
            part["observed"],
            part["predicted"],
            part["fold"],
            coverages,
            width=width,
            di=di,
            adaptive=adaptive,
        )
        for c, (lo, hi) in out.items():
            lo_col, hi_col = interval_columns(c)
            predictions.loc[rows, lo_col] = lo
            predictions.loc[rows, hi_col] = hi


def interval_table(predictions: pd.DataFrame, coverages: Sequence[float]) -> pd.DataFrame:
    """Pooled PICP, mean width and interval score of every model's calibrated intervals per coverage."""
    rows = []
    for model, part in predictions.groupby("model", sort=False):
        for c in coverages:
            lo_col, hi_col = interval_columns(c)
            ok = part[lo_col].notna()
            nan = {"picp": float("nan"), "interval_width": float("nan"), "interval_score": float("nan")}
            m = (
                interval_metrics(part.loc[ok, "observed"], part.loc[ok, lo_col], part.loc[ok, hi_col], c)
                if ok.any()
                else nan
            )
            rows.append(
                {
                    "model": model,
                    "nominal": c,
                    "picp": m["picp"],
                    "interval_width": m["interval_width"],
                    "interval_score": m["interval_score"],
                    "n": int(ok.sum()),
                }
            )
    return pd.DataFrame(rows)


def aoa_errors(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model: OOF RMSE and MAE inside and outside the AOA and the share of rows inside."""
    rows = []
    for model, part in predictions.groupby("model", sort=False):
        err = (part["predicted"] - part["observed"]).to_numpy()
        inside = part["in_aoa"].to_numpy(bool)
        row: dict[str, float | str] = {"model": str(model), "share_inside": float(inside.mean())}
        for name, sel in (("inside", inside), ("outside", ~inside)):
            row[f"rmse_{name}"] = float(np.sqrt(np.mean(err[sel] ** 2))) if sel.any() else float("nan")
            row[f"mae_{name}"] = float(np.mean(np.abs(err[sel]))) if sel.any() else float("nan")
            row[f"n_{name}"] = int(sel.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v: float) -> str:
    return "–" if not np.isfinite(v) else (f"{v:.3f}" if abs(v) < 100 else f"{v:.4g}")


def interval_markdown(
    table: pd.DataFrame,
    coverages: Sequence[float],
    nominal: float,
    aoa: pd.DataFrame | None,
    threshold: float | None,
) -> str:
    """The metrics.md sections on calibrated intervals and on the area of applicability."""
    nom = table[np.isclose(table["nominal"], nominal)].set_index("model")
    picp = {(str(r["model"]), float(r["nominal"])): float(r["picp"]) for r in table.to_dict("records")}
    width = nom["interval_width"].astype(float).to_dict()
    score = nom["interval_score"].astype(float).to_dict()
    models = list(dict.fromkeys(table["model"]))
    pct = f"{100 * nominal:.3g}"
    head = " | ".join(f"PICP {100 * c:.3g}%" for c in coverages)
    lines = [
        "## Calibrated prediction intervals",
        "",
        "Conformal intervals from out-of-fold residuals (each fold calibrated on the other folds only; "
        "locally adaptive residual scale). Pooled over all out-of-fold predictions; PICP should match the "
        "nominal coverage."
        + (" One fold: nothing to calibrate on, no intervals." if table["picp"].isna().all() else ""),
        "",
        f"| model | {head} | width {pct}% | interval score {pct}% |",
        "|---|" + "---:|" * (len(coverages) + 2),
    ]
    for m in models:
        cells = [_fmt(picp.get((str(m), float(c)), float("nan"))) for c in coverages]
        cells += [_fmt(width.get(m, float("nan"))), _fmt(score.get(m, float("nan")))]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if aoa is not None and threshold is not None:
        lines += [
            "",
            "## Area of applicability",
            "",
            f"Cross-validated dissimilarity index (DI) of every tested sample; AOA threshold {threshold:.3g} "
            "(upper whisker). Out-of-fold error inside and outside the AOA:",
            "",
            "| model | share inside | RMSE inside | RMSE outside | n outside |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in aoa.to_dict("records"):
            lines.append(
                f"| {r['model']} | {_fmt(float(r['share_inside']))} | {_fmt(float(r['rmse_inside']))} | "
                f"{_fmt(float(r['rmse_outside']))} | {int(r['n_outside'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_calibration(curve: pd.DataFrame, path: Path, title: str) -> None:
    """Observed vs nominal coverage of every model's calibrated intervals (the 1:1 line is perfect).

    Args:
        curve: :func:`interval_table` over :data:`CURVE` coverages.
        path: the PNG (written atomically).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="perfect")
    for model, part in curve.groupby("model", sort=False):
        ax.plot(part["nominal"], part["picp"], marker="o", ms=3, lw=1.2, label=str(model))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage (PICP, out of fold)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
