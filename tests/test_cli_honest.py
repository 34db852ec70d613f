"""Issue-13 items through the CLI, on a generated non-Bavaria data set (pH, UTM 55 South, static covariates):
labelled honest scores, flags honoured or refused, a foreign --prepared folder refused, and one-line errors
that say what to set (block size, projected coordinates given as lat/lon, ambiguous dates); the % warning only
for organic carbon."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli
from tests.data.examples.data import make

FAST = ("--model", "linear", "--num-runs", "2", "--set", "uncertainty.calibration_folds=0")


@pytest.fixture(scope="module")
def ph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pH example's config.yaml."""
    return make(tmp_path_factory.mktemp("ph") / "data", "nsw-ph").config


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def variant(
    config: Path, tmp: Path, table: pd.DataFrame | None = None, **sections: dict[str, object]
) -> Path:
    """A copy of the example's config (absolute paths) with changed sections and, optionally, other samples."""
    data = yaml.safe_load(config.read_text())
    data["covariates"]["root"] = str(config.parent / data["covariates"]["root"])
    data["samples"]["path"] = str(config.parent / data["samples"]["path"])
    if table is not None:
        table.to_csv(tmp / "samples.csv", index=False)
        data["samples"]["path"] = str(tmp / "samples.csv")
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    out = tmp / "config.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_train_labels_every_score_and_never_selects_on_the_test_set(ph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli("train", "--config", str(ph), "--out", str(run), *FAST, "--set", "split.method=random")
    assert proc.returncode == 0, proc.stderr
    assert "held-out test set (never used for fitting, early stopping or choosing the run)" in proc.stdout
    assert "mean of 2 runs (what map and predict use)" in proc.stdout
    assert "training fit of run 0 (not a validation)" in proc.stdout
    summary = json.loads((run / "metrics.json").read_text())
    assert "test" in summary["mean_of_runs"]["evaluated_on"]
    assert "never" in summary["selection"] and "test" in summary["selection"]
    roles = pd.read_csv(run / "split.csv")["role"].value_counts()
    # --target-val-ratio is honoured with split.method random (it used to hold out 1/folds)
    assert roles["test"] == pytest.approx(0.08 * roles.sum(), abs=2)
    bigger = run_cli(
        "train", "--config", str(ph), "--out", str(tmp_path / "r25"), *FAST,
        "--set", "split.method=random", "--target-val-ratio", "0.25",
    )  # fmt: skip
    assert bigger.returncode == 0, bigger.stderr
    roles = pd.read_csv(tmp_path / "r25" / "split.csv")["role"].value_counts()
    assert roles["test"] == pytest.approx(0.25 * roles.sum(), abs=3)


def test_train_prints_the_out_of_fold_score_of_its_calibration_cv(ph: Path, tmp_path: Path) -> None:
    """With calibration on, `socmap train` also prints the calibration CV's out-of-fold score of all training
    samples (steadier than a small test set's), as stored in calibration.json and recomputed from its rows."""
    run = tmp_path / "run"
    proc = run_cli("train", "--config", str(ph), "--out", str(run), "--model", "linear", "--num-runs", "1")
    assert proc.returncode == 0, proc.stderr
    state = json.loads((run / "calibration.json").read_text())
    oof = pd.read_csv(run / "calibration_oof.csv")
    y, p = oof["observed"], oof["predicted"]
    r2 = 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert state["oof_metrics"]["r2"] == pytest.approx(r2)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("out-of-fold score of the"))
    assert line.startswith(f"out-of-fold score of the {len(oof)} training samples ({state['folds']}-fold ")
    assert f"R² {r2:.3f}, RMSE " in line


def test_no_validation_says_the_score_is_a_training_fit(ph: Path, tmp_path: Path) -> None:
    proc = run_cli("train", "--config", str(ph), "--out", str(tmp_path / "r"), *FAST, "--no_validation")
    assert proc.returncode == 0, proc.stderr
    assert "training fit (not a validation)" in proc.stdout and "held-out test set" not in proc.stdout


def test_foreign_prepared_folder_is_refused(ph: Path, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    assert run_cli("prepare", "--config", str(ph), "--out", str(prepared)).returncode == 0
    other = variant(ph, tmp_path, windows={"size": 3})
    error = one_error(
        run_cli("train", "--config", str(other), "--out", str(tmp_path / "r"), "--prepared", str(prepared))
    )
    assert "was made from another config or other input files; pass --overwrite" in error
    assert (prepared / "meta.json").is_file()  # untouched


def test_block_size_larger_than_the_area_says_what_would_work(ph: Path, tmp_path: Path) -> None:
    error = one_error(
        run_cli("cv", "--config", str(ph), "--out", str(tmp_path / "cv"), "--models", "linear",
                "--set", "split.block_size_km=500")
    )  # fmt: skip
    assert "block_size_km" in error and "or smaller" in error


def test_projected_numbers_in_lat_lon_columns_say_where_they_fell(ph: Path, tmp_path: Path) -> None:
    samples = pd.read_csv(ph.parent / "samples.csv").rename(columns={"easting": "lon", "northing": "lat"})
    config = variant(
        ph, tmp_path, samples, samples={"x": None, "y": None, "lat": "lat", "lon": "lon", "crs": "EPSG:4326"}
    )
    error = one_error(run_cli("prepare", "--config", str(config), "--out", str(tmp_path / "p")))
    assert "samples.x" in error and "samples.crs" in error


def test_ambiguous_day_month_dates_ask_for_a_format(ph: Path, tmp_path: Path) -> None:
    samples = pd.read_csv(ph.parent / "samples.csv")
    samples["sampled"] = ["04-03-15", "12-11-16", "05-06-15"] * (len(samples) // 3) + ["04-03-15"] * (
        len(samples) % 3
    )
    config = variant(ph, tmp_path, samples, samples={"date": "sampled", "time": None})
    error = one_error(run_cli("prepare", "--config", str(config), "--out", str(tmp_path / "p")))
    assert "samples.date_format" in error and "04-03-15" in error


def test_percent_warning_only_for_organic_carbon(ph: Path, tmp_path: Path) -> None:
    """pH values are all below 8, which for OC in g/kg would look like %: no warning for pH."""
    proc = run_cli("prepare", "--config", str(ph), "--out", str(tmp_path / "p"))
    assert proc.returncode == 0 and "target_scale" not in proc.stderr
    samples = pd.read_csv(ph.parent / "samples.csv").rename(columns={"pH_CaCl2": "OC"})
    samples["OC"] = samples["OC"] / 2  # 2-4.5: looks like OC in %
    config = variant(ph, tmp_path, samples, samples={"target": "OC", "target_unit": "g/kg"})
    proc = run_cli("prepare", "--config", str(config), "--out", str(tmp_path / "q"))
    assert proc.returncode == 0 and "samples.target_scale: 10" in proc.stderr
