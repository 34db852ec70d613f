"""The whole pipeline on the embedded synthetic Bavaria data set (``socmap demo`` / ``make demo``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socmap.config import SocmapConfig, load_config
from socmap.synth import synthesize

# Scaled so the demo runs in minutes on a 2-core laptop; `socmap train` defaults are the full settings.
DEMO_TRAIN = {"train.epochs": 40, "train.patience": 8, "train.num_runs": 2, "train.lr": 1e-3}


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and the headline numbers."""

    data: Path
    run: Path
    summary: dict[str, Any]


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
            **(overrides or {}),
        },
    )


def run_demo(
    out: str | Path,
    overwrite: bool = True,
    overrides: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> DemoResult:
    """Synthesize -> prepare -> train, writing under ``out`` (data/, prepared/, run/)."""
    from socmap.train import train

    out = Path(out)
    data = out / "data"
    if not (data / "truth.json").is_file() or overwrite:
        say(f"synthesizing the Bavaria data set into {data}")
        synthesize(data, overwrite=True)
    config = demo_config(data, overrides)
    say("preparing windows and training the CNN-LSTM")
    result = train(config, out / "run", prepared=out / "prepared", overwrite=True, on_epoch=on_epoch)
    return DemoResult(data, result.out, result.summary)
