"""Training: artifacts, exact reload, early stopping restoring the best weights, resume, losses, multi-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from socmap.config import SocmapConfig, load_config
from socmap.errors import InputError, OutputError
from socmap.models import load_model
from socmap.runfolder import EARLY_STOPPING, MEAN_OF_RUNS, TEST, TRAINING_FIT
from socmap.split import holdout_splitter
from socmap.train import fit_run, make_split, train
from socmap.windows import load_prepared, prepare


def config(root: Path, **extra: object) -> SocmapConfig:
    overrides: dict[str, object] = {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "train.epochs": 3,
        "train.seed_models": 1,
        "train.num_runs": 2,
        "train.batch_size": 128,
        "train.wandb_mode": "disabled",
        "train.lr": 0.002,
        "uncertainty.calibration_folds": 0,  # no calibration refits: fast tests (test_mapping_models has one)
    }
    overrides.update(extra)
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def prepared_small(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "p"
    prepare(config(small_synth_dir), out)
    return out


@pytest.fixture(scope="module")
def trained(small_synth_dir: Path, prepared_small: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "r"
    return train(config(small_synth_dir), out, prepared=prepared_small)


def test_run_folder_contents(trained) -> None:
    out = trained.out
    for name in (
        "config.yaml",
        "split.csv",
        "split_report.json",
        "model.pt",
        "model.json",
        "metrics.json",
        "scatter.png",
    ):
        assert (out / name).is_file(), name
    for i in range(2):
        run = out / "runs" / f"run_{i}"
        for name in ("model.pt", "model.json", "history.csv", "metrics.json", "predictions.csv"):
            assert (run / name).is_file()
        assert not (run / "checkpoint.pt").exists()
        assert len(pd.read_csv(run / "history.csv")) == 3
    spec = json.loads((out / "model.json").read_text())
    assert spec["kind"] == "cnn_lstm" and spec["bands"][0] == "Elevation"
    assert spec["state"]["normalizer"]["fitted_on"] == "training samples only"
    assert spec["state"]["target_transform"]["name"] == "normalize"
    assert set(pd.read_csv(out / "split.csv")["role"]) == {"train", "test"}


def test_aggregate_and_best_run(trained) -> None:
    s = trained.summary
    r2s = [r.metrics["r2"] for r in s.runs]
    assert s.evaluated_on == TEST and all(r.evaluated_on == TEST for r in s.runs)
    # the folder's model is chosen on the early-stopping set, never on the test set
    es = [r.early_stopping.metrics["r2"] for r in s.runs if r.early_stopping is not None]
    assert len(es) == 2 and all(r.early_stopping.evaluated_on == EARLY_STOPPING for r in s.runs)
    assert s.best_run == int(np.argmax(es)) and "early-stopping R²" in s.selection
    assert all(r.training is not None and r.training.evaluated_on == TRAINING_FIT for r in s.runs)
    assert s.mean_of_runs is not None and s.mean_of_runs.evaluated_on == MEAN_OF_RUNS
    assert s.mean_of_runs.metrics["n"] == s.n_test == s.best.metrics["n"]
    assert s.aggregate["r2"]["mean"] == pytest.approx(np.mean(r2s))
    assert s.aggregate["r2"]["std"] == pytest.approx(np.std(r2s, ddof=1))
    assert s.aggregate["r2"]["max"] == max(r2s)
    assert s.r2_ceiling is not None and 0 < s.r2_ceiling < 1
    assert [r.seed for r in s.runs] == [0, 1]


def test_reload_reproduces_test_predictions_exactly(trained, prepared_small: Path) -> None:
    data = load_prepared(prepared_small)
    predictor = load_model(trained.out, expected_bands=data.bands)
    best = trained.out / "runs" / f"run_{trained.best_run}"
    table = pd.read_csv(best / "predictions.csv")
    split = pd.read_csv(trained.out / "split.csv")
    val = np.flatnonzero(split["role"].to_numpy() == "test")
    pred = predictor.predict(data.windows[val])
    np.testing.assert_array_equal(pred, table["predicted"].to_numpy())
    np.testing.assert_array_equal(data.target[val], table["observed"].to_numpy())
    # the weights file is a plain state dict that loads with weights_only=True
    state = torch.load(trained.out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_refuses_to_overwrite_a_finished_run(trained, small_synth_dir: Path) -> None:
    with pytest.raises(OutputError, match="already holds a finished run"):
        train(config(small_synth_dir), trained.out)


def test_overwrite_keeps_the_previous_run_until_the_new_one_is_finished(
    small_synth_dir: Path, prepared_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed ``--overwrite`` puts the finished run back (same bytes); a killed one leaves it set aside until
    a run finishes; a finished one removes it."""
    import socmap.train as train_module

    cfg = config(small_synth_dir, **{"train.model": "linear", "train.num_runs": 1})
    out = tmp_path / "r"
    train(cfg, out, prepared=prepared_small)
    before = (out / "metrics.json").read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise InputError("fit failed")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "_fit_runs", fail)
        with pytest.raises(InputError, match=rf"^fit failed \(the previous run in {out} was put back\)$"):
            train(cfg, out, prepared=prepared_small, overwrite=True)
    assert (out / "metrics.json").read_bytes() == before
    assert not train_module.replaced_dir(out).exists()
    # a killed overwrite: the finished run is set aside, the new one unfinished; overwriting again keeps the
    # finished one set aside (not the partial one) until a run finishes
    train_module._set_aside(train_module.RunFolder(out))
    (out / "config.yaml").parent.mkdir()
    (out / "config.yaml").write_text((train_module.replaced_dir(out) / "config.yaml").read_text())
    train_module._set_aside(train_module.RunFolder(out))
    assert (train_module.replaced_dir(out) / "metrics.json").read_bytes() == before
    result = train(config(small_synth_dir, **{"train.model": "linear", "train.seed": 7}), out, overwrite=True)
    assert result.summary.runs[0].seed == 7 and not train_module.replaced_dir(out).exists()


