"""Cross-validation: identical folds for every model, tables recomputed from predictions.csv, designs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from socmap.config import SocmapConfig, load_config
from socmap.errors import InputError, OutputError
from socmap.evaluate import CVResult, cross_validate
from socmap.models import FitData, create_model
from socmap.models.trainer import fit_network
from socmap.split import haversine_km, make_splitter
from socmap.windows import PreparedData, prepare

FAST = {"rf": {"n_estimators": 60}, "qrf": {"n_estimators": 60}, "xgb": {"n_estimators": 80}}
MODELS = ["cnn_lstm", "rf", "qrf", "xgb"]
OWN_LABELS = ["own PICP (90%)", "own interval width", "own interval score"]  # a model's own Q05-Q95


def config(root: Path, **extra: object) -> SocmapConfig:
    overrides: dict[str, object] = {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "train.epochs": 1,
        "train.seed_models": 1,
        "train.batch_size": 128,
        "train.lr": 0.002,
        "train.loss_type": "quantile",
        "train.wandb_mode": "disabled",
        "models": FAST,
    }
    overrides.update(extra)
    return load_config(None, overrides)


@dataclass
class Run:
    """The module's cross-validation and the rows every deep fit's training loop received."""

    result: CVResult
    deep_rows: list[tuple[np.ndarray, np.ndarray]]  # (train, monitor) per fold, in fold order
    on_fold: list[tuple[str, int, int, float]]  # the progress callback's calls


@pytest.fixture(scope="module")
def prepared(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    data, _ = prepare(config(small_synth_dir), tmp_path_factory.mktemp("prep-cv") / "p")
    return data


@pytest.fixture(scope="module")
def run(small_synth_dir: Path, prepared: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("cv") / "block"
    cfg = config(
        small_synth_dir, **{"cv.models": MODELS, "cv.design": "spatial-block", "cv.folds": 3, "cv.seed": 4}
    )
    rows: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(net: Any, data: FitData, *args: Any) -> Any:
        rows.append((data.train.copy(), data.monitor.copy()))
        return fit_network(net, data, *args)

    calls: list[tuple[str, int, int, float]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("socmap.models.deep.fit_network", spy)
        result = cross_validate(cfg, prepared, out, on_fold=lambda *a: calls.append(a))
    return Run(result, rows, calls)


def test_on_fold_reports_every_model_and_fold_in_order(run: Run) -> None:
    """cv's progress callback: (model, fold index, number of folds, seconds) after every fit."""
    assert [(m, k, n) for m, k, n, _ in run.on_fold] == [(m, k, 3) for m in MODELS for k in range(3)]
    per_fold = run.result.per_fold.set_index(["model", "fold"])["seconds"]
    for model, k, _, seconds in run.on_fold:
        assert seconds > 0 and per_fold[(model, k)] == pytest.approx(seconds, abs=1e-3)


@pytest.fixture(scope="module")
def result(run: Run) -> CVResult:
    return run.result


