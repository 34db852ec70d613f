"""Cross-validation: identical folds for every model, tables recomputed from predictions.csv, designs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from socmap.baselines import make_baseline
from socmap.config import SocmapConfig, load_config
from socmap.errors import InputError, OutputError
from socmap.evaluate import CVResult, cross_validate
from socmap.split import haversine_km, make_splitter
from socmap.windows import PreparedData, prepare

FAST = {"rf": {"n_estimators": 60}, "qrf": {"n_estimators": 60}, "xgb": {"n_estimators": 80}}


def config(root: Path, **extra: object) -> SocmapConfig:
    overrides: dict[str, object] = {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "train.epochs": 1,
        "train.batch_size": 128,
        "train.lr": 0.002,
        "train.loss_type": "quantile",
        "train.wandb_mode": "disabled",
    }
    overrides.update(extra)
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def prepared(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    data, _ = prepare(config(small_synth_dir), tmp_path_factory.mktemp("prep-cv") / "p")
    return data


@pytest.fixture(scope="module")
def result(
    small_synth_dir: Path, prepared: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> CVResult:
    out = tmp_path_factory.mktemp("cv") / "block"
    return cross_validate(
        config(small_synth_dir),
        prepared,
        models=["cnn_lstm", "rf", "qrf", "xgb"],
        cv="spatial-block",
        folds=3,
        out=out,
        seed=4,
        baseline_params=FAST,
        n_jobs=1,
    )


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
    assert cv["folds"] == 3 and cv["models"] == ["cnn_lstm", "rf", "qrf", "xgb"]


def test_folds_identical_across_models_and_match_the_splitter(
    result: CVResult, prepared: PreparedData
) -> None:
    pred = pd.read_csv(result.out / "predictions.csv", dtype={"sample_id": str})
    folds = pd.read_csv(result.out / "folds.csv", dtype={"sample_id": str})
    assert set(pred["model"]) == {"cnn_lstm", "rf", "qrf", "xgb"}
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
    # the rf predictions of fold 0 are those of an independently fitted pipeline
    folds = result.folds
    test = np.sort(folds.loc[folds["fold"] == 0, "index"].to_numpy())
    train = np.setdiff1d(np.arange(len(prepared.samples)), test)
    pipe = make_baseline(
        "rf",
        seed=0,
        n_jobs=1,
        static_channels=[prepared.bands.index("Elevation")],
        band_names=prepared.bands,
        **FAST["rf"],
    )
    p = pipe.fit(np.asarray(prepared.windows[train]), prepared.target[train]).predict(prepared.windows[test])
    got = result.predictions.query("model == 'rf' and fold == 0").sort_values("index")["predicted"]
    np.testing.assert_allclose(got, p, rtol=1e-12)


def test_deep_model_never_early_stops_on_its_test_fold(result: CVResult) -> None:
    folds = result.folds
    for k in range(3):
        inner = pd.read_csv(
            result.out / "models" / "cnn_lstm" / f"fold_{k:02d}" / "predictions.csv", dtype=str
        )
        test = folds[folds["fold"] == k]
        inner_keys = set(zip(inner["sample_id"], inner["time"], strict=True))
        test_keys = set(zip(test["sample_id"].astype(str), test["time"].astype(str), strict=True))
        assert inner_keys and not inner_keys & test_keys
        n_train = result.per_fold.query("model == 'cnn_lstm' and fold == @k")["n_train"].iloc[0]
        n_rf = result.per_fold.query("model == 'rf' and fold == @k")["n_train"].iloc[0]
        assert n_train + len(inner) == n_rf  # inner validation is carved out of the training part


def test_markdown_lists_every_model_and_metric(result: CVResult) -> None:
    text = (result.out / "metrics.md").read_text()
    assert text == result.markdown
    for model in ("cnn_lstm", "rf", "qrf", "xgb"):
        assert text.count(f"| {model} |") == 2  # mean ± std table and pooled table
    labels = ["R²", "RMSE", "MAE", "ME", "RPIQ", "CCC", "PICP (90%)", "interval width", "interval score"]
    headers = [line for line in text.splitlines() if line.startswith("| model |")]
    assert len(headers) == 2
    for header in headers:
        assert [c.strip() for c in header.strip("|").split("|")] == ["model", *labels]
    rf_r2 = result.summary.set_index(["model", "metric"]).loc[("rf", "r2")]
    assert f"{rf_r2['mean']:.3f} ± {rf_r2['std']:.3f}" in text
    rf_line = next(line for line in text.splitlines() if line.startswith("| rf |"))
    assert rf_line.rstrip(" |").endswith("–")  # no interval for rf


def test_refuses_finished_folder_and_bad_names(
    result: CVResult, prepared: PreparedData, small_synth_dir: Path
) -> None:
    cfg = config(small_synth_dir)
    with pytest.raises(OutputError, match="--overwrite"):
        cross_validate(cfg, prepared, models=["rf"], folds=3, out=result.out)
    with pytest.raises(InputError, match="'svm': expected one of cnn_lstm, rf, qrf, xgb"):
        cross_validate(cfg, prepared, models=["rf", "svm"], out=result.out / "x")
    with pytest.raises(
        InputError, match="'kfold': expected one of spatial-block, buffered, random, distance-split"
    ):
        cross_validate(cfg, prepared, models=["rf"], cv="kfold", out=result.out / "x")
    with pytest.raises(InputError, match="baseline_params 'cnn'"):
        cross_validate(cfg, prepared, models=["rf"], baseline_params={"cnn": {}}, out=result.out / "x")
    assert not (result.out / "x").exists()


def test_buffered_leaves_out_locations_with_buffer(
    prepared: PreparedData, small_synth_dir: Path, tmp_path: Path
) -> None:
    cfg = config(small_synth_dir, **{"split.distance_km": 5.0})
    res = cross_validate(
        cfg, prepared, models=["rf"], cv="buffered", folds=4, out=tmp_path, baseline_params=FAST, n_jobs=1
    )
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


def test_distance_split_repeats_with_seeds(
    prepared: PreparedData, small_synth_dir: Path, tmp_path: Path
) -> None:
    cfg = config(small_synth_dir)
    res = cross_validate(
        cfg,
        prepared,
        models=["rf", "xgb"],
        cv="distance-split",
        folds=2,
        out=tmp_path,
        seed=3,
        baseline_params=FAST,
        n_jobs=1,
    )
    coords = prepared.samples[["lon", "lat"]]
    for k in range(2):
        single = make_splitter("distance-split", val_ratio=0.08, min_distance_km=1.2, seed=3 + k)
        _, test = next(single.split(coords))
        np.testing.assert_array_equal(res.folds.loc[res.folds["fold"] == k, "index"].to_numpy(), test)
        assert abs(test.size / len(coords) - 0.08) < 0.01
    a, b = (set(res.folds.loc[res.folds["fold"] == k, "index"]) for k in range(2))
    assert a != b
    assert len(res.per_fold) == 4 and res.per_fold["r2"].notna().all()
