"""Model selection from a finished cross-validation, and a model kind registered outside socmap in cv."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from numpy.typing import NDArray

import socmap.models.registry as registry
from socmap.config import SocmapConfig, load_config
from socmap.errors import InputError
from socmap.evaluate import CVResult, cross_validate, rank_models, select_model
from socmap.models import PREDICT_BATCH, FitData, FitInfo, InputSpec, SocModel, register_model
from socmap.train import train
from socmap.windows import PreparedData, prepare


def config(root: Path, **extra: object) -> SocmapConfig:
    overrides: dict[str, object] = {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "train.num_runs": 1,
        "train.wandb_mode": "disabled",
        "models": {"rf": {"n_estimators": 30}},
        "cv.models": ["rf", "linear"],
        "cv.design": "spatial-block",
        "cv.folds": 3,
        "uncertainty.calibration_folds": 0,  # no calibration refits: fast tests (test_mapping_models has one)
    }
    overrides.update(extra)
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def prepared(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    data, _ = prepare(config(small_synth_dir), tmp_path_factory.mktemp("prep-select") / "p")
    return data


@pytest.fixture(scope="module")
def cv_result(
    small_synth_dir: Path, prepared: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> CVResult:
    return cross_validate(config(small_synth_dir), prepared, tmp_path_factory.mktemp("cv") / "cv")


def test_selects_best_pooled_model_and_train_accepts_the_config(cv_result: CVResult, tmp_path: Path) -> None:
    pooled = cv_result.summary.query("metric == 'r2'").set_index("model")["pooled"]
    selection = select_model(cv_result.out)
    assert selection.kind == pooled.idxmax() and selection.metric == "r2"
    assert selection.value == pytest.approx(pooled.max())
    assert [k for k, _ in selection.ranking] == list(pooled.sort_values(ascending=False).index)
    assert selection.config_path == cv_result.out / "selected.yaml"
    # the cv's own config with train.model set to the winner, nothing else changed
    original = yaml.safe_load((cv_result.out / "config.yaml").read_text())
    selected = yaml.safe_load(selection.config_path.read_text())
    assert selected == {**original, "train": {**original["train"], "model": selection.kind}}
    result = train(load_config(selection.config_path), tmp_path / "run")
    assert result.summary.model == selection.kind
    assert json.loads((tmp_path / "run" / "model.json").read_text())["kind"] == selection.kind


def test_ranking_directions_and_errors(cv_result: CVResult, tmp_path: Path) -> None:
    summary = pd.DataFrame(
        {
            "model": ["a", "b", "c"] * 3,
            "metric": ["r2"] * 3 + ["rmse"] * 3 + ["me"] * 3,
            "pooled": [0.5, np.nan, 0.7, 3.0, 2.0, 4.0, -0.1, 0.3, 0.05],
        }
    )
    assert rank_models(summary, "r2") == [("c", 0.7), ("a", 0.5), ("b", pytest.approx(np.nan, nan_ok=True))]
    assert [k for k, _ in rank_models(summary, "rmse")] == ["b", "a", "c"]
    assert [k for k, _ in rank_models(summary, "me")] == ["c", "a", "b"]  # |ME| smallest first
    assert select_model(cv_result.out, "rmse").kind in ("rf", "linear")
    with pytest.raises(InputError, match="selection metric 'pearson_r2': expected one of r2, ccc"):
        select_model(cv_result.out, "pearson_r2")
    with pytest.raises(InputError, match="no finished cross-validation"):
        select_model(tmp_path)


class MeanModel(SocModel):
    """Predicts the training mean, with the training targets' 5 % .. 95 % quantiles as its interval."""

    def __init__(self) -> None:
        self.levels: dict[float, float] = {}
        self.mean = float("nan")

    def fit(self, data: FitData) -> FitInfo:
        self.inputs = data.inputs
        y = data.target[data.train]
        self.mean = float(y.mean())
        self.levels = {q: float(np.quantile(y, q)) for q in (0.05, 0.5, 0.95)}
        return FitInfo(parameters=1)

    def predict(self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH) -> NDArray[np.float64]:
        return np.full(len(windows), self.mean)

    def gives_quantiles(self, levels: Sequence[float]) -> bool:
        return all(q in self.levels for q in levels)

    def predict_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> NDArray[np.float64] | None:
        return np.tile([self.levels[q] for q in levels], (len(windows), 1))

    def state(self, folder: Path) -> dict[str, Any]:
        return {"mean": self.mean, "levels": [[q, v] for q, v in self.levels.items()]}

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        model = cls()
        model.mean, model.levels = float(state["mean"]), {float(q): float(v) for q, v in state["levels"]}
        return model


@pytest.fixture
def dummy_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.available_models()))  # restored after the test
    register_model("dummy", MeanModel, lambda config: MeanModel(), "training mean (test)")
    yield "dummy"


def test_a_kind_registered_later_is_cross_validated(
    dummy_kind: str, small_synth_dir: Path, prepared: PreparedData, tmp_path: Path
) -> None:
    cfg = config(small_synth_dir, **{"cv.models": ["linear", dummy_kind]})
    res = cross_validate(cfg, prepared, tmp_path / "cv")
    assert res.models == ["linear", "dummy"] and res.interval_models == ["dummy"]
    dummy = res.predictions[res.predictions["model"] == "dummy"]
    folds = res.folds.set_index("index")["fold"]
    for k, g in dummy.groupby("fold"):  # each fold predicts the mean of its own training rows
        train = np.setdiff1d(np.arange(len(prepared.samples)), folds[folds == k].index)
        np.testing.assert_allclose(g["predicted"], prepared.target[train].mean())
    assert res.per_fold.loc[res.per_fold["model"] == "dummy", "picp"].notna().all()
    assert res.per_fold.loc[res.per_fold["model"] == "linear", "picp"].isna().all()
    r2 = res.summary.set_index(["model", "metric"])["pooled"]
    assert r2[("dummy", "r2")] < 0.05 < r2[("linear", "r2")]
    assert select_model(res.out).kind == "linear"


def test_overwrite_drops_a_stale_selection(
    small_synth_dir: Path, prepared: PreparedData, tmp_path: Path
) -> None:
    cfg = config(small_synth_dir, **{"cv.models": ["linear"]})
    cross_validate(cfg, prepared, tmp_path)
    assert select_model(tmp_path).kind == "linear" and (tmp_path / "selected.yaml").is_file()
    cross_validate(cfg, prepared, tmp_path, overwrite=True)
    assert not (tmp_path / "selected.yaml").exists() and (tmp_path / "metrics_summary.csv").is_file()