def test_outputs_written(result: CVResult) -> None:
    for name in (
        "folds.csv",
        "predictions.csv",
        "metrics_per_fold.csv",
        "metrics_summary.csv",
        "metrics.md",
        "cv.json",
        "config.yaml",
    ):
        assert (result.out / name).is_file(), name
    assert (result.out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(result.out.glob(".*tmp*"))  # atomic writes left no temporary files
    cv = json.loads((result.out / "cv.json").read_text())
    assert cv["folds"] == 3 and cv["models"] == MODELS and cv["cv"] == "spatial-block" and cv["seed"] == 4
    assert cv["fold_design"]["parameters"]["block_size_km"] == load_config(None).split.block_size_km
    assert cv["model_options"]["rf"] == FAST["rf"]
    assert set(cv["seconds"]) == set(MODELS) and all(s > 0 for s in cv["seconds"].values())
    per_fold = result.per_fold.groupby("model")["seconds"].sum()
    for model in MODELS:
        assert cv["seconds"][model] == pytest.approx(per_fold[model], abs=0.01)
    assert sorted(cv["interval_models"]) == ["cnn_lstm", "qrf"] == sorted(result.interval_models)
    for k in range(3):  # the work folder of every fit, without a leftover checkpoint
        work = result.out / "models" / "cnn_lstm" / f"fold_{k:02d}"
        assert json.loads((work / "fit.json").read_text())["epochs_trained"] == 1
        assert not (work / "checkpoint.pt").exists()


def test_folds_identical_across_models_and_match_the_splitter(
    result: CVResult, prepared: PreparedData
) -> None:
    pred = pd.read_csv(result.out / "predictions.csv", dtype={"sample_id": str})
    folds = pd.read_csv(result.out / "folds.csv", dtype={"sample_id": str})
    assert set(pred["model"]) == set(MODELS)
    reference = sorted(zip(folds["fold"], folds["index"], strict=True))
    for model, group in pred.groupby("model"):
        assert sorted(zip(group["fold"], group["index"], strict=True)) == reference, model
        ids = group.groupby("fold")["sample_id"].apply(lambda s: sorted(s))
        assert ids.equals(folds.groupby("fold")["sample_id"].apply(lambda s: sorted(s)))
    # k-fold: a partition of all samples
    assert len(folds) == len(prepared.samples) and folds["index"].is_unique
    cfg_block = load_config(None).split.block_size_km
    splitter = make_splitter("spatial-block", n_splits=3, block_size_km=cfg_block, seed=4)
    for k, (_, test) in enumerate(splitter.split(prepared.samples[["lon", "lat"]])):
        np.testing.assert_array_equal(np.sort(folds.loc[folds["fold"] == k, "index"]), test)
        sid = prepared.samples["sample_id"].to_numpy()[test].astype(str)
        assert sorted(folds.loc[folds["fold"] == k, "sample_id"]) == sorted(sid)
    # observed values are the prepared targets of those rows
    np.testing.assert_allclose(pred["observed"], prepared.target[pred["index"]])


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def test_metrics_recomputed_from_predictions(result: CVResult) -> None:
    pred = pd.read_csv(result.out / "predictions.csv")
    per_fold = pd.read_csv(result.out / "metrics_per_fold.csv")
    summary = pd.read_csv(result.out / "metrics_summary.csv").set_index(["model", "metric"])
    assert len(per_fold) == 4 * 3
    for (model, fold), g in pred.groupby(["model", "fold"]):
        y, p = g["observed"].to_numpy(), g["predicted"].to_numpy()
        row = per_fold[(per_fold["model"] == model) & (per_fold["fold"] == fold)].iloc[0]
        assert row["n"] == len(g)
        assert row["r2"] == pytest.approx(_r2(y, p), rel=1e-9)
        assert row["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)), rel=1e-9)
        assert row["mae"] == pytest.approx(np.mean(np.abs(y - p)), rel=1e-9)
        assert row["me"] == pytest.approx(np.mean(p - y), rel=1e-9, abs=1e-12)
        q1, q3 = np.percentile(y, [25, 75])
        assert row["rpiq"] == pytest.approx((q3 - q1) / np.sqrt(np.mean((y - p) ** 2)), rel=1e-9)
        ccc = 2 * np.cov(y, p, bias=True)[0, 1] / (y.var() + p.var() + (y.mean() - p.mean()) ** 2)
        assert row["ccc"] == pytest.approx(ccc, rel=1e-9)
    for model, g in per_fold.groupby("model"):
        assert summary.loc[(model, "r2"), "mean"] == pytest.approx(g["r2"].mean(), rel=1e-12)
        assert summary.loc[(model, "r2"), "std"] == pytest.approx(g["r2"].std(ddof=1), rel=1e-12)
        assert summary.loc[(model, "rmse"), "max"] == pytest.approx(g["rmse"].max(), rel=1e-12)
        every = pred[pred["model"] == model]
        assert summary.loc[(model, "r2"), "pooled"] == pytest.approx(
            _r2(every["observed"].to_numpy(), every["predicted"].to_numpy()), rel=1e-9
        )


def test_interval_metrics_for_interval_models_only(result: CVResult) -> None:
    pred = pd.read_csv(result.out / "predictions.csv")
    per_fold = pd.read_csv(result.out / "metrics_per_fold.csv")
    for model in ("qrf", "cnn_lstm"):  # the deep model was trained with the quantile loss
        g = pred[pred["model"] == model]
        assert g["q05"].notna().all() and (g["q05"] <= g["q95"]).all()
        for fold, gf in g.groupby("fold"):
            y, lo, hi = gf["observed"], gf["q05"], gf["q95"]
            row = per_fold[(per_fold["model"] == model) & (per_fold["fold"] == fold)].iloc[0]
            assert row["picp"] == pytest.approx(((y >= lo) & (y <= hi)).mean())
            assert row["interval_width"] == pytest.approx((hi - lo).mean())
            score = (hi - lo) + 20 * (lo - y) * (y < lo) + 20 * (y - hi) * (y > hi)
            assert row["interval_score"] == pytest.approx(score.mean())
    qrf = pred[pred["model"] == "qrf"]
    picp = ((qrf["observed"] >= qrf["q05"]) & (qrf["observed"] <= qrf["q95"])).mean()
    assert 0.75 < picp < 0.98  # calibrated roughly at the nominal 90 %
    for model in ("rf", "xgb"):
        assert pred.loc[pred["model"] == model, "q05"].isna().all()
        assert per_fold.loc[per_fold["model"] == model, "picp"].isna().all()


def test_rf_beats_constant_and_stays_below_the_known_ceiling(
    result: CVResult, small_synth_dir: Path, prepared: PreparedData
) -> None:
    ceiling = json.loads((small_synth_dir / "truth.json").read_text())["r2_ceiling_max_oc_150"]
    summary = result.summary.set_index(["model", "metric"])
    r2 = float(summary.loc[("rf", "r2"), "pooled"])
    assert 0.3 < r2 < ceiling + 0.05, (r2, ceiling)
    assert (result.per_fold.loc[result.per_fold["model"] == "rf", "r2"] > 0).all()
    assert result.r2_ceiling is not None and abs(result.r2_ceiling - ceiling) < 0.1
    # the rf predictions of fold 0 are those of an independently fitted model of the same config
    folds = result.folds
    test = np.sort(folds.loc[folds["fold"] == 0, "index"].to_numpy())
    train = np.setdiff1d(np.arange(len(prepared.samples)), test)
    cfg = config(small_synth_dir)
    model = create_model("rf", cfg)
    empty = np.empty(0, np.int64)
    model.fit(FitData(prepared.windows, prepared.target, train, empty, prepared.meta.input_spec(), seed=0))
    p = model.predict(np.asarray(prepared.windows[test]))
    got = result.predictions.query("model == 'rf' and fold == 0").sort_values("index")["predicted"]
    np.testing.assert_allclose(got, p, rtol=1e-9)


def test_deep_model_never_sees_its_test_fold(run: Run) -> None:
    folds, per_fold = run.result.folds, run.result.per_fold
    assert len(run.deep_rows) == 3  # one deep fit per fold
    n = len(run.result.predictions) // len(MODELS)
    for k, (train, monitor) in enumerate(run.deep_rows):
        test = folds.loc[folds["fold"] == k, "index"].to_numpy()
        assert monitor.size > 0  # early stopping on rows carved out of the fold's training part ...
        assert not set(train) & set(test) and not set(monitor) & set(test)  # ... never on its test part
        assert not set(train) & set(monitor)
        fold_train = np.setdiff1d(np.arange(n), test)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, monitor])), fold_train)
        n_rf = per_fold.query("model == 'rf' and fold == @k")["n_train"].iloc[0]
        assert (
            train.size + monitor.size
            == n_rf
            == per_fold.query("model == 'cnn_lstm' and fold == @k")["n_train"].iloc[0]
        )


