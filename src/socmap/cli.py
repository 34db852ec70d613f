"""The ``socmap`` command line: a thin layer over the Python API (every command is a function call)."""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from socmap import __version__
from socmap.config import SocmapConfig
from socmap.errors import InputError, SocmapError

if TYPE_CHECKING:
    from socmap.evaluate import CVResult
    from socmap.runfolder import RunSummary

app = typer.Typer(
    name="socmap",
    help="Learn soil organic carbon (SOC) from dated soil samples and covariate raster stacks, and map it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _warn(text: str) -> None:
    console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"socmap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """socmap: soil organic carbon from samples + multi-year covariate stacks, mapped over a region."""


OutOption = Annotated[
    Path, typer.Option("--out", help="Output folder (created; refused if it exists and is not empty).")
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace an existing output folder (only once the new one is complete)."
    ),
]


@app.command()
def synth(
    out: OutOption,
    resolution: Annotated[
        float,
        typer.Option(help="Pixel size in metres of the covariate grid (EPSG:25832), e.g. 1000, 250, 100."),
    ] = 1000.0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical data.")] = 0,
    n_locations: Annotated[
        int,
        typer.Option(help="Unique sample locations (40% LUCAS-like 2 km grid, 60% clustered agency plots)."),
    ] = 5000,
    region: Annotated[
        Path | None,
        typer.Option(help="Region polygon (GeoJSON/GeoPackage); default: the embedded Bavaria boundary."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Write the synthetic Bavaria data set: covariate GeoTIFF stacks 2002-2023, samples.csv, truth, region.

    OC is a documented nonlinear function of a 5x5 window of covariates over the sample year and the 4 years
    before it, plus multiplicative noise; truth.json gives the best validation R² any model can reach.
    """
    from socmap.synth import synthesize

    with console.status("synthesizing") as status:
        result = synthesize(
            out,
            resolution=resolution,
            seed=seed,
            n_locations=n_locations,
            region=region,
            overwrite=overwrite,
            progress=lambda msg: status.update(f"synthesizing: {msg}"),
        )
    typer.echo(
        f"wrote {result.out}: {result.n_rasters} rasters "
        f"({result.width} x {result.height} px at {resolution:g} m), "
        f"{result.n_samples} samples at {result.n_locations} locations, R² ceiling {result.r2_ceiling:.3f} "
        f"({result.seconds:.1f} s)"
    )


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set windows.size=7 (repeatable)."),
]

PrecisionOption = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Deep-model inference: fp32 (exact, default) or bf16 (torch.autocast on CPU: faster only on CPUs "
        "with AVX512-BF16/AMX, predictions change slightly; tree and kriging models ignore it) [map.precision].",
    ),
]


def _load(
    config: Path | None, sets: list[str] | None, extra: dict[str, object] | None = None
) -> SocmapConfig:
    from socmap.config import load_config, parse_override

    overrides: dict[str, object] = dict(parse_override(s) for s in sets or [])
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_config(config, overrides)


