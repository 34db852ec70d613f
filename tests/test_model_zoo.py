"""The model zoo through the one interface: window features computed independently, training-only NaN filling,
tree/linear/ensemble models (options, determinism, QRF intervals, target transforms), safe persistence of every
registered kind (bit-identical round trip, tampered and pickled payloads refused) and a user-registered kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from socmap.config import SocmapConfig, load_config
from socmap.errors import InputError
from socmap.metrics import interval_metrics
from socmap.models import (
    FitData,
    FitInfo,
    InputSpec,
    SocModel,
    TargetInfo,
    available_models,
    create_model,
    load_model,
    register_model,
    save_model,
)
from socmap.models.features import WindowFeatures

BANDS = ["Elev", "LAI", "NPP"]


def windows(n: int = 40, size: int = 5, steps: int = 4, seed: int = 0) -> np.ndarray:
    """Random windows [n, 3, size, size, steps]; channel 0 is static (identical steps)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(10.0, 3.0, (n, 3, size, size, steps)).astype(np.float32)
    x[:, 0] = x[:, 0, :, :, :1]
    return x


def features(x: np.ndarray, **kw: object) -> tuple[np.ndarray, list[str]]:
    wf = WindowFeatures(static_channels=(0,), band_names=BANDS, **kw)  # type: ignore[arg-type]
    out = wf.fit_transform(x)
    return out, list(wf.get_feature_names_out())