def test_markdown_lists_every_model_and_metric(result: CVResult) -> None:
    text = (result.out / "metrics.md").read_text()
    assert text == result.markdown
    for model in MODELS:
        assert text.count(f"| {model} |") == 4  # mean ± std, pooled, calibrated intervals, AOA errors
    labels = ["R²", "RMSE", "MAE", "ME", "RPIQ", "CCC", *OWN_LABELS]
    headers = [line for line in text.splitlines() if line.startswith("| model |")]
    assert len(headers) == 4  # the two metric tables, then calibrated intervals and AOA errors
    for header in headers[:2]:
        assert [c.strip() for c in header.strip("|").split("|")] == ["model", *labels]
    rf_r2 = result.summary.set_index(["model", "metric"]).loc[("rf", "r2")]
    assert f"{rf_r2['mean']:.3f} ± {rf_r2['std']:.3f}" in text
    rf_line = next(line for line in text.splitlines() if line.startswith("| rf |"))
    assert rf_line.rstrip(" |").endswith("–")  # no interval for rf


def test_refuses_finished_folder_and_bad_names(
    result: CVResult, prepared: PreparedData, small_synth_dir: Path
) -> None:
    cfg = config(small_synth_dir, **{"cv.models": ["rf"], "cv.folds": 3})
    with pytest.raises(OutputError, match="--overwrite"):
        cross_validate(cfg, prepared, result.out)
    # an unknown kind: refused by the config, and by the stage if it slipped in after loading
    with pytest.raises(
        InputError,
        match=r"cv\.models: 'svm' is not a model kind; expected one of cnn_lstm, transformer, cnn3d, rf",
    ):
        config(small_synth_dir, **{"cv.models": ["rf", "svm"]})
    bad = config(small_synth_dir)
    bad.cv.models = ["rf", "svm"]
    with pytest.raises(
        InputError,
        match=r"cv\.models: 'svm' is not a model kind; expected one of cnn_lstm, transformer, cnn3d, rf",
    ):
        cross_validate(bad, prepared, result.out / "x")
    with pytest.raises(InputError, match=r"cv\.design = 'kfold'.*spatial-block"):
        config(small_synth_dir, **{"cv.design": "kfold"})
    with pytest.raises(InputError, match="models: 'cnn' is not a model kind"):
        config(small_synth_dir, **{"models": {"cnn": {}}})
    # bad model options and fold counts fail before anything is fitted or written
    with pytest.raises(InputError, match=r"models\.rf option.*n_trees"):
        cross_validate(config(small_synth_dir, models={"rf": {"n_trees": 5}}), prepared, result.out / "x")
    with pytest.raises(InputError, match=r"cv\.folds 1: expected an integer >= 2 for spatial-block"):
        cross_validate(config(small_synth_dir, **{"cv.folds": 1}), prepared, result.out / "x")
    assert not (result.out / "x").exists()