@app.command()
def prepare(
    config: ConfigOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="Prepared folder: windows.npy, samples.parquet, meta.json.")
    ] = Path("prepared"),
    sets: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Read samples and covariate rasters, cut [N, C, H, W, T] windows, and write a prepared folder.

    Re-running with the same config and unchanged inputs reuses the folder. Drops are reported by reason.
    """
    from socmap.windows import drops_summary
    from socmap.windows import prepare as run_prepare

    cfg = _load(config, sets)
    with console.status("preparing") as status:
        data, reused = run_prepare(cfg, out, overwrite=overwrite, progress=lambda m: status.update(m))
    meta = data.meta
    if reused:
        typer.echo(f"{out} is up to date (same config and inputs); reused")
    for warning in meta.warnings:
        _warn(warning)
    n, c, h, w, t = meta.shape
    typer.echo(f"{drops_summary(meta)}")
    typer.echo(f"wrote {out}: windows [{n}, {c}, {h}, {w}, {t}] for bands {', '.join(meta.bands)}")


@app.command()
def train(
    config: ConfigOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="Run folder (model, metrics, history, split, plots).")
    ] = Path("runs/latest"),
    prepared: Annotated[
        Path | None, typer.Option("--prepared", help="Prepared folder to use/create (default: OUT/prepared).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Adam learning rate [1e-3 x sqrt(batch size/256)].")
    ] = None,
    loss_type: Annotated[
        str | None,
        typer.Option(
            "--loss_type", "--loss-type", help="l1, mse, composite_l1, composite_l2, gaussian_nll, quantile."
        ),
    ] = None,
    loss_alpha: Annotated[
        float | None,
        typer.Option("--loss_alpha", "--loss-alpha", help="L1/L2 weight in composite losses [0.5]."),
    ] = None,
    loss_sigma: Annotated[
        float | None,
        typer.Option("--loss_sigma", "--loss-sigma", help="Constant sd for composite losses [3.0]."),
    ] = None,
    target_transform: Annotated[
        str | None,
        typer.Option(
            "--target_transform", "--target-transform", help="none, log (log1p) or normalize [normalize]."
        ),
    ] = None,
    use_validation: Annotated[
        bool | None,
        typer.Option(
            "--use_validation/--no_validation",
            "--use-validation/--no-validation",
            help="Hold out a test set and early-stop on an inner split of the training part [yes].",
        ),
    ] = None,
    target_val_ratio: Annotated[
        float | None,
        typer.Option(
            "--target-val-ratio", help="Held-out test share (and early-stopping share of training) [0.08]."
        ),
    ] = None,
    distance_threshold: Annotated[
        float | None,
        typer.Option("--distance-threshold", help="Min km between validation and training [1.2]."),
    ] = None,
    num_runs: Annotated[
        int | None, typer.Option("--num-runs", help="Runs with seeds seed..seed+N-1 [5].")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Maximum epochs [auto: train.max_steps optimiser steps].")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Batch size [auto: n_train/32 within 16..256].")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option("--patience", help="Early-stopping patience in epochs [auto: train.patience_steps]."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Fine-tune: start the deep model from this run folder's model."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of run 0 [0].")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Model kind: cnn_lstm, rf, qrf, xgb, linear, ensemble (or a registered one)."
        ),
    ] = None,
    wandb_mode: Annotated[
        str | None, typer.Option("--wandb-mode", help="online, offline or disabled [$WANDB_MODE or offline].")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run folder.")] = False,
    sets: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Train any model kind over several runs, scored on a held-out test set that nothing else sees.

    Flags keep the seed project's names and defaults; any other config key can be set with --set.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from socmap.train import train as run_train

    cfg = _load(
        config,
        sets,
        {
            "train.lr": lr,
            "train.loss_type": loss_type,
            "train.loss_alpha": loss_alpha,
            "train.loss_sigma": loss_sigma,
            "train.target_transform": target_transform,
            "train.use_validation": use_validation,
            "split.val_ratio": target_val_ratio,
            "split.distance_km": distance_threshold,
            "train.num_runs": num_runs,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.patience": patience,
            "train.init_from": init_from.resolve() if init_from is not None else None,
            "train.seed": seed,
            "train.model": model,
            "train.wandb_mode": wandb_mode,
        },
    )
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[int, object] = {}

        def on_epoch(run: int, epoch: int, row: dict[str, float]) -> None:
            if run not in tasks:
                tasks[run] = bar.add_task(f"run {run}", total=row.get("max_epochs", 1), metrics="")
            text = f"loss {row['train_loss']:.4f}"
            if "val_r2" in row:
                text += f" | early-stopping loss {row['val_loss']:.4f} R² {row['val_r2']:.3f} RMSE {row['val_rmse']:.3g}"
            bar.update(tasks[run], completed=epoch + 1, metrics=text)  # type: ignore[arg-type]

        result = run_train(cfg, out, prepared=prepared, resume=resume, overwrite=overwrite, on_epoch=on_epoch)
    _print_train_summary(result.summary, out)


def _metrics_text(m: dict[str, float]) -> str:
    return (
        f"R² {m['r2']:.3f} (1-SSE/SST; Pearson r² {m['pearson_r2']:.3f}), RMSE {m['rmse']:.3g}, "
        f"MAE {m['mae']:.3g}, ME {m['me']:+.3g}, RPIQ {m['rpiq']:.2f}, CCC {m['ccc']:.3f}"
    )


def _print_train_summary(s: RunSummary, out: Path) -> None:
    """The closing lines of `socmap train`: split sizes, then every score labelled with the set it is on."""
    best, agg = s.best, s.aggregate
    typer.echo(f"{s.n_samples} samples: {s.n_train} training, {s.n_test} held-out test")
    for warning in ([s.split_warning] if s.split_warning else []) + s.warnings:
        _warn(warning)
    if s.mean_of_runs is not None:
        typer.echo("held-out test set (never used for fitting, early stopping or choosing the run):")
        runs = f"mean of {len(s.runs)} runs" if len(s.runs) > 1 else "the one run"
        typer.echo(f"  {runs} (what map and predict use): {_metrics_text(s.mean_of_runs.metrics)}")
        typer.echo(f"  best run {s.best_run} ({s.model}): {_metrics_text(best.headline.metrics)}")
        if len(s.runs) > 1:
            typer.echo(
                f"  over {len(s.runs)} runs: R² {agg['r2']['mean']:.3f} ± {agg['r2']['std']:.3f} "
                f"(min {agg['r2']['min']:.3f}, max {agg['r2']['max']:.3f})"
            )
    else:
        typer.echo(
            f"best run {s.best_run} ({s.model}), {best.headline.evaluated_on}: {_metrics_text(best.headline.metrics)}"
        )
    if best.early_stopping is not None:
        typer.echo(f"  early-stopping set of run {s.best_run}: R² {best.early_stopping.metrics['r2']:.3f}")
    if best.training is not None and s.mean_of_runs is not None:
        typer.echo(
            f"  training fit of run {s.best_run} (not a validation): R² {best.training.metrics['r2']:.3f}"
        )
    typer.echo(f"run kept as the folder's model: {s.selection}")
    if s.r2_ceiling is not None:
        typer.echo(f"known ceiling of the test set (noise-free truth): R² {s.r2_ceiling:.3f}")
    _echo_calibration(Path(out))
    typer.echo(f"wrote {out}")


def _echo_calibration(out: Path) -> None:
    """One line on the stored interval calibration and its coverage on the held-out test set."""
    import json

    path = out / "calibration.json"
    if not path.is_file():
        return
    state = json.loads(path.read_text())
    nominal = float(state["nominal"])
    test = state.get("test", {}).get(f"{nominal:g}")
    oof = state.get("oof_metrics")
    if oof:
        typer.echo(
            f"out-of-fold score of the {state['n']} training samples ({state.get('folds')}-fold "
            f"{state.get('design')} CV, the runs' mean per fold): R² {oof['r2']:.3f}, RMSE {oof['rmse']:.3g}, "
            f"MAE {oof['mae']:.3g}, ME {oof['me']:+.3g}, CCC {oof['ccc']:.3f}"
        )
    text = f"interval calibration: {state['n']} out-of-fold residuals ({state.get('folds')} folds)"
    if test:
        text += (
            f"; calibrated {nominal:.0%} interval on the test set: PICP {test['picp']:.3f}, "
            f"width {test['interval_width']:.3g}"
        )
    typer.echo(text)


def _calibrated_text(result: CVResult, model: str) -> str:
    """``, calibrated PICP(90%) 0.90 (width 25.3)`` from the cv's intervals table, or nothing."""
    table = result.intervals
    if table is None:
        return ""
    rows = table[(table["model"] == model) & ((table["nominal"] - 0.9).abs() < 1e-9)]
    if rows.empty or not math.isfinite(float(rows["picp"].iloc[0])):
        return ""
    return f", calibrated PICP(90%) {float(rows['picp'].iloc[0]):.3f} (width {float(rows['interval_width'].iloc[0]):.3g})"


