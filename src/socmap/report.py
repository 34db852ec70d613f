"""One self-contained HTML page (images embedded) summarising a run, for a soil scientist to forward.

Sections: data and drops, training/validation points on a map, target distributions of both sides with the
KS test, training curves, observed vs predicted and residuals on the original scale, metrics, the model
comparison (from ``socmap cv``) and the SOC map and its uncertainty when given, and the config used.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from socmap import __version__
from socmap._atomic import write_text
from socmap.errors import InputError

SECTIONS = (
    "Data and drops",
    "Training and validation points",
    "Target distributions",
    "Training curves",
    "Observed vs predicted",
    "Metrics",
    "Model comparison",
    "SOC map",
    "Configuration",
)


def _png(fig: Any) -> str:
    """A matplotlib figure as an embedded <img>."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _img_file(path: Path) -> str:
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _table(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return floatfmt.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figures() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    map_path: str | Path | None = None,
    cv_dir: str | Path | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path."""
    run = Path(run_dir)
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise InputError(f"{run} is not a finished run folder (no metrics.json); run socmap train first")
    summary = json.loads(metrics_path.read_text())
    split = pd.read_csv(run / "split.csv")
    role_col = "role" if "role" in split.columns else f"role_run{summary['best_run']}"
    unit = summary.get("target", {}).get("unit", "")
    plt = _figures()
    parts: list[str] = []

    def section(title: str, body: str) -> None:
        anchor = title.lower().replace(" ", "-")
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')

    # Data and drops
    drops = summary.get("drops", {})
    meta_path = Path(summary.get("prepared_dir", run / "prepared")) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    rows = [
        ("samples used", summary["n_samples"]),
        ("training", summary["n_train"]),
        ("validation", summary["n_validation"]),
    ]
    if meta:
        rows = [
            ("input rows", meta["n_input_rows"]),
            *rows,
            ("locations", meta.get("n_locations", "")),
            ("bands", ", ".join(meta["bands"])),
            ("window", f"{meta['window_size']} px x {meta['time_steps']} steps"),
        ]
    body = _table(pd.DataFrame(rows, columns=["", "value"]))
    if drops:
        body += "<h3>Dropped samples by reason</h3>" + _table(
            pd.DataFrame(list(drops.items()), columns=["reason", "samples"])
        )
    else:
        body += "<p>No sample was dropped.</p>"
    for warning in meta.get("warnings", []):
        body += f'<p class="warn">{html.escape(warning)}</p>'
    section("Data and drops", body)

    # Points
    fig, ax = plt.subplots(figsize=(6, 6))
    for role, color in (("train", "#1f77b4"), ("validation", "#d62728")):
        sel = split[split[role_col] == role]
        ax.scatter(
            sel["lon"], sel["lat"], s=3 if role == "train" else 6, c=color, label=f"{role} ({len(sel)})"
        )
    region = _region_outline(run)
    if region is not None:
        ax.plot(*region, color="black", lw=0.8)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.legend(loc="best", fontsize=8)
    ax.set_aspect(1 / np.cos(np.deg2rad(split["lat"].mean())))
    section("Training and validation points", _png(fig))

    # Distributions + KS
    rep_path = run / "split_report.json"
    report = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    train_y = split.loc[split[role_col] == "train", "target"]
    val_y = split.loc[split[role_col] == "validation", "target"]
    bins = np.linspace(0, float(split["target"].quantile(0.995)), 50)
    ax.hist(train_y, bins=bins, density=True, alpha=0.5, label="training")
    if len(val_y):
        ax.hist(val_y, bins=bins, density=True, alpha=0.5, label="validation")
    ax.set_xlabel(f"target ({unit})")
    ax.legend()
    body = _png(fig)
    if "ks_pvalue" in report:
        body += f"<p>KS two-sample test: statistic {report['ks_statistic']:.3f}, p = {report['ks_pvalue']:.3g}.</p>"
    if report.get("warning"):
        body += f'<p class="warn">{html.escape(report["warning"])}</p>'
    section("Target distributions", body)

    # Curves
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for run_metrics in summary["runs"]:
        hist_path = run / "runs" / f"run_{run_metrics['run']}" / "history.csv"
        if not hist_path.is_file():
            continue
        hist = pd.read_csv(hist_path)
        axes[0].plot(hist["epoch"], hist["train_loss"], lw=1, label=f"run {run_metrics['run']} train")
        if "val_loss" in hist:
            axes[0].plot(
                hist["epoch"], hist["val_loss"], lw=1, ls="--", label=f"run {run_metrics['run']} val"
            )
            axes[1].plot(hist["epoch"], hist["val_r2"], lw=1, label=f"run {run_metrics['run']}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss (transformed scale)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation R² (1-SSE/SST)")
    axes[0].legend(fontsize=7)
    section("Training curves", _png(fig))

    # Observed vs predicted + residuals
    pred = pd.read_csv(run / "runs" / f"run_{summary['best_run']}" / "predictions.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    axes[0].scatter(pred["observed"], pred["predicted"], s=5, alpha=0.5)
    hi = float(max(pred["observed"].max(), pred["predicted"].max()))
    axes[0].plot([0, hi], [0, hi], color="black", lw=1)
    axes[0].set_xlabel(f"observed ({unit})")
    axes[0].set_ylabel(f"predicted ({unit})")
    axes[1].scatter(pred["predicted"], pred["observed"] - pred["predicted"], s=5, alpha=0.5)
    axes[1].axhline(0, color="black", lw=1)
    axes[1].set_xlabel(f"predicted ({unit})")
    axes[1].set_ylabel(f"residual observed - predicted ({unit})")
    section(
        "Observed vs predicted",
        f"<p>Best run {summary['best_run']}, {html.escape(summary['evaluated_on'])}.</p>" + _png(fig),
    )

    # Metrics
    keys = ["r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc"]
    per_run = pd.DataFrame(
        [
            {
                "run": r["run"],
                "seed": r["seed"],
                "best epoch": r["best_epoch"],
                **{k: r["metrics"][k] for k in keys},
            }
            for r in summary["runs"]
        ]
    )
    agg = pd.DataFrame(
        [
            {"statistic": s, **{k: summary["aggregate"][k][s] for k in keys}}
            for s in ("mean", "std", "min", "max")
        ]
    )
    body = "<p>R² is 1 - SSE/SST on the original scale; Pearson r² is shown separately.</p>"
    body += _table(per_run) + "<h3>Over runs</h3>" + _table(agg)
    if summary.get("r2_ceiling_validation") is not None:
        body += (
            f"<p>Known best possible R² on this validation set (noise-free synthetic truth): "
            f"{summary['r2_ceiling_validation']:.3f}.</p>"
        )
    section("Metrics", body)

    # Comparison
    cv = Path(cv_dir) if cv_dir is not None else run / "cv"
    if (cv / "metrics.md").is_file():
        body = f"<pre>{html.escape((cv / 'metrics.md').read_text())}</pre>"
        if (cv / "comparison.png").is_file():
            body += _img_file(cv / "comparison.png")
        section("Model comparison", body)
    else:
        section("Model comparison", "<p>No cross-validation results (run <code>socmap cv</code>).</p>")

    # Map
    body = "<p>No map given (run <code>socmap map</code> and pass <code>--map</code>).</p>"
    if map_path is not None:
        tif = Path(map_path)
        pngs = [tif.with_suffix(".png"), tif.with_name(tif.stem + "_uncertainty.png")]
        found = [p for p in pngs if p.is_file()]
        if not found:
            raise InputError(f"map {tif}: no PNG beside it ({pngs[0].name}); was it written by socmap map?")
        body = f"<p>{html.escape(str(tif))}</p>" + "".join(_img_file(p) for p in found)
    section("SOC map", body)

    section("Configuration", f"<pre>{html.escape((run / 'config.yaml').read_text())}</pre>")
    page = _page(summary, parts)
    target = Path(out) if out is not None else run / "report.html"
    write_text(target, page)
    return target


def _region_outline(run: Path) -> tuple[Any, Any] | None:
    """Exterior ring(s) of the configured region (lon, lat), for the points map."""
    import yaml

    from socmap.region import load_region

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    path = cfg.get("filters", {}).get("region")
    try:
        geom = load_region(path)
    except InputError:
        return None
    polys = list(getattr(geom, "geoms", [geom]))
    xs: list[float] = []
    ys: list[float] = []
    for poly in polys:
        x, y = poly.exterior.xy
        xs += [*x, np.nan]
        ys += [*y, np.nan]
    return np.array(xs), np.array(ys)


def _page(summary: dict[str, Any], parts: list[str]) -> str:
    best = summary["best"]["metrics"]
    title = f"socmap report: {summary.get('name', 'run')}"
    nav = " | ".join(f'<a href="#{s.lower().replace(" ", "-")}">{s}</a>' for s in SECTIONS)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}.warn{color:#a35d00;font-weight:600}pre{background:#f7f7f7;"
        "padding:1em;overflow:auto;font-size:12px}"
    )
    head = (
        f"<h1>{html.escape(title)}</h1><p>Validation R² {best['r2']:.3f}, RMSE {best['rmse']:.3g}, "
        f"ME {best['me']:+.3g}, CCC {best['ccc']:.3f} (best run {summary['best_run']}). socmap {__version__}.</p>"
        f"<nav>{nav}</nav>"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{head}{''.join(parts)}</body></html>\n"
    )