def test_buffered_leaves_out_locations_with_buffer(
    prepared: PreparedData, small_synth_dir: Path, tmp_path: Path
) -> None:
    extra = {"split.distance_km": 5.0, "cv.models": ["rf"], "cv.design": "buffered", "cv.folds": 4}
    res = cross_validate(config(small_synth_dir, **extra), prepared, tmp_path)
    lon, lat = prepared.samples["lon"].to_numpy(), prepared.samples["lat"].to_numpy()
    assert sorted(res.folds["fold"].unique()) == [0, 1, 2, 3]
    for k, g in res.folds.groupby("fold"):
        idx = g["index"].to_numpy()
        assert len(np.unique(np.round(np.column_stack([lon[idx], lat[idx]]), 6), axis=0)) == 1  # one location
        far = haversine_km(lon, lat, lon[idx[0]], lat[idx[0]]) > 5.0
        assert res.per_fold.loc[res.per_fold["fold"] == k, "n_train"].iloc[0] == far.sum()
    assert res.per_fold["r2"].isna().all()  # one location per fold: only pooled metrics are meaningful
    pooled = res.summary.set_index(["model", "metric"]).loc[("rf", "rmse"), "pooled"]
    assert pooled == pytest.approx(
        np.sqrt(np.mean((res.predictions["observed"] - res.predictions["predicted"]) ** 2))
    )
    assert res.fold_design.parameters["buffer_km"] == 5.0