def test_early_stopping_restores_best_weights(
    small_synth_dir: Path, prepared_small: Path, tmp_path: Path
) -> None:
    cfg = config(
        small_synth_dir,
        **{
            "train.epochs": 60,
            "train.patience": 3,
            "train.lr": 0.02,
            "train.num_runs": 1,
            "train.min_steps": 0,
        },
    )
    result = train(cfg, tmp_path / "r", prepared=prepared_small)
    hist = result.runs[0].history
    m = result.runs[0].metrics
    assert m.fit["stopped_early"] and len(hist) < 60
    best_epoch = int(hist["val_loss"].idxmin())
    assert m.best_epoch == best_epoch == len(hist) - 1 - 3
    # history's val_* columns are the early-stopping set's: rows the deep model carved out of its training rows
    data = load_prepared(prepared_small)
    role = pd.read_csv(result.out / "split.csv")["role"].to_numpy()
    train_rows, test_rows = np.flatnonzero(role == "train"), np.flatnonzero(role == "test")
    _, inner = next(holdout_splitter(cfg.split, cfg.train.seed).split(data.coords[train_rows]))
    es_rows = train_rows[inner]
    assert es_rows.size > 0 and not set(es_rows) & set(test_rows)
    pred = load_model(result.out).predict(np.asarray(data.windows[es_rows]))
    rmse = float(np.sqrt(np.mean((pred - data.target[es_rows]) ** 2)))
    # the saved model is the best epoch's on the early-stopping set, not the last epoch's
    assert rmse == pytest.approx(hist["val_rmse"].iloc[best_epoch], rel=1e-5)
    assert rmse != pytest.approx(hist["val_rmse"].iloc[-1], rel=1e-5)
    assert m.early_stopping is not None
    assert m.early_stopping.metrics["rmse"] == pytest.approx(hist["val_rmse"].iloc[best_epoch])
    assert m.metrics["n"] == test_rows.size  # the headline is the test set's


