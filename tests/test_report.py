"""The HTML report: self-contained, every section present, numbers taken from the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from socmap.config import load_config
from socmap.errors import InputError
from socmap.report import SECTIONS, build_report
from socmap.train import train


@pytest.fixture(scope="module")
def run_dir(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        None,
        {
            "samples.path": str(small_synth_dir / "samples.csv"),
            "covariates.root": str(small_synth_dir / "covariates"),
            "filters.region": str(small_synth_dir / "region.geojson"),
            "train.epochs": 2,
            "train.seed_models": 1,
            "train.num_runs": 2,
            "train.wandb_mode": "disabled",
            "uncertainty.calibration_folds": 0,  # no calibration refits: fast tests (test_mapping_models has one)
        },
    )
    return train(cfg, tmp_path_factory.mktemp("run") / "r").out


def test_report_sections_and_self_contained(run_dir: Path) -> None:
    path = build_report(run_dir)
    page = path.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page  # nothing to fetch: forwardable as one file
    summary = json.loads((run_dir / "metrics.json").read_text())
    headline = summary["mean_of_runs"]
    assert "held-out test set" in headline["evaluated_on"]
    assert f"R² {headline['metrics']['r2']:.3f}" in page and "what the map uses" in page
    assert "KS two-sample test" in page
    assert "above_max_target" in page  # drops table
    assert "loss_type: mse" in page  # the config used


def test_report_refuses_unfinished_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a finished run folder"):
        build_report(tmp_path)