@pytest.mark.parametrize("size", [5, 4, 3])
def test_features_equal_independent_window_statistics(size: int) -> None:
    x = windows(size=size)
    f, names = features(x)
    col = {name: f[:, i] for i, name in enumerate(names)}
    c = size // 2  # centre row/column (even sizes: size//2, as socmap.windows cuts them)
    assert len(names) == f.shape[1] == 4 + 2 * (4 + 3 + 2)
    np.testing.assert_allclose(col["Elev_centre"], x[:, 0, c, c, 0], rtol=1e-6)
    for band, ch in (("LAI", 1), ("NPP", 2)):
        for k in range(4):
            np.testing.assert_allclose(col[f"{band}_centre_t{k}"], x[:, ch, c, c, k], rtol=1e-6)
        last = x[:, ch, :, :, -1].astype(np.float64).reshape(len(x), -1)
        np.testing.assert_allclose(col[f"{band}_wmean"], last.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(col[f"{band}_wstd"], last.std(axis=1), rtol=1e-6)
        np.testing.assert_allclose(
            col[f"{band}_centre_minus_wmean"], x[:, ch, c, c, -1] - last.mean(axis=1), atol=1e-5
        )
        series = x[:, ch].astype(np.float64).mean(axis=(1, 2))  # [n, T]
        np.testing.assert_allclose(col[f"{band}_tmean"], series.mean(axis=1), rtol=1e-6)
        slopes = [np.polyfit(np.arange(4), s, 1)[0] for s in series]
        np.testing.assert_allclose(col[f"{band}_trend"], slopes, atol=1e-8)
    elev = x[:, 0, :, :, 0].astype(np.float64).reshape(len(x), -1)
    np.testing.assert_allclose(col["Elev_wmean"], elev.mean(axis=1), rtol=1e-6)


def test_single_step_and_flattened_input() -> None:
    x = windows(steps=1)
    f, names = features(x)
    assert "LAI_centre" in names and not any(n.endswith(("_trend", "_tmean")) for n in names)
    np.testing.assert_allclose(f[:, names.index("LAI_centre")], x[:, 1, 2, 2, 0], rtol=1e-6)
    x5 = windows()
    flat = WindowFeatures(static_channels=(0,), window_shape=(3, 5, 5, 4)).fit_transform(
        x5.reshape(len(x5), -1)
    )
    np.testing.assert_array_equal(flat, WindowFeatures(static_channels=(0,)).fit_transform(x5))
    with pytest.raises(InputError, match="window_shape"):
        WindowFeatures().fit(x5.reshape(len(x5), -1))


def test_nan_features_skip_nodata_and_fill_with_training_means_only() -> None:
    train, test = windows(30, seed=1), windows(10, seed=2)
    train[:5, 1, 2, 2, 3] = np.nan  # LAI centre of the last step missing for 5 training windows
    train[:, 2, :, :, 0] = np.nan  # NPP missing in step 0 for every training window
    train[0, 1, 0, 0, 3] = np.nan  # one non-centre pixel: ignored by the window statistics
    wf = WindowFeatures(static_channels=(0,), band_names=BANDS).fit(train)
    names = list(wf.get_feature_names_out())
    i_lai, i_npp0 = names.index("LAI_centre_t3"), names.index("NPP_centre_t0")
    assert wf.fill_values_[i_lai] == pytest.approx(float(np.nanmean(train[:, 1, 2, 2, 3].astype(np.float64))))
    assert wf.fill_values_[i_npp0] == 0.0  # never observed in training: 0, column kept
    pix = train[0, 1, :, :, 3].astype(np.float64)
    assert wf.transform(train[:1])[0, names.index("LAI_wmean")] == pytest.approx(np.nanmean(pix))
    # the NPP trend of training rows uses the 3 valid steps only
    series = train[:, 2, :, :, 1:].astype(np.float64).mean(axis=(1, 2))
    expected = [np.polyfit(np.arange(1, 4), s, 1)[0] for s in series]
    np.testing.assert_allclose(wf.transform(train)[:, names.index("NPP_trend")], expected, atol=1e-8)

    fill_before = wf.fill_values_.copy()
    test[:, 1, 2, 2, 3] = np.nan
    out = wf.transform(test)
    np.testing.assert_array_equal(out[:, i_lai], np.full(10, fill_before[i_lai]))
    test_changed = test.copy()
    test_changed[:, 1] = 1e6  # wild test values: the fitted fill values and other rows do not move
    wf.transform(test_changed)
    np.testing.assert_array_equal(wf.fill_values_, fill_before)
    # refitting on different test-free data is the only way to change them
    assert not np.array_equal(WindowFeatures(static_channels=(0,)).fit(test).fill_values_, fill_before)


def spec(x: np.ndarray, static: tuple[str, ...] = ("Elev",)) -> InputSpec:
    c, size, _, steps = x.shape[1:]
    bands = tuple(BANDS[:c]) if c <= len(BANDS) else tuple(f"b{i}" for i in range(c))
    return InputSpec(
        bands,
        static if c == 3 else (),
        size,
        steps,
        tuple(str(t) for t in range(steps)),
        {},
        TargetInfo("OC", "g/kg"),
    )


def fit_data(x: np.ndarray, y: np.ndarray, train: np.ndarray, seed: int = 0) -> FitData:
    rng = np.random.default_rng(seed)
    coords = np.column_stack([rng.uniform(10, 12, len(x)), rng.uniform(48, 50, len(x))])
    return FitData(
        x,
        y.astype(np.float64),
        np.asarray(train, np.int64),
        np.empty(0, np.int64),
        spec(x),
        coords,
        None,
        seed,
    )


def cfg(**overrides: object) -> SocmapConfig:
    base: dict[str, object] = {
        "train.threads": 1,
        "train.epochs": 3,
        "train.seed_models": 1,
        "train.batch_size": 32,
        "train.use_validation": False,
        "train.wandb_mode": "disabled",
        "models": {
            "rf": {"n_estimators": 15},
            "qrf": {"n_estimators": 15},
            "xgb": {"n_estimators": 15},
            "ensemble": {
                "members": ["rf", "linear"],
                "blend": "stacking",
                "inner_folds": 3,
                "block_size_km": 30,
            },
        },
    }
    return load_config(None, base | overrides)


def fitted(kind: str, x: np.ndarray, y: np.ndarray, n_train: int, **overrides: object) -> SocModel:
    model = create_model(kind, cfg(**overrides))
    model.fit(fit_data(x, y, np.arange(n_train)))
    return model


def test_prediction_of_a_row_ignores_other_test_rows() -> None:
    x, rng = windows(60, seed=3), np.random.default_rng(3)
    y = x[:, 1, 2, 2, -1].astype(np.float64) * 2 + rng.normal(0, 0.1, 60)
    model = fitted("rf", x, y, 40)
    test = x[40:].copy()
    base = model.predict(test)[:3]
    test[3:] = np.nan  # other test rows all nodata
    np.testing.assert_array_equal(model.predict(test)[:3], base)


def test_model_options_are_checked_by_name_and_fits_are_deterministic() -> None:
    with pytest.raises(
        InputError,
        match="'svm' is not a model kind; expected one of cnn_lstm, transformer, cnn3d, rf, qrf, xgb, linear",
    ):
        cfg(**{"train.model": "svm"})
    with pytest.raises(InputError, match=r"models\.rf option.s. n_trees: expected among"):
        create_model("rf", cfg(models={"rf": {"n_trees": 10}}))
    with pytest.raises(InputError, match="random_state are set by socmap"):
        create_model("xgb", cfg(models={"xgb": {"random_state": 3}}))
    rf = create_model("rf", cfg(models={"rf": {"n_estimators": 1000, "max_depth": 10}}))
    est = rf.build(0)  # type: ignore[attr-defined]
    assert est.n_estimators == 1000 and est.max_depth == 10 and est.n_jobs == 1
    assert create_model("xgb", cfg()).build(0).get_params()["tree_method"] == "hist"  # type: ignore[attr-defined]
    x = windows(50, seed=4)
    y = x[:, 2, 2, 2].mean(axis=-1).astype(np.float64)
    for kind in ("rf", "qrf", "xgb", "linear"):
        a = fitted(kind, x, y, 50).predict(x)
        b = fitted(kind, x, y, 50).predict(x)
        np.testing.assert_array_equal(a, b)
        assert np.corrcoef(a, y)[0, 1] > 0.7  # it learned the target


def test_qrf_intervals_are_ordered_and_cover() -> None:
    rng = np.random.default_rng(11)
    n = 1200
    x = rng.normal(0, 1, (n, 2, 3, 3, 2)).astype(np.float32)
    signal = 3.0 * x[:, 0, 1, 1, -1]
    y = signal + rng.normal(0, 1.0, n) * (1 + 0.5 * np.abs(signal))  # heteroscedastic
    qrf = fitted(
        "qrf", x, y, 900, models={"qrf": {"n_estimators": 100}}, **{"train.target_transform": "none"}
    )
    q = qrf.predict_quantiles(x[900:], (0.05, 0.5, 0.95))
    assert q is not None and q.shape == (300, 3)
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    assert np.all(q[:, 2] - q[:, 0] > 0)
    m = interval_metrics(y[900:], q[:, 0], q[:, 2], 0.9)
    inside = (y[900:] >= q[:, 0]) & (y[900:] <= q[:, 2])
    assert m["picp"] == pytest.approx(inside.mean())
    assert 0.8 <= m["picp"] <= 0.97
    width = q[:, 2] - q[:, 0]
    big = np.abs(3.0 * x[900:, 0, 1, 1, -1]) > 3
    assert width[big].mean() > 1.3 * width[~big].mean()  # wider where the noise is larger
    # the point prediction is the conditional mean, not the median
    assert not np.allclose(qrf.predict(x[900:]), q[:, 1])
    rf = fitted("rf", x[:50], y[:50], 50)
    assert rf.predict_quantiles(x[:5], (0.05, 0.95)) is None and not rf.gives_quantiles((0.05, 0.95))


@pytest.mark.parametrize("transform", ["none", "log", "normalize"])
def test_target_transform_applies_to_tree_models(transform: str) -> None:
    """rf predicts leaf means: with log the back-transformed prediction is a geometric-type mean, so it differs
    from 'none'; with normalize (affine) the trees are the same but for split ties that round-off breaks
    differently, so predictions agree closely. Quantiles stay ordered through the inverse transform."""
    x = windows(200, seed=6)
    y = np.exp(x[:, 1, 2, 2, -1].astype(np.float64) / 5)
    plain = fitted("rf", x, y, 150, **{"train.target_transform": "none"}).predict(x[150:])
    model = fitted("qrf", x, y, 150, **{"train.target_transform": transform})
    pred = model.predict(x[150:])
    assert np.all(np.isfinite(pred)) and pred.min() > 0
    if transform == "normalize":
        same = fitted("rf", x, y, 150, **{"train.target_transform": transform}).predict(x[150:])
        assert np.corrcoef(same, plain)[0, 1] > 0.99
    if transform == "log":
        assert not np.allclose(
            fitted("rf", x, y, 150, **{"train.target_transform": "log"}).predict(x[150:]), plain
        )
    q = model.predict_quantiles(x[150:], (0.05, 0.5, 0.95))
    assert q is not None and np.all(q[:, 0] <= q[:, 2])


def test_stacking_weights_come_from_training_rows_only() -> None:
    """The blend's weights are fitted on inner out-of-fold predictions of the TRAINING rows: changing the
    targets of the other rows changes nothing."""
    x = windows(160, seed=8)
    y = x[:, 1, 2, 2, -1].astype(np.float64) * 3 + np.random.default_rng(8).normal(0, 1, 160)
    a = fitted("ensemble", x, y, 120)
    y2 = y.copy()
    y2[120:] = 1e6
    b = fitted("ensemble", x, y2, 120)
    np.testing.assert_array_equal(a.weights, b.weights)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.predict(x[120:]), b.predict(x[120:]))
    assert a.weights.sum() == pytest.approx(1.0) and np.all(a.weights >= 0)  # type: ignore[attr-defined]


