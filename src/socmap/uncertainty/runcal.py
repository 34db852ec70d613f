"""``train``'s calibration: a spatial CV of the run's training rows gives out-of-fold predictions of the runs'
mean (what ``map`` and ``predict`` use), from which the interval calibration and the area of applicability
are fitted and stored in the run folder beside the model.

Files (top of the run folder): ``calibration.json`` (:class:`~socmap.uncertainty.Calibration`, the inner CV
design, which scale inputs the mapped members must supply, and the calibrated intervals' PICP / width /
interval score on the held-out test set, which the calibration never saw), ``calibration_oof.csv`` (the
out-of-fold predictions it was fitted on), ``aoa.json`` + ``aoa_train.npy``
(:class:`~socmap.uncertainty.aoa.AreaOfApplicability`).

Blends are calibrated as a whole: each inner fold fits all ``train.num_runs`` runs (seeds as in training) and
the residual is that of their mean; an ``ensemble`` model is one model, calibrated as such.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap._atomic import atomic_file, write_json
from socmap.config import SocmapConfig
from socmap.errors import InputError
from socmap.metrics import interval_metrics, regression_metrics
from socmap.models import SocModel, create_model, predict_located, read_rows
from socmap.split import splitter_for
from socmap.uncertainty.aoa import AreaOfApplicability, fit_aoa
from socmap.uncertainty.conformal import Calibration, calibrate
from socmap.windows import PreparedData

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_OOF_FILE",
    "LEVELS",
    "RunUncertainty",
    "calibrate_run",
    "load_run_uncertainty",
    "member_width",
    "score_test",
]

CALIBRATION_FILE = "calibration.json"
CALIBRATION_OOF_FILE = "calibration_oof.csv"
OOF_METRICS = ("r2", "rmse", "mae", "me", "ccc")  # of the calibration CV, stored in calibration.json
LEVELS = (0.05, 0.5, 0.95)  # the members' own quantiles whose Q95-Q05 width may feed the scale model
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Progress = Callable[[str], None]


@dataclass
class RunUncertainty:
    """A run folder's calibration and AOA (either may be None: not calibrated / no AOA).

    Args:
        calibration: the interval calibration of the runs' mean prediction.
        aoa: the area of applicability.
        uses_width: the scale model reads the members' mean own Q95-Q05 width.
        info: the rest of ``calibration.json`` (inner CV design, test-set scores).
    """

    calibration: Calibration | None
    aoa: AreaOfApplicability | None
    uses_width: bool = False
    info: dict[str, Any] | None = None


def member_width(
    members: Sequence[SocModel],
    windows: NDArray[np.float32],
    batch_size: int,
    xy: FloatArray | None = None,
) -> FloatArray | None:
    """The members' mean own Q95-Q05 width of ``windows`` (None unless every member gives quantiles);
    ``xy``: grid-CRS locations for models that use them (kriging)."""
    if not members or not all(m.gives_quantiles(LEVELS) for m in members):
        return None
    widths = []
    for m in members:
        q = predict_located(m, windows, xy, LEVELS, batch_size)[1]
        if q is None:
            return None
        widths.append(q[:, -1] - q[:, 0])
    return np.mean(widths, axis=0)


def _inner_folds(config: SocmapConfig, data: PreparedData, rows: IntArray) -> tuple[list[IntArray], str]:
    """Test rows (absolute) of each inner fold of ``rows``: ``cv.design`` when it is spatial-block or random,
    else spatial-block, with ``uncertainty.calibration_folds`` folds and the split seed."""
    design = config.cv.design if config.cv.design in {"spatial-block", "random"} else "spatial-block"
    k = config.uncertainty.calibration_folds
    splitter = splitter_for(config.split, design, k, config.split.seed)
    coords = data.samples[["lon", "lat"]].iloc[rows].reset_index(drop=True)
    try:
        tests = [rows[np.asarray(te, np.int64)] for _, te in splitter.split(coords, data.target[rows])]
    except InputError as exc:
        raise InputError(
            f"uncertainty.calibration_folds {k} ({design} on the training rows): {exc}"
        ) from None
    return tests, design


def _fit_predict(
    config: SocmapConfig, data: PreparedData, train: IntArray, test: IntArray, fold: int
) -> tuple[FloatArray, FloatArray | None]:
    """The mean prediction (and mean own width) of ``uncertainty.calibration_runs`` (default
    ``train.num_runs``) models fitted on ``train``."""
    points, widths = [], []
    windows = read_rows(data.windows, test)
    for run in range(config.uncertainty.calibration_runs or config.train.num_runs):
        model = create_model(config.train.model, config)
        model.model_id = f"{config.name}-{config.train.model}-calibration-fold{fold}-run{run}"
        model.fit(data.fit_data(train, config.train.seed + run))
        point, q = predict_located(model, windows, data.xy[test], LEVELS)
        points.append(np.asarray(point, np.float64))
        if q is not None:
            widths.append(q[:, -1] - q[:, 0])
    width = np.mean(widths, axis=0) if len(widths) == len(points) else None
    return np.mean(points, axis=0), width


def calibrate_run(
    config: SocmapConfig, data: PreparedData, rows: IntArray, folder: Path, say: Progress | None = None
) -> RunUncertainty:
    """Fit the calibration and AOA of a run on its training ``rows`` and save them into ``folder``.

    Args:
        config: ``uncertainty``, ``train``, ``split``, ``cv.design``.
        data: the prepared windows.
        rows: the training rows (never the held-out test rows).
        folder: the run folder.
        say: progress messages.
    """
    unc = config.uncertainty
    rows = np.asarray(rows, np.int64)
    tests, design = _inner_folds(config, data, rows)
    oof, width = np.full(data.target.size, np.nan), np.full(data.target.size, np.nan)
    fold_of = np.full(data.target.size, -1, np.int64)
    for j, test in enumerate(tests):
        if say is not None:
            say(f"calibration: fold {j + 1}/{len(tests)}")
        train = np.setdiff1d(rows, test)
        point, w = _fit_predict(config, data, train, test, j)
        oof[test], fold_of[test] = point, j
        if w is not None:
            width[test] = w
    tested = rows[fold_of[rows] >= 0]
    aoa = None
    di = None
    if unc.aoa:
        spec = data.meta.input_spec()
        aoa = fit_aoa(
            read_rows(data.windows, tested),
            data.target[tested],
            fold_of[tested],
            static_channels=spec.static_channels,
            band_names=spec.bands,
            seed=config.train.seed,
        )
        aoa.save(folder)
        di = aoa.train_di
    uses_width = bool(np.isfinite(width[tested]).all())
    runs = config.uncertainty.calibration_runs or config.train.num_runs
    source = (
        f"out-of-fold residuals of a {len(tests)}-fold {design} CV of the training samples "
        f"(mean of {runs} run{'s' if runs > 1 else ''} per fold)"
    )
    calib = calibrate(
        data.target[tested],
        oof[tested],
        width=width[tested] if uses_width else None,
        di=di,
        nominal=unc.nominal,
        coverages=unc.coverages,
        adaptive=unc.adaptive,
        source=source,
    )
    table = pd.DataFrame(
        {
            "index": tested,
            "sample_id": data.samples["sample_id"].to_numpy()[tested],
            "fold": fold_of[tested],
            "observed": data.target[tested],
            "predicted": oof[tested],
            "own_width": width[tested],
            "di": di if di is not None else np.nan,
        }
    )
    with atomic_file(folder / CALIBRATION_OOF_FILE) as tmp:
        table.to_csv(tmp, index=False)
    scores = regression_metrics(data.target[tested], oof[tested])
    info = {
        "design": design,
        "folds": len(tests),
        "runs_per_fold": runs,
        "uses_width": uses_width,
        # the run's score on every training sample it calibrates on: steadier than a small test set's
        "oof_metrics": {k: float(scores[k]) for k in OOF_METRICS},
    }
    write_json(folder / CALIBRATION_FILE, {**calib.to_json(), **info})
    return RunUncertainty(calib, aoa, uses_width, info)


def score_test(
    found: RunUncertainty,
    members: Sequence[SocModel],
    data: PreparedData,
    test: IntArray,
    folder: Path,
    coverages: Sequence[float],
) -> dict[str, dict[str, float]]:
    """PICP, mean width and interval score of the calibrated intervals of the members' mean prediction on the
    held-out test rows; added to ``calibration.json`` under ``test``."""
    calib = found.calibration
    if calib is None or test.size == 0:
        return {}
    windows, xy = read_rows(data.windows, test), data.xy[test]
    point = np.mean([predict_located(m, windows, xy)[0] for m in members], axis=0)
    width = member_width(members, windows, 4096, xy) if found.uses_width else None
    di = found.aoa.di(windows) if found.aoa is not None else None
    y = data.target[test]
    scores = {}
    for c in coverages:
        lo, hi = calib.interval(point, c, width, di)
        m = interval_metrics(y, lo, hi, c)
        scores[f"{c:g}"] = {k: float(m[k]) for k in ("picp", "interval_width", "interval_score")}
    if di is not None and found.aoa is not None:
        inside = di <= found.aoa.threshold
        err = point - y
        scores["aoa"] = {
            "share_inside": float(inside.mean()),
            "rmse_inside": float(np.sqrt(np.mean(err[inside] ** 2))) if inside.any() else float("nan"),
            "rmse_outside": float(np.sqrt(np.mean(err[~inside] ** 2))) if (~inside).any() else float("nan"),
        }
    state = json.loads((folder / CALIBRATION_FILE).read_text())
    write_json(folder / CALIBRATION_FILE, {**state, "test": scores, "n_test": int(test.size)})
    return scores


def load_run_uncertainty(folder: str | Path) -> RunUncertainty:
    """The calibration and AOA saved in a run folder (None where absent: an older or uncalibrated run)."""
    folder = Path(folder)
    path = folder / CALIBRATION_FILE
    calib, info = None, None
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        calib = Calibration.from_json(info)
    aoa = AreaOfApplicability.load(folder)
    uses_width = bool(info.get("uses_width", False)) if info else False
    return RunUncertainty(calib, aoa, uses_width, info)