def test_distance_split_repeats_with_seeds(
    prepared: PreparedData, small_synth_dir: Path, tmp_path: Path
) -> None:
    extra = {"cv.models": ["rf", "xgb"], "cv.design": "distance-split", "cv.folds": 2, "cv.seed": 3}
    res = cross_validate(config(small_synth_dir, **extra), prepared, tmp_path)
    coords = prepared.samples[["lon", "lat"]]
    for k in range(2):
        single = make_splitter("distance-split", val_ratio=0.08, min_distance_km=1.2, seed=3 + k)
        _, test = next(single.split(coords))
        np.testing.assert_array_equal(res.folds.loc[res.folds["fold"] == k, "index"].to_numpy(), test)
        assert abs(test.size / len(coords) - 0.08) < 0.01
    a, b = (set(res.folds.loc[res.folds["fold"] == k, "index"]) for k in range(2))
    assert a != b
    assert len(res.per_fold) == 4 and res.per_fold["r2"].notna().all()
    assert res.fold_design.design == "distance-split" and res.fold_design.seed == 3
    assert res.fold_design.parameters["val_ratio"] == 0.08


def test_knndm_records_what_the_splitter_chose(
    prepared: PreparedData, small_synth_dir: Path, tmp_path: Path
) -> None:
    extra = {"cv.models": ["linear"], "cv.design": "knndm", "cv.folds": 3}
    res = cross_validate(config(small_synth_dir, **extra), prepared, tmp_path)
    cv = json.loads((tmp_path / "cv.json").read_text())["fold_design"]
    assert cv["design"] == "knndm" and cv["folds"] == 3 and cv["seed"] == 0
    assert cv["parameters"]["n_prediction_points"] == 2000
    # no region configured: the points follow the map's rule (the covariate grid), not Bavaria
    assert cv["parameters"]["prediction_region"].startswith("covariate grid valid pixels")
    assert np.isfinite(cv["fitted"]["w_"]) and cv["fitted"]["q_"] >= 3
    assert cv["fitted"]["candidates_"][0][0] == 3
    assert res.fold_design.fitted == cv["fitted"]
    assert len(res.folds) == len(prepared.samples) and res.folds["index"].is_unique


def test_splitter_errors_name_the_config_keys(
    prepared: PreparedData, small_synth_dir: Path, tmp_path: Path
) -> None:
    cfg = config(small_synth_dir, **{"cv.models": ["linear"], "cv.folds": 50, "split.block_size_km": 200.0})
    with pytest.raises(InputError, match=r"cv\.design spatial-block with cv\.folds 50 .*block_size_km"):
        cross_validate(cfg, prepared, tmp_path / "cv")
    assert not (tmp_path / "cv" / "metrics_summary.csv").exists()


def test_calibrated_intervals_and_aoa_for_every_model(result: CVResult) -> None:
    """Every model gets conformal intervals whose fold k is calibrated on the other folds only; the tables
    are recomputed from predictions.csv; the cross-validated DI is each row's distance to its fold's training
    rows."""
    from socmap.uncertainty import calibrate

    pred = pd.read_csv(result.out / "predictions.csv")
    table = pd.read_csv(result.out / "intervals.csv")
    assert (result.out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(table["model"]) == set(MODELS) and set(table["nominal"]) == {0.5, 0.8, 0.9, 0.95}
    for row in table.itertuples():
        g = pred[pred["model"] == row.model]
        pct = f"{100 * row.nominal:.3g}"
        lo, hi, y = g[f"pi{pct}_lower"], g[f"pi{pct}_upper"], g["observed"]
        assert row.picp == pytest.approx(((y >= lo) & (y <= hi)).mean())
        assert row.interval_width == pytest.approx((hi - lo).mean())
    rf = pred[pred["model"] == "rf"]
    rest, one = rf[rf["fold"] != 0], rf[rf["fold"] == 0]
    calib = calibrate(rest["observed"], rest["predicted"], di=rest["di"])
    lo, hi = calib.interval(one["predicted"], 0.9, di=one["di"])
    np.testing.assert_allclose(one["pi90_lower"], lo)
    np.testing.assert_allclose(one["pi90_upper"], hi)
    picp90 = table[np.isclose(table["nominal"], 0.9)].set_index("model")["picp"]
    assert picp90[["rf", "qrf", "xgb"]].between(0.85, 0.95).all()  # the 1-epoch network's folds differ
    # in bias by ±20 g/kg, so no calibration on other folds can cover its folds (an honest failure)
    assert (pred["di"] >= 0).all() and pred["in_aoa"].mean() > 0.8
    assert "## Calibrated prediction intervals" in result.markdown and result.aoa_threshold is not None