ALL_KINDS = ["cnn_lstm", "rf", "qrf", "xgb", "linear", "ensemble"]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SocModel, Path]]:
    x = windows(80, seed=9)
    y = x[:, 1, 2, 2, -1].astype(np.float64) + 20
    out = {}
    root = tmp_path_factory.mktemp("models")
    for kind in ALL_KINDS:
        model = fitted(kind, x, y, 60)
        save_model(model, root / kind)
        out[kind] = (model, root / kind)
    return out


def test_every_registered_kind_is_tested() -> None:
    assert set(ALL_KINDS) <= set(available_models())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_round_trip_is_bit_identical(
    kind: str, saved_models: dict[str, tuple[SocModel, Path]], tmp_path: Path
) -> None:
    model, folder = saved_models[kind]
    x = windows(30, seed=10)
    loaded = load_model(folder, expected_bands=list(BANDS))
    assert loaded.kind == kind and type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    qa, qb = model.predict_quantiles(x, (0.05, 0.95)), loaded.predict_quantiles(x, (0.05, 0.95))
    assert (qa is None) == (qb is None)
    if qa is not None:
        np.testing.assert_array_equal(qa, qb)
    # saving the loaded model again gives the same model: the same JSON and UBJSON bytes, the same tensors (torch
    # zips name their records after the file), and (skops zips hold object ids) the same predictions
    save_model(loaded, tmp_path / "again")
    np.testing.assert_array_equal(load_model(tmp_path / "again").predict(x), model.predict(x))
    for f in folder.rglob("*"):
        again = tmp_path / "again" / f.relative_to(folder)
        if f.suffix == ".pt":
            import torch

            a, b = torch.load(f, weights_only=True), torch.load(again, weights_only=True)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif f.suffix in (".json", ".ubj"):
            assert again.read_bytes() == f.read_bytes(), f.name
    with pytest.raises(InputError, match="trained on bands"):
        load_model(folder, expected_bands=["A", "B", "C"])


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("kind", ["rf", "qrf"])
def test_tampered_skops_file_is_refused(
    kind: str, saved_models: dict[str, tuple[SocModel, Path]], tmp_path: Path
) -> None:
    import shutil

    import skops.io as sio

    folder = tmp_path / kind
    shutil.copytree(saved_models[kind][1], folder)
    sio.dump({"payload": _Evil(), "f": np.save}, folder / "estimator.skops")
    with pytest.raises(InputError, match="holds types socmap does not trust"):
        load_model(folder)
    (folder / "estimator.skops").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_model(folder)