@app.command("map")
def map_(
    run: Annotated[
        Path,
        typer.Option("--run", help="Run folder of `socmap train` (config.yaml, model.json, runs/run_<i>/)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output COG (.tif); OUT's name + .png, _uncertainty.png (and _aoa.png) are written beside it.",
        ),
    ],
    year: Annotated[
        str | None,
        typer.Option(
            "--year", help="Time label to map: its covariates and the T-1 before it (not for static stacks)."
        ),
    ] = None,
    years: Annotated[
        str | None,
        typer.Option(
            "--years",
            help="Several years in one pass, FIRST:LAST or a list (2010,2015): OUT's stem + _<year>.tif each, "
            "and a CF NetCDF cube OUT's stem + .nc.",
        ),
    ] = None,
    region: Annotated[
        Path | None,
        typer.Option(
            help="Region polygon (GeoJSON/GeoPackage); default: the run config's map.region / filters.region."
        ),
    ] = None,
    resolution: Annotated[
        float | None,
        typer.Option(
            help="Pixel size in grid CRS units (rasters are warped); default: the covariate grid's."
        ),
    ] = None,
    bbox: Annotated[
        str | None,
        typer.Option(
            help="Map only minx,miny,maxx,maxy, in the covariate grid's CRS (e.g. EPSG:25832 m), not lon/lat."
        ),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option("--block-size", help="Block edge in pixels: one task, one file, one resume unit [512]."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Windows per model batch [1024].")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="threads, processes, or a dask.distributed address tcp://host:port (workers must see "
            "the same files); default: this process."
        ),
    ] = None,
    precision: PrecisionOption = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted map from its finished blocks (OUT.blocks/)."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace existing outputs (only once the new ones are complete)."),
    ] = False,
) -> None:
    """Map the target over the region with every model of the run: a COG (prediction, Q05, Q95, std) + PNGs.

    Flags override the run config's `map:` section. Nodata outside the region, where a window is less than
    filters.min_valid_fraction valid, and where fewer than half of the bands have data at the pixel itself.
    """
    from socmap.mapping import map_soc
    from socmap.runfolder import RunFolder

    overrides = {
        "map.year": year,
        "map.region": str(region.resolve()) if region is not None else None,
        "map.resolution": resolution,
        "map.bbox": _parse_bbox(bbox) if bbox is not None else None,
        "map.block_size": block_size,
        "map.batch_size": batch_size,
        "map.scheduler": scheduler,
        "map.precision": precision,
    }
    options = RunFolder(run).load_config({k: v for k, v in overrides.items() if v is not None}).map
    if years is not None:
        from socmap.cli_time import print_years
        from socmap.mapping.years import parse_years

        if year is not None:
            raise InputError("--year and --years: give one of them")
        year_list = parse_years(years)
        with _pixel_progress(f"map {years}") as on_progress:
            print_years(options, year_list, run, out, resume, overwrite, on_progress, _warn)
        return
    with _pixel_progress(f"map {options.year or ''}".strip()) as on_progress:
        result = map_soc(
            options, run, out, resume=resume, overwrite=overwrite, progress=on_progress, on_warning=_warn
        )
    for warning in result.warnings:
        _warn(warning)
    resumed = (
        f", {result.n_blocks_resumed} of {result.n_blocks} blocks resumed" if result.n_blocks_resumed else ""
    )
    rate = result.n_region_pixels / result.seconds
    typer.echo(
        f"mapped {result.n_mapped:,} of {result.n_region_pixels:,} region pixels ({result.width} x "
        f"{result.height} px) in {result.seconds:.1f} s ({rate:,.0f} px/s{resumed})"
    )
    typer.echo(f"region: {result.region}")
    typer.echo(
        f"bands: {', '.join(result.bands)} "
        f"(interval: {result.method}, {len(result.model_ids)} models: {result.model_kinds})"
    )
    if result.aoa_share is not None:
        typer.echo(f"area of applicability: {result.aoa_share:.1%} of the mapped pixels inside")
    pngs = [result.png, result.uncertainty_png] + ([result.aoa_png] if result.aoa_png else [])
    typer.echo(f"wrote {result.out}, " + ", ".join(str(p) for p in pngs))