class TickingClock:
    """``time`` for the trainer whose ``monotonic`` advances one second per call (checkpoint timing)."""

    def __init__(self) -> None:
        import time

        self.now, self.perf_counter = 0.0, time.perf_counter

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize(
    ("ema_steps", "checkpoint_seconds", "saved_epoch"), [(0, 0.0, 2), (20, 0.0, 2), (0, 1.5, 1)]
)
def test_resume_after_interruption_gives_identical_weights(
    small_synth_dir: Path,
    prepared_small: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ema_steps: int,
    checkpoint_seconds: float,
    saved_epoch: int,
) -> None:
    """Also with a weight average (the checkpoint carries it, so the resumed fit keeps the same average), and
    with a checkpoint older than the interruption (written every 1.5 s of a clock ticking once per read: after
    epoch 1, not 2), from which the resumed fit replays epoch 2 to the same numbers."""
    import socmap.models.trainer as trainer

    options = {
        "train.epochs": 5,
        "train.num_runs": 1,
        "train.lr_schedule": "cosine",
        "train.ema_steps": ema_steps,
        "train.checkpoint_seconds": checkpoint_seconds,
    }
    cfg = config(small_synth_dir, **options)
    full = train(cfg, tmp_path / "full", prepared=prepared_small)

    data = load_prepared(prepared_small)
    plan = make_split(cfg, data, cfg.split.seed)
    folder = tmp_path / "interrupted"
    monkeypatch.setattr(trainer, "time", TickingClock())
    with pytest.raises(KeyboardInterrupt, match="after epoch 2"):
        fit_run(cfg, data, plan, 0, folder / "runs" / "run_0", stop_after_epoch=2)
    checkpoint = torch.load(folder / "runs" / "run_0" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == saved_epoch
    assert not (folder / "runs" / "run_0" / "model.pt").exists()
    (folder / "config.yaml").write_text((full.out / "config.yaml").read_text())
    resumed = train(cfg, folder, prepared=prepared_small, resume=True)

    a = torch.load(full.out / "model.pt", weights_only=True)
    b = torch.load(resumed.out / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.summary.best.metrics == full.summary.best.metrics
    pd.testing.assert_frame_equal(
        full.runs[0].history.drop(columns=["seconds", "data_seconds"]),
        resumed.runs[0].history.drop(columns=["seconds", "data_seconds"]),
    )


def test_same_seed_same_metrics(small_synth_dir: Path, prepared_small: Path, tmp_path: Path) -> None:
    cfg = config(small_synth_dir, **{"train.epochs": 2, "train.num_runs": 1})
    a = train(cfg, tmp_path / "a", prepared=prepared_small).summary.best.metrics
    b = train(cfg, tmp_path / "b", prepared=prepared_small).summary.best.metrics
    assert a == b


@pytest.mark.parametrize(
    ("loss", "transform"),
    [
        ("l1", "none"),
        ("composite_l1", "log"),
        ("composite_l2", "normalize"),
        ("gaussian_nll", "log"),
        ("quantile", "normalize"),
    ],
)
def test_every_loss_trains_and_predicts_on_the_original_scale(
    small_synth_dir: Path, prepared_small: Path, tmp_path: Path, loss: str, transform: str
) -> None:
    cfg = config(
        small_synth_dir,
        **{
            "train.loss_type": loss,
            "train.target_transform": transform,
            "train.num_runs": 1,
            # untransformed g/kg: from outputs near 0, L1's bounded steps need more epochs to reach the scale
            "train.epochs": 8 if transform == "none" else 2,
        },
    )
    result = train(cfg, tmp_path / "r", prepared=prepared_small)
    table = pd.read_csv(result.out / "runs" / "run_0" / "predictions.csv")
    assert np.isfinite(table["predicted"]).all()
    # original scale: predictions live in the range of the observed values (g/kg), not of log or z-scores
    ratio = table["predicted"].median() / table["observed"].median()
    assert 0.25 < ratio < 4, ratio
    if loss in {"gaussian_nll", "quantile"}:
        assert (table["q05"] <= table["q95"]).all()
        assert result.summary.best.intervals is not None and "picp" in result.summary.best.intervals


def test_balanced_sampling_changes_what_the_model_trains_on(
    small_synth_dir: Path, prepared_small: Path, tmp_path: Path
) -> None:
    cfg = config(
        small_synth_dir,
        **{
            "sampling.balanced": True,
            "sampling.binning": "uniform",
            "sampling.n_bins": 16,
            "train.num_runs": 1,
            "train.epochs": 1,
        },
    )
    result = train(cfg, tmp_path / "r", prepared=prepared_small)
    n_train = result.summary.n_train
    assert result.runs[0].history["samples"].iloc[0] > n_train
    report = json.loads((result.out / "balance_report.json").read_text())
    assert report["n_added"] > 0 and report["mean_after"] > report["mean_before"]


def test_no_validation_mode(small_synth_dir: Path, prepared_small: Path, tmp_path: Path) -> None:
    cfg = config(small_synth_dir, **{"train.use_validation": False, "train.num_runs": 1, "train.epochs": 2})
    result = train(cfg, tmp_path / "r", prepared=prepared_small)
    s = result.summary
    assert s.n_test == 0 and s.runs[0].test is None and s.mean_of_runs is None
    assert s.evaluated_on == TRAINING_FIT and "training fit (not a validation)" in s.evaluated_on
    assert s.r2_ceiling is None
    saved = json.loads((result.out / "metrics.json").read_text())
    assert saved["evaluated_on"].startswith("training fit (not a validation)")
    assert set(pd.read_csv(result.out / "split.csv")["role"]) == {"train"}


def test_checkpoint_safety(trained, tmp_path: Path) -> None:
    import pickle
    import shutil

    from socmap.errors import InputError

    folder = tmp_path / "m"
    shutil.copytree(trained.out, folder, ignore=shutil.ignore_patterns("runs", "prepared"))
    with pytest.raises(InputError, match=r"trained on bands \['Elevation'.*but the data have \['A', 'B'\]"):
        load_model(folder, expected_bands=["A", "B"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "model.pt", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(InputError, match="holds more than weights"):
        load_model(folder)
    (folder / "model.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_model(folder)


@pytest.mark.parametrize("kind", ["rf", "qrf", "xgb", "linear", "ensemble"])
def test_every_model_kind_trains_into_the_same_run_folder(
    small_synth_dir: Path, prepared_small: Path, tmp_path: Path, kind: str
) -> None:
    """`train --model KIND`: same split, run folder, metrics and reload for tree, linear and blended models."""
    cfg = config(
        small_synth_dir,
        **{
            "train.model": kind,
            "train.target_transform": "log",
            "models": {
                "rf": {"n_estimators": 20},
                "qrf": {"n_estimators": 20},
                "xgb": {"n_estimators": 30},
                "ensemble": {"members": ["rf", "linear"], "blend": "mean"},
            },
        },
    )
    result = train(cfg, tmp_path / "r", prepared=prepared_small)
    s = result.summary
    assert (
        s.model == kind and [r.model for r in s.runs] == [kind, kind] and [r.seed for r in s.runs] == [0, 1]
    )
    assert json.loads((result.out / "model.json").read_text())["kind"] == kind
    split = pd.read_csv(result.out / "split.csv")
    val = np.flatnonzero(split["role"].to_numpy() == "test")
    data = load_prepared(prepared_small)
    model = load_model(result.out, expected_bands=data.bands)
    table = pd.read_csv(result.out / "runs" / f"run_{result.best_run}" / "predictions.csv")
    np.testing.assert_array_equal(model.predict(np.asarray(data.windows[val])), table["predicted"].to_numpy())
    assert s.best.metrics["r2"] > 0.1  # it learned something, on the original scale
    # no early-stopping score to choose by: run 0 is kept, and the summary says why
    assert s.best_run == 0 and s.selection.startswith("run 0:") and s.best.early_stopping is None
    assert (s.best.intervals is not None) == (kind == "qrf")
    if kind == "qrf":
        assert (table["q05"] <= table["q95"]).all()


@pytest.mark.parametrize("method", ["random", "spatial-block", "distance-split"])
def test_hold_out_honours_val_ratio_for_every_method(
    small_synth_dir: Path, prepared_small: Path, method: str
) -> None:
    """`split.val_ratio` is the test share whatever `split.method` (random used to hold out 1/folds)."""
    data = load_prepared(prepared_small)
    extra = {"split.method": method, "split.val_ratio": 0.25, "split.block_size_km": 5.0}
    plan = make_split(config(small_synth_dir, **extra), data, seed=3)
    n = len(data.samples)
    assert plan.test.size + plan.train.size == n and not set(plan.test) & set(plan.train)
    tolerance = 0.25 if method == "spatial-block" else 0.05  # whole blocks are lumpy
    assert plan.test.size == pytest.approx(0.25 * n, rel=tolerance)
    assert plan.report["val_ratio_requested"] == 0.25 and plan.report["held_out"] == "test"
    loc = data.samples["lon"].round(6).astype(str) + data.samples["lat"].round(6).astype(str)
    assert not set(loc.iloc[plan.test]) & set(loc.iloc[plan.train])  # repeat visits stay on one side
    if method == "spatial-block":
        from socmap.split import SpatialBlockKFold

        blocks = SpatialBlockKFold(block_size_km=5.0).block_labels(data.samples[["lon", "lat"]])
        assert not set(blocks[plan.test]) & set(blocks[plan.train])  # whole blocks held out


def test_spatial_block_hold_out_with_too_large_blocks_says_what_would_work(
    small_synth_dir: Path, prepared_small: Path
) -> None:
    data = load_prepared(prepared_small)
    cfg = config(small_synth_dir, **{"split.method": "spatial-block", "split.block_size_km": 400.0})
    with pytest.raises(InputError) as info:
        make_split(cfg, data, seed=0)
    text = str(info.value)
    assert "split.method spatial-block with split.val_ratio 0.08" in text and "\n" not in text
    size = float(text.split("use block_size_km ")[1].split(" ")[0])
    plan = make_split(
        config(small_synth_dir, **{"split.method": "spatial-block", "split.block_size_km": size}), data, 0
    )
    assert plan.test.size > 0


def test_given_prepared_folder_of_another_config_is_refused(
    trained, small_synth_dir: Path, tmp_path: Path
) -> None:
    """`--prepared DIR` made from another config is never silently rebuilt (train and predict)."""
    other = config(small_synth_dir, **{"windows.size": 3})
    folder = tmp_path / "prepared-3x3"
    prepare(other, folder)
    before = (folder / "meta.json").read_text()
    message = f"prepared folder {folder} was made from another config or other input files; pass --overwrite"
    with pytest.raises(OutputError, match=message):
        train(config(small_synth_dir), tmp_path / "r", prepared=folder)
    from socmap.predict import predict_samples

    with pytest.raises(OutputError, match=message):
        predict_samples(config(small_synth_dir), trained.out, tmp_path / "p.csv", prepared=folder)
    assert (folder / "meta.json").read_text() == before  # untouched
    # the default prepared folder beside the output is ours: rebuilt when its inputs change
    own = tmp_path / "p2.prepared"
    prepare(other, own)
    result = predict_samples(config(small_synth_dir), trained.out, tmp_path / "p2.csv")
    assert result.n_samples > 0 and json.loads((own / "meta.json").read_text())["window_size"] == 5


def test_a_finished_fit_leaves_no_checkpoint_to_resume_from(
    small_synth_dir: Path, prepared_small: Path, tmp_path: Path
) -> None:
    """A one-network fit writes a checkpoint after every epoch here, and deletes it once finished: a second fit
    into the same folder trains afresh (it resumed from the first fit's last epoch and stopped at once)."""
    from socmap.models import create_model

    cfg = config(small_synth_dir, **{"train.epochs": 3, "train.checkpoint_seconds": 0})
    data = load_prepared(prepared_small)
    rows = np.arange(400, dtype=np.int64)
    infos, states = [], []
    for _ in range(2):
        model = create_model("cnn_lstm", cfg)
        infos.append(model.fit(data.fit_data(rows, 3, tmp_path / "fit")))
        assert not (tmp_path / "fit" / "checkpoint.pt").exists()
        states.append(model.net.state_dict())
    assert infos[0].epochs_trained == infos[1].epochs_trained == 3
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