def test_pickled_payloads_are_refused_for_every_binary_format(
    saved_models: dict[str, tuple[SocModel, Path]], tmp_path: Path
) -> None:
    import pickle
    import shutil

    for kind, name, message in (
        ("cnn_lstm", "model.pt", "holds more than weights"),
        ("xgb", "estimator.ubj", "is not an XGBoost model"),
        ("rf", "estimator.skops", "truncated or corrupt"),
    ):
        folder = tmp_path / kind
        shutil.copytree(saved_models[kind][1], folder)
        with open(folder / name, "wb") as fh:
            pickle.dump({"x": _Evil()}, fh)
        with pytest.raises(InputError, match=message):
            load_model(folder)
    bad = tmp_path / "kind"
    shutil.copytree(saved_models["linear"][1], bad)
    text = (bad / "model.json").read_text().replace('"kind": "linear"', '"kind": "os.system"')
    (bad / "model.json").write_text(text)
    with pytest.raises(InputError, match=r"'os\.system': expected one of cnn_lstm"):
        load_model(bad)


class CentreMean(SocModel):
    """A user's model: the training-set slope of the target on band 1's centre pixel, JSON state only."""

    def fit(self, data: FitData) -> FitInfo:
        self.inputs = data.inputs
        c = data.inputs.window_size // 2
        x = np.asarray(data.windows[data.train][:, 1, c, c, -1], np.float64)
        self.coef = np.polyfit(x, data.target[data.train], 1).tolist()
        return FitInfo(parameters=2)

    def predict(self, windows: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        c = self.require_inputs().window_size // 2
        return np.polyval(self.coef, np.asarray(windows[:, 1, c, c, -1], np.float64))

    def state(self, folder: Path) -> dict[str, object]:
        return {"coef": self.coef}

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, object], inputs: InputSpec) -> SocModel:
        model = cls()
        model.coef = list(state["coef"])  # type: ignore[call-overload]
        return model


