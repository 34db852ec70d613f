"""One self-contained HTML page (images embedded) summarising a run, for a soil scientist to forward.

Sections: data and drops, the samples of every split role on a map (with the configured region, or the
covariate grid's extent), target distributions of the roles with the KS test, training curves, observed vs
predicted and residuals on the original scale, metrics, the model comparison (from ``socmap cv``, as a table of
pooled out-of-fold metrics with the fold mean ± sd), the map and its uncertainty when given, and the config
used. Labels name the target and its unit (any soil property: OC, pH, ...); axes follow the data's range.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from socmap import __version__
from socmap._atomic import write_text
from socmap.errors import InputError
from socmap.runfolder import RunFolder, RunSummary
from socmap.windows import PreparedMeta

__all__ = ["SECTIONS", "build_report"]

SECTIONS = (
    "Data and drops",
    "Sample locations",
    "Target distributions",
    "Training curves",
    "Variogram",
    "Observed vs predicted",
    "Metrics",
    "Model comparison",
    "Prediction intervals",
    "Map",
    "Where this map can be trusted",
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


@dataclass
class _Context:
    """What every section reads: the run folder, its typed summary, prepared metadata and split table."""

    run: RunFolder
    summary: RunSummary
    meta: PreparedMeta | None
    split: pd.DataFrame
    role_col: str

    @property
    def unit(self) -> str:
        return self.summary.target.unit

    @property
    def target(self) -> str:
        return self.summary.target.column

    def roles(self) -> list[str]:
        """The split roles present (training first; ``unused`` rows are left out)."""
        found = [str(r) for r in dict.fromkeys(self.split[self.role_col]) if str(r) != "unused"]
        return sorted(found, key=lambda r: (r != "train", found.index(r)))


def _load_context(run_dir: Path) -> _Context:
    run = RunFolder(run_dir)
    if not run.is_finished():
        raise InputError(f"{run_dir} is not a finished run folder (no metrics.json); run socmap train first")
    summary = run.load_summary()
    meta_path = Path(summary.prepared_dir or run.default_prepared) / "meta.json"
    meta = PreparedMeta.from_json(json.loads(meta_path.read_text())) if meta_path.is_file() else None
    split = pd.read_csv(run.split_file)
    role_col = "role" if "role" in split.columns else f"role_run{summary.best_run}"
    return _Context(run, summary, meta, split, role_col)


def _data_section(ctx: _Context) -> str:
    s, meta = ctx.summary, ctx.meta
    rows: list[tuple[str, Any]] = [
        ("samples used", s.n_samples),
        ("training", s.n_train),
        ("held-out test", s.n_test),
    ]
    if meta is not None:
        rows = [
            ("input rows", meta.n_input_rows),
            *rows,
            ("locations", meta.n_locations),
            ("bands", ", ".join(meta.bands)),
            ("window", f"{meta.window_size} px x {meta.time_steps} steps"),
        ]
    body = _table(pd.DataFrame(rows, columns=["", "value"]))
    if s.drops:
        body += "<h3>Dropped samples by reason</h3>" + _table(
            pd.DataFrame(list(s.drops.items()), columns=["reason", "samples"])
        )
    else:
        body += "<p>No sample was dropped.</p>"
    for warning in meta.warnings if meta is not None else []:
        body += f'<p class="warn">{html.escape(warning)}</p>'
    return body


def _points_section(ctx: _Context) -> str:
    plt = _figures()
    fig, ax = plt.subplots(figsize=(6, 6))
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b")
    for i, role in enumerate(ctx.roles()):
        sel = ctx.split[ctx.split[ctx.role_col] == role]
        size = 3 if role == "train" else 6
        ax.scatter(sel["lon"], sel["lat"], s=size, c=colors[i % len(colors)], label=f"{role} ({len(sel)})")
    outline, what = _region_outline(ctx)
    if outline is not None:
        ax.plot(*outline, color="black", lw=0.8, label=what)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.legend(loc="best", fontsize=8)
    ax.set_aspect(1 / np.cos(np.deg2rad(ctx.split["lat"].mean())))
    return _png(fig)


def _value_range(values: pd.Series, low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
    """(lo, hi) of the finite values between two quantiles, widened when (nearly) constant."""
    finite = values[np.isfinite(values)]
    if finite.empty:
        return (0.0, 1.0)
    lo, hi = float(finite.quantile(low)), float(finite.quantile(high))
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
        return (lo - 0.5, hi + 0.5)
    return (lo, hi)


def _distribution_section(ctx: _Context) -> str:
    plt = _figures()
    path = ctx.run.split_report_file
    report = json.loads(path.read_text()) if path.is_file() else {}
    split, role = ctx.split, ctx.split[ctx.role_col]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    n_bins = int(np.clip(len(split) // 4, 10, 50))
    bins = np.linspace(*_value_range(split["target"], 0.005, 0.995), n_bins)  # the data's range, not from 0
    for name in ctx.roles():
        values = split.loc[role == name, "target"]
        if len(values):
            label = "training" if name == "train" else name
            ax.hist(values, bins=bins, density=True, alpha=0.5, label=f"{label} ({len(values)})")
    ax.set_xlabel(f"{ctx.target} ({ctx.unit})")
    ax.legend()
    body = _png(fig)
    if "ks_pvalue" in report:
        body += f"<p>KS two-sample test: statistic {report['ks_statistic']:.3f}, p = {report['ks_pvalue']:.3g}.</p>"
    if report.get("warning"):
        body += f'<p class="warn">{html.escape(report["warning"])}</p>'
    return body


def _curves_section(ctx: _Context) -> str:
    histories = []
    for r in ctx.summary.runs:
        path = RunFolder.history_file(ctx.run.run_dir(r.run))
        try:
            histories.append((r.run, pd.read_csv(path)))
        except (FileNotFoundError, pd.errors.EmptyDataError):
            continue
    histories = [(i, h) for i, h in histories if "epoch" in h]
    if not histories:
        return f"<p>{html.escape(ctx.summary.model)} is not trained in epochs: no training curves.</p>"
    plt = _figures()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for i, hist in histories:
        axes[0].plot(hist["epoch"], hist["train_loss"], lw=1, label=f"run {i} train")
        if "val_loss" in hist:
            axes[0].plot(hist["epoch"], hist["val_loss"], lw=1, ls="--", label=f"run {i} early-stopping set")
            axes[1].plot(hist["epoch"], hist["val_r2"], lw=1, label=f"run {i}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss (transformed scale)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("early-stopping set R² (1-SSE/SST)")
    axes[0].legend(fontsize=7)
    return _png(fig)


def _variogram_section(ctx: _Context) -> str:
    """The fitted variogram of a kriging model (rk: of the base model's out-of-fold residuals) over its
    empirical variogram, per run, read from ``model.json``; a note for other models."""
    fitted = []
    for r in ctx.summary.runs:
        path = ctx.run.run_dir(r.run) / "model.json"
        state = json.loads(path.read_text()).get("state", {}) if path.is_file() else {}
        if isinstance(state, dict) and isinstance(state.get("variogram"), dict):
            fitted.append((r.run, state["variogram"], "base" in state))
    if not fitted:
        return f"<p>{html.escape(ctx.summary.model)} does not krige: no variogram.</p>"
    from socmap.kriging import Variogram

    plt = _figures()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rows = []
    for run, data, _residual in fitted:
        v = Variogram.from_json(data)
        h = np.linspace(0.0, max(v.bins or [1.0]), 200)
        ax.scatter(v.bins, v.gamma, s=12, label=f"run {run} empirical")
        ax.plot(h, v(h) + np.where(h > 0, 0.0, v.nugget), lw=1, label=f"run {run} {v.model}")
        rows.append(
            {
                "run": run,
                "model": v.model,
                "nugget": v.nugget,
                "partial sill": v.var,
                "range (95%, km)": v.effective_range,
            }
        )
    what = "out-of-fold residuals of the base model" if fitted[0][2] else ctx.target
    ax.set_xlabel("lag (km)")
    ax.set_ylabel(f"semivariance of {what}")
    ax.legend(fontsize=7)
    return _table(pd.DataFrame(rows)) + _png(fig)


def _scatter_section(ctx: _Context) -> str:
    plt = _figures()
    unit, s = ctx.unit, ctx.summary
    pred = ctx.run.load_predictions(s.best_run)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    axes[0].scatter(pred["observed"], pred["predicted"], s=5, alpha=0.5)
    lo, hi = _value_range(pd.concat([pred["observed"], pred["predicted"]]))
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad  # the data's range (a pH axis does not start at 0)
    axes[0].plot([lo, hi], [lo, hi], color="black", lw=1, label="1:1")
    axes[0].set_xlim(lo, hi)
    axes[0].set_ylim(lo, hi)
    axes[0].set_aspect("equal")
    axes[0].set_xlabel(f"observed {ctx.target} ({unit})")
    axes[0].set_ylabel(f"predicted {ctx.target} ({unit})")
    axes[1].scatter(pred["predicted"], pred["observed"] - pred["predicted"], s=5, alpha=0.5)
    axes[1].axhline(0, color="black", lw=1)
    axes[1].set_xlim(lo, hi)
    axes[1].set_xlabel(f"predicted {ctx.target} ({unit})")
    axes[1].set_ylabel(f"residual observed - predicted ({unit})")
    return f"<p>Best run {s.best_run} ({html.escape(s.model)}), {html.escape(s.evaluated_on)}.</p>" + _png(
        fig
    )


def _metrics_section(ctx: _Context) -> str:
    s = ctx.summary
    keys = ["r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc"]
    per_run = pd.DataFrame(
        [
            {
                "run": r.run,
                "model": r.model,
                "seed": r.seed,
                "best epoch": r.best_epoch,
                **{k: r.metrics[k] for k in keys},
            }
            for r in s.runs
        ]
    )
    agg = pd.DataFrame(
        [{"statistic": st, **{k: s.aggregate[k][st] for k in keys}} for st in ("mean", "std", "min", "max")]
    )
    body = "<p>R² is 1 - SSE/SST on the original scale; Pearson r² is shown separately.</p>"
    body += _table(per_run) + "<h3>Over runs</h3>" + _table(agg)
    for warning in s.warnings:
        body += f'<p class="warn">{html.escape(warning)}</p>'
    if s.r2_ceiling is not None:
        body += f"<p>Known best possible R² on this test set (noise-free synthetic truth): {s.r2_ceiling:.3f}.</p>"
    return body


def _comparison_table(summary: pd.DataFrame) -> str:
    """Model x metric: the pooled out-of-fold value, with the fold mean ± sd below it."""
    from socmap.evaluate.tables import LABELS, REPORTED

    metrics = [m for m in REPORTED if summary.loc[summary["metric"] == m, "pooled"].notna().any()]
    cols = ("model", "metric", "pooled", "mean", "std")
    values = {
        (str(model), str(metric)): (float(pooled), float(mean), float(std))
        for model, metric, pooled, mean, std in zip(*(summary[c] for c in cols), strict=True)
    }

    def number(value: float) -> str:
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"

    def cell(model: str, metric: str) -> str:
        pooled, mean, std = values[(model, metric)]
        text = f"<b>{number(pooled)}</b>" if np.isfinite(pooled) else "–"
        if np.isfinite(mean):
            spread = f" ± {number(std)}" if np.isfinite(std) else ""
            text += f'<br><span class="fold">{number(mean)}{spread}</span>'
        return f"<td>{text}</td>"

    head = "<th>model</th>" + "".join(f"<th>{html.escape(LABELS.get(m, m))}</th>" for m in metrics)
    rows = "".join(
        f"<tr><th>{html.escape(str(model))}</th>" + "".join(cell(model, m) for m in metrics) + "</tr>"
        for model in dict.fromkeys(str(m) for m in summary["model"])
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _comparison_section(cv: Path) -> str:
    summary_path = cv / "metrics_summary.csv"
    if not summary_path.is_file():
        return "<p>No cross-validation results (run <code>socmap cv</code>).</p>"
    summary = pd.read_csv(summary_path)
    body = (
        "<p>Bold: pooled over all out-of-fold predictions (the headline); below: mean ± standard deviation "
        "over folds.</p>" + _comparison_table(summary)
    )
    cv_json = cv / "cv.json"
    cv_meta = json.loads(cv_json.read_text()) if cv_json.is_file() else {}
    design = cv_meta.get("fold_design", {})
    for warning in cv_meta.get("warnings", []):
        body += f'<p class="warn">{html.escape(str(warning))}</p>'
    if design:
        where = design.get("parameters", {}).get("prediction_region")
        text = f"Folds: {design.get('design')} ({design.get('folds')} folds, seed {design.get('seed')})"
        text += f"; prediction points from {where}" if where else ""
        body += f"<p>{html.escape(text)}.</p>"
    if (cv / "comparison.png").is_file():
        body += _img_file(cv / "comparison.png")
    if (cv / "intervals.csv").is_file():
        table = pd.read_csv(cv / "intervals.csv")
        body += (
            "<p>Calibrated (conformal) prediction intervals of every model, out of fold: each fold calibrated "
            "on the other folds only. PICP should equal the nominal coverage.</p>"
            + _table(table.drop(columns=["n"], errors="ignore"), "{:.3f}")
        )
    if (cv / "calibration.png").is_file():
        body += _img_file(cv / "calibration.png")
    return body


def _calibration(run: RunFolder) -> dict[str, Any] | None:
    path = run.path / "calibration.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _intervals_section(ctx: _Context) -> str:
    """How the map's interval was calibrated, and its coverage on the held-out test set."""
    state = _calibration(ctx.run)
    if state is None:
        return (
            "<p>No interval calibration in this run (uncertainty.calibration_folds 0, or an older run): the "
            "map's interval bands are the models' own quantiles or nodata.</p>"
        )
    from socmap.uncertainty import Calibration

    calib = Calibration.from_json(state)
    body = f"<p>{html.escape(calib.describe())}. Nominal coverage of the mapped interval: {calib.nominal:.0%}.</p>"
    oof = state.get("oof_metrics")
    if oof:
        body += (
            f"<p>Out-of-fold score of the {state['n']} training samples in that CV ({state.get('folds')} folds, "
            f"{html.escape(str(state.get('design')))}; every sample predicted by runs that never saw it): "
            f"R² {oof['r2']:.3f}, RMSE {oof['rmse']:.3g}, MAE {oof['mae']:.3g}, ME {oof['me']:+.3g}, "
            f"CCC {oof['ccc']:.3f}. With few samples this is a steadier score than the held-out test set's.</p>"
        )
    test = {k: v for k, v in state.get("test", {}).items() if k != "aoa"}
    if test:
        rows = [{"nominal": float(k), **v} for k, v in test.items()]
        body += (
            f"<p>The calibrated intervals of the runs' mean on the held-out test set ({state.get('n_test')} "
            "samples, never used for calibration):</p>" + _table(pd.DataFrame(rows), "{:.3f}")
        )
    return body


def _trust_section(ctx: _Context, map_path: Path | None) -> str:
    """Where this map can be trusted: the area of applicability, its share of the map, errors in and out."""
    from socmap.uncertainty.aoa import AreaOfApplicability

    aoa = AreaOfApplicability.load(ctx.run.path)
    if aoa is None:
        return "<p>No area of applicability in this run (uncertainty.aoa false or no calibration).</p>"
    body = (
        f"<p>{html.escape(aoa.describe())}. Pixels whose covariates are less like the training samples than "
        "that are outside the area of applicability (AOA): there the cross-validated error and the intervals "
        "do not apply (Meyer &amp; Pebesma 2021).</p>"
    )
    state = _calibration(ctx.run) or {}
    inout = state.get("test", {}).get("aoa")
    if inout:
        body += (
            f"<p>Held-out test samples inside the AOA: {inout['share_inside']:.0%}; RMSE inside "
            f"{inout['rmse_inside']:.3g}, outside {inout['rmse_outside']:.3g} {html.escape(ctx.unit)}.</p>"
        )
    if map_path is not None and map_path.is_file():
        import rasterio

        with rasterio.open(map_path) as src:
            share = src.tags().get("aoa_share_inside")
        if share is not None:
            body += f"<p><b>{float(share):.1%} of the mapped region lies inside the AOA.</b></p>"
        png = map_path.with_name(map_path.stem + "_aoa.png")
        if png.is_file():
            body += _img_file(png)
    return body


def _map_section(ctx: _Context, map_path: Path | None) -> str:
    if map_path is None:
        return "<p>No map given (run <code>socmap map</code> and pass <code>--map</code>).</p>"
    pngs = [map_path.with_suffix(".png"), map_path.with_name(map_path.stem + "_uncertainty.png")]
    found = [p for p in pngs if p.is_file()]
    if not found:
        raise InputError(f"map {map_path}: no PNG beside it ({pngs[0].name}); was it written by socmap map?")
    rows: list[tuple[str, str]] = [("file", str(map_path)), ("target", f"{ctx.target} ({ctx.unit})")]
    if map_path.is_file():
        import rasterio

        with rasterio.open(map_path) as src:
            tags = src.tags()
        rows += [(k, tags[k]) for k in ("year", "region", "model_kinds", "window") if k in tags]
    return _table(pd.DataFrame(rows, columns=["", "value"])) + "".join(_img_file(p) for p in found)


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    map_path: str | Path | None = None,
    cv_dir: str | Path | None = None,
    cube: str | Path | None = None,
    change: str | Path | None = None,
    stock: str | Path | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path.

    Args:
        run_dir: a finished run folder.
        out: the HTML file (default ``run_dir/report.html``).
        map_path: a COG written by ``socmap map`` (its PNGs are embedded).
        cv_dir: a ``socmap cv`` folder (default ``run_dir/cv`` if present).
        cube, change, stock: outputs of ``socmap map --years``, ``socmap change`` and ``socmap stock``: each
            adds its section (:mod:`socmap.report_time`).
    """
    ctx = _load_context(Path(run_dir))
    cv = Path(cv_dir) if cv_dir is not None else ctx.run.cv_dir
    bodies = (
        _data_section(ctx),
        _points_section(ctx),
        _distribution_section(ctx),
        _curves_section(ctx),
        _variogram_section(ctx),
        _scatter_section(ctx),
        _metrics_section(ctx),
        _comparison_section(cv),
        _intervals_section(ctx),
        _map_section(ctx, Path(map_path) if map_path is not None else None),
        _trust_section(ctx, Path(map_path) if map_path is not None else None),
        f"<pre>{html.escape(ctx.run.config_file.read_text())}</pre>",
    )
    parts = [
        f'<section id="{title.lower().replace(" ", "-")}"><h2>{html.escape(title)}</h2>{body}</section>'
        for title, body in zip(SECTIONS, bodies, strict=True)
    ]
    extra = _time_sections(ctx, cube, change, stock)
    parts[-1:-1] = [f'<section id="{_anchor(t)}"><h2>{html.escape(t)}</h2>{b}</section>' for t, b in extra]
    target = Path(out) if out is not None else ctx.run.report_file
    write_text(target, _page(ctx.summary, parts, [t for t, _ in extra]))
    return target


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def _time_sections(
    ctx: _Context, cube: str | Path | None, change: str | Path | None, stock: str | Path | None
) -> list[tuple[str, str]]:
    """(title, body) of the time-series, change and stock sections whose outputs were given."""
    from socmap.report_time import change_section, stock_section, time_series_section

    found = []
    if cube is not None:
        found.append(("Time series", time_series_section(Path(cube), ctx.target, ctx.unit)))
    if change is not None:
        found.append(("Change", change_section(Path(change))))
    if stock is not None:
        found.append(("Stock", stock_section(Path(stock))))
    return found


def _region_outline(ctx: _Context) -> tuple[tuple[Any, Any] | None, str]:
    """Ring(s) (lon, lat) for the points map and what they are: the configured region (``map.region``, else
    ``filters.region``), else the covariate grid's extent; never a built-in region."""
    from socmap.data import GridSpec
    from socmap.region import grid_footprint, load_region, region_source, to_lonlat

    try:
        config = ctx.run.load_config()
        source = region_source(config, config.map.region)
        if source.path is not None:
            return _rings(load_region(source.path)), f"region ({source.key})"
        if ctx.meta is not None and "crs_wkt" in ctx.meta.grid:
            grid = GridSpec.from_json(ctx.meta.grid)
        else:
            from socmap.data import discover_stack

            grid = discover_stack(config).grid
        return _rings(to_lonlat(grid_footprint(grid), grid.crs)), "covariate grid extent"
    except (InputError, OSError, ValueError, KeyError):
        return None, ""


def _rings(geom: Any) -> tuple[Any, Any]:
    """Exterior rings of a (multi)polygon as x and y arrays, rings separated by NaN."""
    xs: list[float] = []
    ys: list[float] = []
    for poly in getattr(geom, "geoms", [geom]):
        x, y = poly.exterior.xy
        xs += [*x, np.nan]
        ys += [*y, np.nan]
    return np.array(xs), np.array(ys)


def _page(summary: RunSummary, parts: list[str], extra: list[str] | None = None) -> str:
    score = summary.mean_of_runs or summary.best.headline
    best = score.metrics
    what = (
        f"mean of {len(summary.runs)} runs, what the map uses"
        if summary.mean_of_runs is not None
        else f"run {summary.best_run}"
    )
    title = f"socmap report: {summary.name}"
    titles = [*SECTIONS[:-1], *(extra or []), SECTIONS[-1]]
    nav = " | ".join(f'<a href="#{_anchor(s)}">{s}</a>' for s in titles)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}.fold{color:#666;font-size:85%}.warn{color:#a35d00;font-weight:600}pre{background:#f7f7f7;"
        "padding:1em;overflow:auto;font-size:12px}"
    )
    head = (
        f"<h1>{html.escape(title)}</h1><p>{html.escape(score.evaluated_on)}: R² {best['r2']:.3f}, "
        f"RMSE {best['rmse']:.3g}, ME {best['me']:+.3g}, CCC {best['ccc']:.3f} ({html.escape(what)}; "
        f"model {html.escape(summary.model)}). "
        f"socmap {__version__}.</p><nav>{nav}</nav>"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{head}{''.join(parts)}</body></html>\n"
    )
