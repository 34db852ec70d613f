"""The ``predict`` stage: apply a trained run (every run's model, averaged) to other samples and score it.

``predict_samples(config, run, out)`` prepares the samples of ``config`` (e.g. an independent test set, same
bands as the model), predicts them with every model of the run folder, writes a CSV (one row per kept sample:
observed, predicted, the runs' spread and, for models with intervals, Q05/Q50/Q95) and the metrics beside it.
When the run folder holds a calibration (``socmap train``), the calibrated interval (``cal_lower``,
``cal_median``, ``cal_upper`` at ``uncertainty.nominal``) and, with an AOA, ``di`` and ``in_aoa`` are added and
scored (``calibrated_intervals`` in the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap._atomic import atomic_file, write_json
from socmap.config import SocmapConfig
from socmap.errors import InputError, OutputError
from socmap.metrics import interval_metrics, regression_metrics
from socmap.models import SocModel, check_precision, load_model, predict_located
from socmap.runfolder import RunFolder
from socmap.uncertainty.runcal import RunUncertainty, load_run_uncertainty, member_width
from socmap.windows import prepare

__all__ = [
    "INTERVAL_LEVELS",
    "PredictResult",
    "calibrated_columns",
    "load_members",
    "predict_samples",
    "predict_table",
]

INTERVAL_LEVELS = (0.05, 0.5, 0.95)


@dataclass
class PredictResult:
    """What ``socmap predict`` wrote and scored."""

    out: Path
    metrics_file: Path
    n_samples: int
    n_models: int
    metrics: dict[str, float]
    intervals: dict[str, float] | None
    drops: dict[str, int]


def load_members(run_dir: str | Path, expected_bands: list[str] | None = None) -> list[SocModel]:
    """Every run's model of a run folder (``runs/run_<i>``; a bare model folder is one model)."""
    return [load_model(d, expected_bands) for d in RunFolder(Path(run_dir)).member_dirs()]


def predict_table(
    members: list[SocModel], windows: NDArray[np.float32], xy: NDArray[np.float64] | None = None
) -> dict[str, NDArray[np.float64]]:
    """Mean of the members' predictions, their spread (ddof 1, >= 2 members) and, when every member gives
    them, the members' Q05/Q50/Q95 averaged; original scale. ``xy``: the samples' grid-CRS locations (needed
    by kriging models)."""
    pairs = [predict_located(m, windows, xy, INTERVAL_LEVELS) for m in members]
    preds = np.stack([p for p, _ in pairs])
    out = {"predicted": preds.mean(axis=0)}
    if len(members) > 1:
        out["ensemble_std"] = preds.std(axis=0, ddof=1)
    if all(q is not None for _, q in pairs):
        mean_q = np.mean([q for _, q in pairs if q is not None], axis=0)
        for j, level in enumerate(INTERVAL_LEVELS):
            out[f"q{round(100 * level):02d}"] = mean_q[:, j]
    return out


def calibrated_columns(
    found: RunUncertainty,
    members: list[SocModel],
    windows: NDArray[np.float32],
    predicted: NDArray[np.float64],
    xy: NDArray[np.float64] | None = None,
) -> dict[str, NDArray[np.float64]]:
    """The run's calibrated interval (and DI / AOA) for the members' mean prediction; empty without one
    (``xy``: grid-CRS locations for models that use them)."""
    out: dict[str, NDArray[np.float64]] = {}
    di = found.aoa.di(windows) if found.aoa is not None else None
    if di is not None and found.aoa is not None:
        out["di"] = di
        out["in_aoa"] = (di <= found.aoa.threshold).astype(np.float64)
    if found.calibration is not None:
        calib = found.calibration
        width = member_width(members, windows, 4096, xy) if found.uses_width else None
        q = calib.quantiles(predicted, calib.interval_levels, width, di)
        out["cal_lower"], out["cal_median"], out["cal_upper"] = q[:, 0], q[:, 1], q[:, 2]
    return out


def predict_samples(
    config: SocmapConfig,
    run: str | Path,
    out: str | Path,
    prepared: str | Path | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
) -> PredictResult:
    """Predict and score the samples of ``config`` with the run folder ``run``.

    Args:
        config: describes the new samples and covariates (same bands, window and steps as the model).
        run: a finished run folder.
        out: CSV of predictions; ``<out>.metrics.json`` is written beside it.
        prepared: prepared folder for the samples (default ``<out>.prepared``, rebuilt when its inputs
            changed); a given folder made from another config or other input files is refused unless
            ``overwrite``.
        overwrite: replace an existing ``out`` (and rebuild a given prepared folder of another config).
        precision: deep-model inference, ``fp32`` or ``bf16`` (autocast; ``map.precision``, ``--precision``);
            other kinds ignore it.
    """
    check_precision(precision)
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass --overwrite to replace it")
    if prepared is None:  # our own folder beside the output: rebuilt when its inputs changed
        data, _ = prepare(config, out.with_suffix(".prepared"), overwrite=True)
    else:  # the user's: refused when made from another config or other input files, unless overwrite
        data, _ = prepare(config, Path(prepared), overwrite=overwrite)
    members = [m.with_precision(precision) for m in load_members(run, expected_bands=data.bands)]
    members[0].require_inputs().check_windows(data.windows.shape, str(run))
    table = data.samples[["sample_id", "lon", "lat", "time", "target"]].rename(columns={"target": "observed"})
    windows = np.asarray(data.windows)
    for key, values in predict_table(members, windows, data.xy).items():
        table[key] = values
    found = load_run_uncertainty(run)
    for key, values in calibrated_columns(
        found, members, windows, table["predicted"].to_numpy(), data.xy
    ).items():
        table[key] = values
    if len(table) == 0:
        raise InputError(f"no samples of {config.resolve(config.samples.path)} were kept; nothing to predict")
    with atomic_file(out) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    metrics = regression_metrics(table["observed"], table["predicted"])
    intervals = (
        interval_metrics(table["observed"], table["q05"], table["q95"], 0.9) if "q05" in table else None
    )
    calibrated = (
        interval_metrics(table["observed"], table["cal_lower"], table["cal_upper"], found.calibration.nominal)
        if found.calibration is not None
        else None
    )
    metrics_file = out.with_suffix(".metrics.json")
    write_json(
        metrics_file,
        {
            "n_models": len(members),
            "metrics": metrics,
            "intervals": intervals,
            "calibrated_intervals": calibrated,
            "drops": data.meta.drops,
        },
    )
    return PredictResult(out, metrics_file, len(table), len(members), metrics, intervals, data.meta.drops)
