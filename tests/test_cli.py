"""The command line: help on every command, synth end to end, one-line errors without traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("command", [[], ["synth"], ["demo"], ["prepare"], ["train"]])
def test_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_synth_help_explains_every_option() -> None:
    out = run_cli("synth", "--help").stdout
    for option in ("--out", "--resolution", "--seed", "--n-locations", "--region", "--overwrite"):
        assert option in out
    assert "metres" in out and "byte-identical" in out


def test_version() -> None:
    from socmap import __version__

    assert run_cli("--version").stdout.strip() == f"socmap {__version__}"


def test_synth_cli_writes_data_set(tmp_path: Path) -> None:
    result = run_cli("synth", "--out", str(tmp_path / "d"), "--resolution", "4000", "--n-locations", "120")
    assert result.returncode == 0, result.stderr
    assert "samples at" in result.stdout and "R² ceiling" in result.stdout
    assert (tmp_path / "d" / "samples.csv").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resolution", "5"], "--resolution 5.0: expected metres between 30 and 5000"),
        (["--n-locations", "3"], "--n-locations 3: expected at least 50"),
        (["--region", "/nonexistent/r.geojson"], "region file /nonexistent/r.geojson does not exist"),
    ],
)
def test_synth_bad_arguments_give_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("synth", "--out", str(tmp_path / "d"), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_existing_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    result = run_cli("synth", "--out", str(tmp_path / "d"), "--resolution", "4000", "--n-locations", "60")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pass --overwrite" in result.stderr


def test_prepare_cli_reports_drops_and_reuses(small_synth_dir: Path, tmp_path: Path) -> None:
    sets = [
        "--set",
        f"samples.path={small_synth_dir / 'samples.csv'}",
        "--set",
        f"covariates.root={small_synth_dir / 'covariates'}",
    ]
    out = tmp_path / "prep"
    first = run_cli("prepare", *sets, "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "dropped" in first.stdout and "above_max_target" in first.stdout
    assert "windows [" in first.stdout and ", 6, 5, 5, 5]" in first.stdout
    assert "SoilEvaporation: no file for 2012, 2013" in first.stderr
    again = run_cli("prepare", *sets, "--out", str(out))
    assert again.returncode == 0 and "up to date" in again.stdout


def test_prepare_cli_bad_config_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("windows:\n  sise: 3\n")
    result = run_cli("prepare", "--config", str(cfg), "--out", str(tmp_path / "p"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown key 'windows.sise'; valid keys here: size, time_steps" in result.stderr


def test_train_help_keeps_the_seed_flags() -> None:
    out = run_cli("train", "--help").stdout
    for flag in (
        "--lr",
        "--loss_type",
        "--loss_alpha",
        "--target_transform",
        "--use_validation",
        "--target-val-ratio",
        "--distance-threshold",
        "--num-runs",
        "--epochs",
        "--batch-size",
        "--patience",
        "--seed",
        "--model",
        "--wandb-mode",
        "--resume",
    ):
        assert flag in out, flag


def test_train_cli_end_to_end_with_offline_tracking(small_synth_dir: Path, tmp_path: Path) -> None:
    sets = [
        "--set",
        f"samples.path={small_synth_dir / 'samples.csv'}",
        "--set",
        f"covariates.root={small_synth_dir / 'covariates'}",
        "--set",
        "uncertainty.calibration_folds=0",
    ]
    out = tmp_path / "run"
    result = run_cli(
        "train",
        *sets,
        "--out",
        str(out),
        "--epochs",
        "2",
        "--set",
        "train.seed_models=1",
        "--num-runs",
        "2",
        "--lr",
        "0.002",
        "--loss_type",
        "composite_l2",
        "--target_transform",
        "log",
        "--wandb-mode",
        "offline",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best run" in result.stdout and "R² " in result.stdout and "Pearson r²" in result.stdout
    assert "known ceiling of the test set" in result.stdout and "held-out test" in result.stdout
    import json

    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["runs"]) == 2
    offline = list((out / "runs" / "run_0" / "wandb").glob("offline-run-*"))
    assert offline, "W&B should have written an offline run"
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["loss_type"] == "composite_l2" and saved["train"]["epochs"] == 2


def test_tree_model_through_train_predict_and_errors_naming_flags(
    small_synth_dir: Path, tmp_path: Path
) -> None:
    """`train --model xgb` -> `predict` through the CLI; a bad kind names the key and its flag, one line."""
    import json

    sets = [
        "--set",
        f"samples.path={small_synth_dir / 'samples.csv'}",
        "--set",
        f"covariates.root={small_synth_dir / 'covariates'}",
        "--set",
        "models.xgb.n_estimators=40",
        "--set",
        "uncertainty.calibration_folds=0",
    ]
    out = tmp_path / "run"
    result = run_cli("train", *sets, "--out", str(out), "--model", "xgb", "--num-runs", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best run" in result.stdout and "(xgb)" in result.stdout and "held-out test" in result.stdout
    assert json.loads((out / "model.json").read_text())["kind"] == "xgb"
    assert (out / "estimator.ubj").is_file() and not (out / "model.pt").exists()
    pred = run_cli("predict", "--run", str(out), *sets, "--out", str(tmp_path / "p.csv"))
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert "2 model(s): R² " in pred.stdout
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv")
    assert {"observed", "predicted", "ensemble_std"} <= set(table.columns) and table[
        "predicted"
    ].notna().all()
    bad = run_cli("train", *sets, "--out", str(tmp_path / "bad"), "--model", "svm")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, bad.stderr
    assert (
        "train.model: 'svm' is not a model kind; expected one of cnn_lstm, transformer, cnn3d, rf, qrf, xgb, linear"
        in lines[0]
    )
    assert lines[0].endswith("(flag --model)")