def _parse_bbox(text: str) -> list[float]:
    """``minx,miny,maxx,maxy`` -> four numbers (the config checks their order)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"--bbox {text!r}: expected four numbers minx,miny,maxx,maxy in the grid's CRS")
    return values


@contextlib.contextmanager
def _pixel_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar fed with (done, total) region pixels; px/s counts only pixels computed now."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("px {task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task("map", total=None, rate="")
    first: list[float] = []  # time and pixels of the first report: resumed blocks are not speed

    def on_progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if not first:  # shown from the first report on: a refused input leaves no empty bar above its error
            first.extend((now, done))
            bar.start()
            bar.reset(task, total=total, completed=done, rate="")
            return
        rate = (done - first[1]) / max(now - first[0], 1e-9)
        bar.update(task, completed=done, rate=f"{rate:,.0f} px/s")

    try:
        yield on_progress
    finally:
        if first:
            bar.stop()


@app.command()
def predict(
    run: Annotated[
        Path, typer.Option("--run", help="A finished run folder (its runs' models form the ensemble).")
    ],
    config: ConfigOption = None,
    out: Annotated[Path, typer.Option("--out", help="CSV of predictions (one row per kept sample).")] = Path(
        "predictions.csv"
    ),
    prepared: Annotated[
        Path | None,
        typer.Option("--prepared", help="Prepared folder for the samples (default: beside --out)."),
    ] = None,
    sets: SetOption = None,
    overwrite: OverwriteOption = False,
    precision: PrecisionOption = None,
) -> None:
    """Apply a trained model to the samples of a config (e.g. an independent test set) and score it.

    The config describes the new samples and covariates (same bands as the model); targets, when present,
    give R², RMSE and the other metrics on the original scale.
    """
    from socmap.models.base import precision_note
    from socmap.predict import predict_samples

    cfg = _load(config, sets)
    note = precision_note(precision or cfg.map.precision)
    if note:
        _warn(note)
    result = predict_samples(
        cfg, run, out, prepared=prepared, overwrite=overwrite, precision=precision or cfg.map.precision
    )
    m = result.metrics
    text = (
        f"{result.n_samples} samples, {result.n_models} model(s): R² {m['r2']:.3f}, RMSE {m['rmse']:.4g}, "
        f"MAE {m['mae']:.4g}, ME {m['me']:+.4g}, CCC {m['ccc']:.3f}"
    )
    if result.intervals is not None:
        text += f", PICP(90%) {result.intervals['picp']:.2f}"
    typer.echo(text)
    typer.echo(f"wrote {result.out}")


@app.command()
def cv(
    config: ConfigOption = None,
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated model kinds [cnn_lstm,rf,qrf,xgb].")
    ] = None,
    design: Annotated[
        str | None,
        typer.Option(
            "--cv",
            help="spatial-block, buffered, random, distance-split or knndm (matched to the region's map).",
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds",
            help="Folds; buffered: held-out locations; distance-split: repeats (default: split.folds).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="CV folder: folds, predictions, metrics tables, comparison.png.")
    ] = Path("cv"),
    prepared: Annotated[
        Path | None, typer.Option("--prepared", help="Prepared folder to use/create (default: OUT/prepared).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Deep models' epochs per fold (default: train.epochs).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the folds (default: split.seed).")
    ] = None,
    trees: Annotated[
        int | None, typer.Option("--trees", help="Trees of rf/qrf and boosting rounds of xgb [300/300/400].")
    ] = None,
    n_jobs: Annotated[
        int | None,
        typer.Option("--n-jobs", min=1, help="CPU threads of the models (train.threads) [all cores]."),
    ] = None,
    select: Annotated[
        bool,
        typer.Option(
            "--select/--no-select",
            help="Name the model with the best pooled R² and write OUT/selected.yaml for `socmap train`.",
        ),
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Run the (model, fold) fits as Dask tasks: threads, processes (one fit per core), or a "
            "dask.distributed address tcp://host:port (workers must see the same files); default: one after "
            "another in this process. Same results either way."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep the fits an interrupted cv finished (same config and data); compute the rest.",
        ),
    ] = False,
    sets: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Cross-validate model kinds on identical folds (spatial-block by default); flags override `cv:`.

    Writes folds.csv, out-of-fold predictions.csv, per-fold and summary metrics, metrics.md, comparison.png.
    Deep models early-stop on a split of each fold's training part, never on its test part.
    """
    from socmap.evaluate import cross_validate, select_model
    from socmap.windows import prepare as run_prepare

    extra: dict[str, object] = {
        "cv.models": [m for m in models.split(",") if m.strip()] if models is not None else None,
        "cv.design": design,
        "cv.folds": folds,
        "cv.seed": seed,
        "train.epochs": epochs,
        "train.threads": n_jobs,
        "cv.scheduler": scheduler,
    }
    cfg = _load(config, sets, extra)
    if trees is not None:
        cfg = cfg.model_copy(update={"models": _with_trees(cfg.models, trees)})
    with console.status("preparing") as status:  # a given --prepared folder of another data set is refused
        data, _ = run_prepare(
            cfg,
            prepared or out / "prepared",
            overwrite=overwrite if prepared else True,
            progress=status.update,
        )
    with _fold_progress(len(cfg.cv.models)) as on_fold:
        result = cross_validate(cfg, data, out, overwrite=overwrite, on_fold=on_fold, resume=resume)
    if result.n_resumed:
        typer.echo(f"resumed {result.n_resumed} of {len(result.per_fold)} fits from the interrupted run")
    _print_cv(result, len(data.samples))
    if select:
        chosen = select_model(out)
        typer.echo(f"selected {chosen.kind} (pooled {chosen.metric} {chosen.value:.3f}); train it with:")
        typer.echo(f"  socmap train --config {chosen.config_path} --out runs/{chosen.kind}")
    typer.echo(f"wrote {out} (metrics.md, metrics_summary.csv, predictions.csv, comparison.png)")


