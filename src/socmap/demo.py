"""The whole pipeline on the embedded synthetic Bavaria data set (``socmap demo`` / ``make demo``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socmap.config import MapConfig, SocmapConfig, load_config
from socmap.runfolder import RunSummary
from socmap.synth import synthesize

__all__ = ["DEMO_CV", "DEMO_TRAIN", "DemoResult", "demo_config", "run_demo"]

# Scaled so the demo runs in minutes on a 2-core laptop; `socmap train` defaults are the full settings.
DEMO_TRAIN = {
    "train.epochs": 40,
    "train.patience": 8,
    "train.num_runs": 2,
    "train.lr": 1e-3,
    # calibrated intervals and the AOA: 3 extra fits (one run per fold) instead of 5 x 2
    "uncertainty.calibration_folds": 3,
    "uncertainty.calibration_runs": 1,
}
# the comparison: every model on the run's own validation split (distance-split, one fold)
DEMO_CV = {"cv.design": "distance-split", "cv.folds": 1, "cv.models": ["cnn_lstm", "rf", "qrf", "xgb"]}


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and the headline numbers."""

    data: Path
    run: Path
    summary: RunSummary
    cv: Path | None = None
    map: Path | None = None
    report: Path | None = None


def demo_config(data: Path, overrides: dict[str, Any] | None = None) -> SocmapConfig:
    """The config for a synthetic data set folder written by :func:`socmap.synth.synthesize`."""
    return load_config(
        None,
        {
            "name": "bavaria-synthetic-demo",
            "samples.path": str(data / "samples.csv"),
            "covariates.root": str(data / "covariates"),
            "filters.region": str(data / "region.geojson"),
            **DEMO_TRAIN,
            **DEMO_CV,
            **(overrides or {}),
        },
    )


def run_demo(
    out: str | Path,
    overwrite: bool = True,
    overrides: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    compare: bool = True,
    map_year: int | None = 2023,
) -> DemoResult:
    """Synthesize -> prepare -> train -> compare with baselines -> map ``map_year`` -> HTML report.

    Writes under ``out``: data/, prepared/, run/ (model, metrics, report.html), run/cv/ (the comparison on the
    run's own validation split: identical for every model), soc_<year>.tif (+ PNGs).
    """
    from socmap.report import build_report
    from socmap.train import train

    out = Path(out)
    data = out / "data"
    if not (data / "truth.json").is_file() or overwrite:
        say(f"synthesizing the Bavaria data set into {data}")
        synthesize(data, overwrite=True)
    config = demo_config(data, overrides)
    say("preparing windows and training the CNN-LSTM")
    result = train(config, out / "run", prepared=out / "prepared", overwrite=True, on_epoch=on_epoch)
    demo = DemoResult(data, result.out, result.summary)
    if compare:
        from socmap.evaluate import cross_validate
        from socmap.windows import load_prepared

        say("comparing with random forest, quantile forest and XGBoost on the same validation split")
        cv = cross_validate(config, load_prepared(out / "prepared"), result.out / "cv", overwrite=True)
        demo.cv = cv.out
    if map_year is not None:
        from socmap.mapping import map_soc

        say(f"mapping SOC {map_year} over Bavaria")
        options = MapConfig(year=str(map_year))
        demo.map = map_soc(options, result.out, out / f"soc_{map_year}.tif", overwrite=True).out
    say("writing the HTML report")
    demo.report = build_report(result.out, map_path=demo.map, cv_dir=demo.cv)
    return demo