def test_a_registered_kind_needs_no_change_elsewhere(tmp_path: Path) -> None:
    register_model("centre_mean", CentreMean, lambda config: CentreMean(), "test model")
    x = windows(50, seed=12)
    y = 2.0 * x[:, 1, 2, 2, -1].astype(np.float64) + 1.0
    model = fitted("centre_mean", x, y, 50, **{"train.model": "centre_mean"})
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-5)
    save_model(model, tmp_path / "m")
    np.testing.assert_array_equal(load_model(tmp_path / "m").predict(x), model.predict(x))


# ------------------------------------------------------------------ xgb's boosting rounds follow the data size
def _noisy_set(n: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose target is a weak signal in much noise (where 400 rounds fit the noise)."""
    x, rng = windows(n, seed=seed), np.random.default_rng(seed)
    y = x[:, 1, 2, 2, -1].astype(np.float64) + rng.normal(0, 6.0, n)
    return x, y


def _early_stopped_mean_rmse(
    x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], params: dict[str, object]
) -> np.ndarray:
    """Mean held-out RMSE per boosting round over ``folds``: each fold fitted by XGBRegressor on its own."""
    from xgboost import XGBRegressor

    curves = []
    for train, test in folds:
        est = XGBRegressor(**params, n_estimators=300, eval_metric="rmse")
        est.fit(x[train], y[train], eval_set=[(x[test], y[test])], verbose=False)
        curves.append(est.evals_result()["validation_0"]["rmse"])
    return np.mean(curves, axis=0)


def test_xgb_rounds_are_chosen_by_inner_spatial_cv_on_small_data() -> None:
    from socmap.models.trees import ROUNDS_FOLDS, XGBoostModel
    from socmap.split import SpatialBlockKFold, suggest_block_size_km

    x, y = _noisy_set(200)
    data = fit_data(x, y, np.arange(200), seed=2)
    deterministic = {"max_depth": 3, "subsample": 1.0, "colsample_bytree": 1.0}  # no row/column sampling
    model = XGBoostModel(deterministic, n_jobs=1)
    info = model.fit(data)
    rounds = int(info.schedule["n_estimators"])
    assert info.schedule["rounds_by_inner_cv"] == 1.0 and not info.warnings
    assert model.estimator.get_booster().num_boosted_rounds() == rounds < 400
    # independently: the chosen count minimises the mean held-out RMSE of the same spatial-block folds
    assert data.coords is not None
    size = suggest_block_size_km(data.coords[:, 0], data.coords[:, 1], 3 * ROUNDS_FOLDS)
    folds = list(SpatialBlockKFold(ROUNDS_FOLDS, size, 2).split(data.coords))
    feats = WindowFeatures(static_channels=(0,), band_names=BANDS).fit_transform(x)
    params = {k: v for k, v in model.defaults.items() if k != "n_estimators"} | deterministic
    params |= {"random_state": 2, "n_jobs": 1}
    curve = _early_stopped_mean_rmse(feats, y, folds, params)
    assert curve[rounds - 1] == pytest.approx(curve.min(), rel=1e-5)
    assert rounds < len(curve)


def test_xgb_rounds_fixed_from_1000_samples_or_as_given() -> None:
    from socmap.models.trees import AUTO_ROUNDS_BELOW, XGBoostModel

    x, y = _noisy_set(AUTO_ROUNDS_BELOW)
    big = XGBoostModel({"max_depth": 2}, n_jobs=1)
    info = big.fit(fit_data(x, y, np.arange(AUTO_ROUNDS_BELOW)))
    assert info.schedule == {"n_estimators": 400.0}
    assert big.estimator.get_booster().num_boosted_rounds() == 400
    forced = XGBoostModel({"max_depth": 2, "n_estimators": "auto"}, n_jobs=1)
    info = forced.fit(fit_data(x, y, np.arange(AUTO_ROUNDS_BELOW)))
    assert info.schedule["rounds_by_inner_cv"] == 1.0
    assert forced.estimator.get_booster().num_boosted_rounds() == info.schedule["n_estimators"] < 400
    small = XGBoostModel({"n_estimators": 7}, n_jobs=1)
    small.fit(fit_data(x[:100], y[:100], np.arange(100)))
    assert small.estimator.get_booster().num_boosted_rounds() == 7
    for bad in ("abc", 0, True, 2.5):
        with pytest.raises(
            InputError, match=r"models\.xgb\.n_estimators .*expected a whole number .* or auto"
        ):
            XGBoostModel({"n_estimators": bad})


def test_xgb_rounds_at_too_few_places_fall_back_with_a_warning() -> None:
    from socmap.models.trees import XGBoostModel

    x, y = _noisy_set(60)
    data = fit_data(x, y, np.arange(60))
    assert data.coords is not None
    data.coords[:] = data.coords[np.arange(60) % 3]  # three places: no 5 folds
    model = XGBoostModel({"max_depth": 2}, n_jobs=1)
    info = model.fit(data)
    assert info.schedule == {"n_estimators": 400.0, "rounds_by_inner_cv": 0.0}
    assert len(info.warnings) == 1 and "too few places for 5-fold inner CV" in info.warnings[0]
    assert model.estimator.get_booster().num_boosted_rounds() == 400