@contextlib.contextmanager
def _fold_progress(n_models: int) -> Iterator[Callable[[str, int, int, float], None]]:
    """A progress bar over (model, fold) fits, fed by cross_validate's ``on_fold``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]cv"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:  # the tables follow
        task = bar.add_task("cv", total=None, last="")

        def on_fold(model: str, fold: int, n_folds: int, seconds: float) -> None:
            bar.update(
                task,
                total=n_models * n_folds,
                advance=1,
                last=f"{model} fold {fold + 1}/{n_folds} {seconds:.1f} s",
            )

        yield on_fold


def _with_trees(models: dict[str, dict[str, object]], trees: int) -> dict[str, dict[str, object]]:
    """``--trees N``: n_estimators of every tree kind (rf, qrf, xgb)."""
    out = {k: dict(v) for k, v in models.items()}
    for kind in ("rf", "qrf", "xgb"):
        out.setdefault(kind, {})["n_estimators"] = trees
    return out


def _print_cv(result: CVResult, n_samples: int) -> None:
    """Pooled out-of-fold metrics first, fold mean ± sd beside them."""
    values = {(str(r["model"]), str(r["metric"])): r for r in result.summary.to_dict("records")}

    def num(model: str, metric: str, column: str) -> float:
        return float(values[(model, metric)][column])

    models = list(dict.fromkeys(result.summary["model"]))
    n_folds = int(result.per_fold["fold"].nunique())
    typer.echo(f"{result.cv} cross-validation, {n_folds} folds, {n_samples} samples")
    for m in models:
        mean, std, pooled = (num(m, "r2", k) for k in ("mean", "std", "pooled"))
        text = f"{m}: pooled R² {pooled:.3f}, RMSE {num(m, 'rmse', 'pooled'):.3g}"
        if math.isfinite(mean):
            text += f" (fold mean R² {mean:.3f} ± {std:.3f})"
        if (m, "picp") in values and math.isfinite(num(m, "picp", "pooled")):
            text += f", own PICP(90%) {num(m, 'picp', 'pooled'):.2f}"
        typer.echo(text + _calibrated_text(result, m))
    if result.r2_ceiling is not None:
        typer.echo(f"known ceiling of the tested samples (noise-free truth): R² {result.r2_ceiling:.3f}")
    for warning in result.warnings:
        _warn(warning)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (from socmap train).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default: RUN_DIR/report.html).")
    ] = None,
    map_path: Annotated[
        Path | None, typer.Option("--map", help="A map COG from socmap map (its PNGs are embedded).")
    ] = None,
    cv_dir: Annotated[
        Path | None, typer.Option("--cv", help="A socmap cv output folder (default: RUN_DIR/cv if present).")
    ] = None,
    cube: Annotated[
        Path | None,
        typer.Option("--cube", help="A time cube (.nc) of socmap map --years: time-series section."),
    ] = None,
    change: Annotated[
        Path | None, typer.Option("--change", help="A COG of socmap change: change section.")
    ] = None,
    stock: Annotated[
        Path | None, typer.Option("--stock", help="A COG of socmap stock (and its totals): stock section.")
    ] = None,
) -> None:
    """Write one self-contained HTML report of a run: data, split, curves, metrics, comparison, map, config."""
    from socmap.report import build_report

    path = build_report(run_dir, out, map_path=map_path, cv_dir=cv_dir, cube=cube, change=change, stock=stock)
    typer.echo(f"wrote {path}")


@app.command()
def example(
    out: OutOption,
    kind: Annotated[
        str, typer.Option("--kind", help="nsw-ph (pH, UTM 55 South) or nl-oc-percent (OC %, EPSG:28992).")
    ] = "nsw-ph",
    seed: Annotated[int, typer.Option(help="Seed of the covariates, sample places and noise.")] = 0,
    n_samples: Annotated[int, typer.Option("--n-samples", help="Rows of samples.csv (20..5000).")] = 150,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a small generated data set laid out like a user's own: samples without dates in a projected CRS,
    static covariate GeoTIFFs, a non-SOC target, and a ready config.yaml (see README, "Your own data")."""
    from socmap.examples import write_example

    result = write_example(out, kind, seed=seed, n_samples=n_samples, overwrite=overwrite)
    typer.echo(f"{result.description}")
    typer.echo(f"wrote {out}: {result.samples.name}, covariates/ ({result.crs}), config {result.config}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and results.")] = Path(
        "demo-output"
    ),
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override the demo's training epochs.")
    ] = None,
    num_runs: Annotated[
        int | None, typer.Option("--num-runs", help="Override the demo's number of runs.")
    ] = None,
) -> None:
    """Run the whole pipeline on the embedded synthetic Bavaria data set (replaces OUT's earlier results).

    Stages: synthesize the data set (OUT/data), cut windows (OUT/prepared), train the CNN-LSTM with a
    scaled-down schedule (OUT/run), compare it with rf/qrf/xgb on the same validation split (OUT/run/cv),
    map SOC 2023 as a Cloud-Optimized GeoTIFF (OUT/soc_2023.tif) and write the HTML report (OUT/run/report.html).
    """
    from socmap.demo import run_demo

    overrides = {
        k: v for k, v in {"train.epochs": epochs, "train.num_runs": num_runs}.items() if v is not None
    }
    with console.status("demo") as status:

        def on_epoch(run: int, epoch: int, row: dict[str, float]) -> None:
            r2 = f", early-stopping R² {row['val_r2']:.3f}" if "val_r2" in row else ""
            status.update(f"training run {run}, epoch {epoch + 1}{r2}")

        result = run_demo(out, overrides=overrides, say=lambda m: console.log(m), on_epoch=on_epoch)
    s = result.summary
    score = s.mean_of_runs or s.best.headline
    best = score.metrics
    typer.echo(f"data set: {result.data}")
    typer.echo(f"run folder: {result.run} (model.json, metrics.json, scatter.png)")
    if result.cv is not None:
        typer.echo(f"model comparison: {result.cv / 'metrics.md'}")
    if result.map is not None:
        typer.echo(f"map (Cloud-Optimized GeoTIFF): {result.map}")
    if result.report is not None:
        typer.echo(f"report: {result.report}")
    ceiling = s.r2_ceiling
    ceiling_text = f" (best possible on this test set: {ceiling:.3f})" if ceiling is not None else ""
    what = f"mean of {len(s.runs)} runs" if s.mean_of_runs is not None else f"run {s.best_run}"
    typer.echo(
        f"held-out test R² {best['r2']:.3f}{ceiling_text}, RMSE {best['rmse']:.3g} {s.target.unit} ({what})"
    )


