"""Honest training output: the test set never reaches a model, every score is labelled, selection is blind
to the test set, and metrics.json of earlier versions still reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from socmap.config import SocmapConfig, load_config
from socmap.metrics import regression_metrics
from socmap.models import FitData
from socmap.models.deep import DeepModel
from socmap.predict import load_members, predict_table
from socmap.runfolder import EARLY_STOPPING, TEST, TRAINING_FIT, RunFolder, RunMetrics, RunSummary, Score
from socmap.train import select_run, train
from socmap.windows import load_prepared


def config(root: Path, **extra: object) -> SocmapConfig:
    overrides: dict[str, object] = {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "train.epochs": 2,
        "train.seed_models": 1,
        "train.num_runs": 2,
        "train.batch_size": 128,
        "train.wandb_mode": "disabled",
        "train.lr": 0.002,
        "uncertainty.calibration_folds": 0,  # no calibration refits: fast tests (test_mapping_models has one)
    }
    overrides.update(extra)
    return load_config(None, overrides)


def test_test_rows_never_reach_the_model_and_the_map_score_is_the_mean_of_runs(
    small_synth_dir: Path, tmp_path: Path
) -> None:
    seen: list[FitData] = []
    original = DeepModel.early_stopping_rows

    def spy(self: DeepModel, data: FitData) -> FitData:
        assert data.monitor.size == 0  # train gives no monitoring rows: the model carves its own
        out = original(self, data)
        seen.append(out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeepModel, "early_stopping_rows", spy)
        result = train(config(small_synth_dir), tmp_path / "r")
    role = pd.read_csv(result.out / "split.csv")["role"].to_numpy()
    test = set(np.flatnonzero(role == "test"))
    assert len(seen) == 2 and test
    for fit in seen:
        assert fit.monitor.size > 0 and not (set(fit.train) | set(fit.monitor)) & test
    # the mean of all runs' predictions (what map and predict use) scored on the test rows
    data = load_prepared(result.out / "prepared")
    rows = np.array(sorted(test))
    mean = predict_table(load_members(result.out), np.asarray(data.windows[rows]))["predicted"]
    expected = regression_metrics(data.target[rows], mean)
    s = result.summary
    assert s.mean_of_runs is not None
    assert s.mean_of_runs.metrics["r2"] == pytest.approx(expected["r2"], abs=1e-6)
    saved = json.loads((result.out / "metrics.json").read_text())
    assert saved["format"] == 2 and saved["evaluated_on"] == TEST
    assert set(saved["runs"][0]["scores"]) == {"test", "early_stopping", "training"}
    for key, label in (("test", TEST), ("early_stopping", EARLY_STOPPING), ("training", TRAINING_FIT)):
        assert saved["runs"][0]["scores"][key]["evaluated_on"] == label
    assert RunFolder(result.out).load_summary().to_json() == saved  # typed round trip


def _run(i: int, test_r2: float, es_r2: float | None, model: str = "cnn_lstm") -> RunMetrics:
    es = Score(EARLY_STOPPING, {"r2": es_r2}) if es_r2 is not None else None
    return RunMetrics(i, i, model, Score(TEST, {"r2": test_r2}), Score(TRAINING_FIT, {"r2": 0.9}), es)


def test_selection_is_blind_to_the_test_set() -> None:
    best, why = select_run([_run(0, 0.50, 0.20), _run(1, 0.10, 0.30), _run(2, 0.40, 0.25)])
    assert best == 1 and "early-stopping R² (0.300)" in why and "test set is never used" in why
    best, why = select_run([_run(0, 0.10, None, "rf"), _run(1, 0.60, None, "rf")])
    assert best == 0 and why.startswith("run 0: rf records no early-stopping score")
    assert "mean of all 2 runs" in why


def _old_metrics(evaluated_on: str, n_val: int) -> dict[str, Any]:
    metrics = {"r2": 0.3, "rmse": 9.0, "n": float(n_val or 100)}
    run = {
        "run": 0,
        "seed": 0,
        "model": "rf",
        "evaluated_on": evaluated_on,
        "metrics": metrics,
        "warnings": [],
    }
    return {
        "name": "old",
        "model": "rf",
        "n_samples": 120,
        "n_train": 120 - n_val,
        "n_validation": n_val,
        "n_test": 0,
        "evaluated_on": evaluated_on,
        "best_run": 0,
        "runs": [{**run, "parameters": 0}],
        "aggregate": {"r2": {"mean": 0.3, "std": 0.0, "min": 0.3, "max": 0.3}},
        "r2_ceiling": None,
    }


def test_metrics_json_of_earlier_versions_still_reads() -> None:
    s = RunSummary.from_json(_old_metrics("validation", 20))
    assert s.n_test == 20 and s.n_validation == 20 and s.best.metrics["r2"] == 0.3
    assert s.evaluated_on.startswith("validation (run folder written before") and s.best.test is not None
    assert s.best.fit == {"parameters": 0} and s.mean_of_runs is None
    fit_only = RunSummary.from_json(_old_metrics("training (no validation held out)", 0))
    assert fit_only.best.test is None and fit_only.best.training is not None and fit_only.n_test == 0
    again = RunSummary.from_json(json.loads(json.dumps(s.to_json())))
    assert again.to_json() == s.to_json()