def _register_time_commands() -> None:
    """``socmap change`` and ``socmap stock`` (beyond one year; :mod:`socmap.cli_time`)."""
    from socmap.cli_time import change, stock

    app.command()(change)
    app.command()(stock)


_register_time_commands()

# library errors name config keys; the CLI adds the flag that sets each key
FLAGS = {
    "map.year": "--year",
    "map.region": "--region",
    "map.resolution": "--resolution",
    "map.bbox": "--bbox",
    "map.block_size": "--block-size",
    "map.batch_size": "--batch-size",
    "map.scheduler": "--scheduler",
    "map.precision": "--precision",
    "cv.models": "--models",
    "cv.design": "--cv",
    "cv.folds": "--folds",
    "cv.seed": "--seed",
    "cv.scheduler": "--scheduler",
    "train.model": "--model",
    "split.val_ratio": "--target-val-ratio",
    "split.distance_km": "--distance-threshold",
    "train.epochs": "--epochs",
    "train.lr": "--lr",
    "train.loss_type": "--loss_type",
    "train.target_transform": "--target_transform",
    "train.num_runs": "--num-runs",
    "train.batch_size": "--batch-size",
    "train.patience": "--patience",
    "train.init_from": "--init-from",
    "train.wandb_mode": "--wandb-mode",
}


def flag_message(text: str) -> str:
    """A library error names a config key (``map.block_size 3: ...``); add the flag that sets it, once."""
    for key, flag in FLAGS.items():
        if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", text):
            return f"{text} (flag {flag})"
    return text


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except SocmapError as exc:
        console.print(f"[bold red]error:[/] {flag_message(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
