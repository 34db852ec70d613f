"""Deep models on small data (issue 14): step-counted schedules, no silent collapse, the log transform's mean,
augmentation, the transformer / 3D CNN / bidirectional LSTM, seed ensembles and fine-tuning (--init-from)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from socmap.config import SamplingConfig, SocmapConfig, SplitConfig, TrainConfig
from socmap.errors import InputError
from socmap.models import available_models, load_model, save_model
from socmap.models.base import FitData, InputSpec, TargetInfo
from socmap.models.checks import degenerate_warning
from socmap.models.deep import Cnn3dModel, CnnLstmModel, DeepModel, SeedEnsemble, TransformerModel
from socmap.models.networks import (
    Cnn3d,
    RefittedCovLSTM,
    TemporalTransformer,
    check_network_options,
)
from socmap.models.schedule import auto_batch_size, resolve_schedule
from socmap.models.trainer import augment_batch
from socmap.transforms import TargetTransform

SPEC = InputSpec(("a", "b"), (), 5, 3, ("1", "2", "3"), {}, TargetInfo("soc", "g/kg"))
FAST = {"max_steps": 120, "min_steps": 30, "patience_steps": 60, "lr": 3e-3, "seed_models": 1}


def _data(n: int = 160, seed: int = 0, log_noise: float = 0.0) -> FitData:
    """Windows whose centre pixel of band a at the newest step drives the target (log-linear if noisy)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 5, 5, 3)).astype(np.float32)
    signal = x[:, 0, 2, 2, -1].astype(np.float64)
    y = np.exp(1.5 + 0.6 * signal + log_noise * rng.normal(size=n)) if log_noise else 10 + 3 * signal
    coords = np.column_stack([rng.uniform(10, 11, n), rng.uniform(48, 49, n)])
    return FitData(x, y, np.arange(n), np.empty(0, np.int64), SPEC, coords, None, seed, None)


def _model(cls: type[DeepModel] = CnnLstmModel, **train: object) -> DeepModel:
    options = {**FAST, **train}
    return cls(TrainConfig(**options), SamplingConfig(), None, SplitConfig(method="random"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(("n", "batch"), [(1, 16), (140, 16), (900, 32), (3_500, 128), (16_000, 256)])
def test_batch_size_follows_the_data(n: int, batch: int) -> None:
    assert auto_batch_size(n) == batch


def test_schedule_is_counted_in_steps() -> None:
    small = resolve_schedule(TrainConfig(), 140)  # 9 steps per epoch of 16
    assert (small.batch_size, small.steps_per_epoch) == (16, 9)
    assert small.epochs == math.ceil(10_000 / 9) and small.patience == math.ceil(500 / 9)
    assert small.min_epochs == math.ceil(200 / 9)
    large = resolve_schedule(TrainConfig(), 16_000)
    assert (large.batch_size, large.epochs, large.patience, large.min_epochs) == (
        256,
        math.ceil(10_000 / 63),
        8,
        4,
    )
    given = resolve_schedule(TrainConfig(epochs=4, patience=2, batch_size=64), 140)
    assert (given.batch_size, given.epochs, given.patience, given.min_epochs) == (64, 4, 2, 4)


def test_learning_rate_follows_the_batch_size() -> None:
    """Default lr: 1e-3 x sqrt(batch / 256), checked against the batch sizes the schedule picks."""
    assert resolve_schedule(TrainConfig(), 140).lr == pytest.approx(2.5e-4)  # batch 16
    assert resolve_schedule(TrainConfig(), 2_000).lr == pytest.approx(1e-3 * math.sqrt(64 / 256))
    assert resolve_schedule(TrainConfig(), 16_000).lr == pytest.approx(1e-3)  # batch 256
    assert resolve_schedule(TrainConfig(lr=3e-3), 140).lr == 3e-3  # given: used as given
    model = _model(max_steps=2, min_steps=0, lr=None)  # the default
    info = model.fit(_data(120))
    assert info.schedule["lr"] == pytest.approx(1e-3 * math.sqrt(info.schedule["batch_size"] / 256))


def test_warm_up_never_restores_an_early_epoch() -> None:
    """A learning rate that makes the loss blow up after epoch 0 would restore epoch 0 without a warm-up."""
    data = _data(120)
    model = _model(lr=0.5, min_steps=40, max_steps=80, patience_steps=10)
    info = model.fit(data)
    plan = info.schedule
    assert info.best_epoch >= plan["min_epochs"] - 1 > 0
    assert len(info.history) >= plan["min_epochs"]


def test_weight_average_is_the_ema_of_the_step_weights() -> None:
    """``train.ema_steps``: the kept network is the exponential moving average (decay 1 - 1/k) of the weights
    after every optimiser step, recomputed here from the steps themselves."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from socmap.models.trainer import Tracking, fit_network
    from socmap.normalize import Normalizer

    data = dataclasses.replace(_data(64), seed=3)  # no monitoring rows: one epoch of 4 steps is kept
    tcfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2, ema_steps=3, grad_clip=0)
    normalizer = Normalizer.fit(data.windows, data.train, list(SPEC.bands), [])
    transform = TargetTransform("none").fit(data.target)
    steps: list[list[torch.Tensor]] = []

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        steps.append([p.detach().clone() for g in optimizer.param_groups for p in g["params"]])

    torch.manual_seed(3)
    net = RefittedCovLSTM(2, window_size=5)
    start = [p.detach().clone() for p in net.parameters()]
    handle = register_optimizer_step_post_hook(record)
    try:
        fitted, _ = fit_network(net, data, normalizer, transform, tcfg, SamplingConfig(), Tracking())
    finally:
        handle.remove()
    assert len(steps) == 4
    decay = 1 - 1 / 3
    average = steps[0]
    for step in steps[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, step, strict=True)]
    for kept, expected in zip(fitted.parameters(), average, strict=True):
        torch.testing.assert_close(kept.detach(), expected, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(e, w) for e, w in zip(average, steps[-1], strict=True))  # not the last step
    assert not all(torch.equal(e, s) for e, s in zip(average, start, strict=True))


# ------------------------------------------------------------------------------------------- collapse
def test_degenerate_warning_numbers() -> None:
    rng = np.random.default_rng(1)
    obs = rng.normal(10, 3, 200)
    assert degenerate_warning(obs, obs + rng.normal(0, 1, 200), "x") is None
    flat = degenerate_warning(obs, 10 + 0.05 * rng.normal(size=200), "the test fold")
    assert flat is not None and "near-constant" in flat and "the test fold" in flat
    unrelated = degenerate_warning(obs, rng.normal(10, 3, 200), "x")
    assert unrelated is not None and "do not follow" in unrelated
    assert degenerate_warning(obs[:5], obs[:5] * 0, "x") is None  # too few rows to judge
    assert degenerate_warning(obs[:40], rng.normal(10, 3, 40), "x") is None  # CCC of 40 rows: noise


def test_an_untrained_network_is_reported() -> None:
    """A learning rate of ~0 leaves the network at its initial (near-constant) output: the fit must say so."""
    model = _model(lr=1e-12, max_steps=20, min_steps=10)
    info = model.fit(_data(120))
    assert any("degenerate model on its early-stopping rows" in w for w in info.warnings)


def test_cv_reports_a_degenerate_fold(tmp_path: Path) -> None:
    from socmap.evaluate.stage import CVResult
    from socmap.evaluate.tasks import FitTask, _fit  # the fold fit that cv runs

    data = _data(120)

    class Prepared:  # what _fit reads of a PreparedData
        windows, target, xy = data.windows, data.target, np.zeros((120, 2))

        @staticmethod
        def fit_data(train: np.ndarray, seed: int, workdir: Path | None = None) -> FitData:
            return dataclasses.replace(data.subset(train), seed=seed, workdir=workdir)

    config = SocmapConfig.model_validate(
        {"train": {**FAST, "lr": 1e-12, "max_steps": 20, "min_steps": 10}, "split": {"method": "random"}}
    )
    (tmp_path / "f").mkdir()
    task = FitTask("cnn_lstm", 0, np.arange(100), np.arange(100, 120), tmp_path / "f", "")
    fit = _fit(task, config, Prepared)  # type: ignore[arg-type]
    assert any("degenerate model on its test fold" in w for w in fit.info.warnings)
    assert "warnings" in CVResult.__dataclass_fields__


def test_cv_warns_about_a_model_worse_than_the_mean() -> None:
    """Pooled out-of-fold R² below 0 (over-dispersed predictions: a small-data transformer did this) is said
    by name with its R²; a model above 0 is not named."""
    from socmap.evaluate.stage import worse_than_mean_warnings
    from socmap.evaluate.tables import fold_metrics, summarize

    rng = np.random.default_rng(0)
    observed = rng.normal(7.0, 0.8, 100)
    good = observed + rng.normal(0, 0.5, 100)
    wild = 7.0 + 2.5 * (observed - 7.0) + rng.normal(0, 1.5, 100)  # follows the target, but too spread
    frames, per_fold = [], []
    for name, pred in (("rf", good), ("transformer", wild)):
        for k in range(5):
            rows = slice(20 * k, 20 * (k + 1))
            table = pd.DataFrame(
                {"model": name, "fold": k, "observed": observed[rows], "predicted": pred[rows]}
            )
            frames.append(table)
            per_fold.append({"model": name, "fold": k} | fold_metrics(table, False))
    summary = summarize(pd.DataFrame(per_fold), pd.concat(frames), set())
    r2 = 1 - np.sum((observed - wild) ** 2) / np.sum((observed - observed.mean()) ** 2)
    assert r2 < 0 < 1 - np.sum((observed - good) ** 2) / np.sum((observed - observed.mean()) ** 2)
    assert worse_than_mean_warnings(summary) == [
        f"transformer: pooled out-of-fold R² {r2:.3f} is below 0: it predicts worse than the mean of the "
        "observations; do not map with it"
    ]


# ------------------------------------------------------------------------------------------- log target
def test_smearing_and_lognormal_corrections_match_the_formulas() -> None:
    rng = np.random.default_rng(3)
    y = np.exp(rng.normal(2, 0.5, 5000)) - 1
    t = TargetTransform("log").fit(y)
    m, s = np.mean(np.log1p(y)), np.std(np.log1p(y))
    assert t.params["mean"] == pytest.approx(m) and t.params["std"] == pytest.approx(s)
    z = t.forward(y)
    np.testing.assert_allclose(t.inverse(z), y, rtol=1e-10)
    residual = rng.normal(0, 0.4, 5000)  # log-scale residuals of sd 0.4
    t.fit_smearing(z, z - residual / s)
    log_pred = np.log1p(y) - residual  # Snowdon's ratio of the level-centred targets over the predictions
    centred = np.exp(log_pred + residual - residual.mean())
    assert t.params["smearing"] == pytest.approx(np.sum(centred) / np.sum(np.exp(log_pred)), rel=1e-9)
    # a held-out block's level error (+0.5 on the log scale) is not smeared onto every prediction
    biased = TargetTransform("log").fit(y).fit_smearing(z, z - (residual + 0.5) / s)
    assert biased.params["smearing"] == pytest.approx(t.params["smearing"], rel=1e-9)
    zero = np.zeros(1)
    assert t.inverse_mean(zero)[0] == pytest.approx(math.exp(m) * t.params["smearing"] - 1)
    log_var = np.array([math.log(0.3**2 / s**2)])  # a Gaussian head's log variance, transformed scale
    assert t.inverse_mean(zero, log_var)[0] == pytest.approx(math.exp(m + 0.3**2 / 2) - 1)
    old = TargetTransform.from_dict({"name": "log", "params": {}})  # saved before the z-score existed
    np.testing.assert_allclose(old.inverse(np.log1p(y)), y, rtol=1e-10)


def test_ratio_factor_keeps_the_mean_of_a_noisy_model() -> None:
    """log y = mu + e (sd 0.5) and a model that predicts mu + d (its own error d, sd 0.5): the factor fitted on
    held-out rows must make the mean prediction on NEW rows the observed mean. Duan's mean(exp(residual))
    counts d twice (in the predictions and the residuals) and over-predicts by about exp(var d) - 1 = 28 %
    (about 32 % here, where the -1 of log1p is counted too)."""
    rng = np.random.default_rng(4)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        mu = rng.normal(2.0, 0.6, n)
        return mu + rng.normal(0, 0.5, n), mu + rng.normal(0, 0.5, n)  # (log1p y, log prediction)

    t = TargetTransform("log").fit(np.expm1(draw(20_000)[0]))
    m, s = t.params["mean"], t.params["std"]
    held_true, held_pred = draw(20_000)
    t.fit_smearing((held_true - m) / s, (held_pred - m) / s)
    new_true, new_pred = draw(200_000)
    observed = float(np.mean(np.expm1(new_true)))
    predicted = float(np.mean(t.inverse_mean((new_pred - m) / s)))
    assert predicted == pytest.approx(observed, rel=0.02)
    residual = held_true - held_pred
    duan = float(np.mean(np.exp(residual - residual.mean())))
    assert float(np.mean(np.exp(new_pred) * duan - 1)) > 1.2 * observed  # the estimate it replaced


def test_seed_ensemble_averages_calibrated_members_on_the_original_scale(tmp_path: Path) -> None:
    """A log target's seed ensemble: member i's factor from its own early-stopping rows, the members averaged
    as mean_i(exp(m + s z_i) * S_i) - 1 (checked against the members' own outputs), saved and loaded."""
    available_models()  # registers the built-in kinds (their ``kind`` names), as the CLI does
    model = _model(target_transform="log", seed_models=2, max_steps=40, min_steps=10)
    data = _data(160, seed=3, log_noise=0.5)
    model.fit(data)
    assert isinstance(model.net, SeedEnsemble) and model.transform.params["smearing"] == 1.0
    factors = np.exp(model.net_spec["log_factors"])
    assert len(factors) == 2 and np.all(factors > 0.5) and np.all(factors < 3.0)
    x = torch.as_tensor(_data(40, seed=8).windows)
    m, s = model.transform.params["mean"], model.transform.params["std"]
    assert model.normalizer is not None
    with torch.no_grad():
        z = [net(model.normalizer.transform_torch(x))[:, 0].double().numpy() for net in model.net.members]
    expected = np.mean([np.exp(m + s * zi) * f for zi, f in zip(z, factors, strict=True)], axis=0) - 1
    np.testing.assert_allclose(model.predict(x.numpy()), expected, rtol=1e-5)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    np.testing.assert_allclose(loaded.predict(x.numpy()), expected, rtol=1e-5)
    np.testing.assert_allclose(loaded.for_inference().predict(x.numpy()), expected, rtol=1e-4)


def test_log_target_mean_tracks_the_observed_mean() -> None:
    """On a skewed target the mean back-transform keeps the mean; the median back-transform is biased low.
    Target: exp(1.5 + 0.6 s + 0.7 e), population mean exp(1.5 + 0.6²/2 + 0.7²/2); the training sample's mean
    and the mean prediction over many new windows must both be near it."""
    data = _data(400, seed=5, log_noise=0.7)
    model = _model(target_transform="log", max_steps=600, min_steps=200, patience_steps=200)
    model.fit(data)
    windows = _data(4000, seed=6, log_noise=0.7).windows
    mean_pred = float(np.mean(model.predict(windows)))
    median_model = model._shallow_copy()
    median_model.train_cfg = TrainConfig(back_transform="median")
    median_pred = float(np.mean(median_model.predict(windows)))
    population = math.exp(1.5 + 0.6**2 / 2 + 0.7**2 / 2)
    assert abs(float(np.mean(data.target)) - population) / population < 0.05
    assert abs(mean_pred - population) / population < 0.12
    assert median_pred < mean_pred  # the plain back-transform (about the median) is lower...
    assert abs(mean_pred - population) < 0.5 * abs(median_pred - population)  # ...and further off


# ------------------------------------------------------------------------------------------- augmentation
def test_dihedral_augmentation_is_a_symmetry_of_each_window() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5 * 2, dtype=torch.float32).reshape(2, 3, 5, 5, 2)
    cfg = TrainConfig(augment="dihedral")
    symmetries = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    symmetries += [torch.rot90(x.flip(3), k, dims=(2, 3)) for k in range(4)]
    seen = set()
    for _ in range(60):
        out = augment_batch(x, cfg)
        match = [i for i, s in enumerate(symmetries) if torch.equal(out, s)]
        assert len(match) == 1
        seen.add(match[0])
        assert torch.equal(out[:, :, 2, 2], x[:, :, 2, 2])  # the sample's own pixel stays in the centre
    assert seen == set(range(8))
    noisy = augment_batch(x, TrainConfig(input_noise=0.1))
    assert 0.05 < float((noisy - x).std()) < 0.15
    assert torch.equal(augment_batch(x, TrainConfig()), x)


# ------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("steps", [1, 12])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_new_networks_take_any_window_and_sequence(steps: int, window: int) -> None:
    x = torch.randn(4, 3, window, window, steps)
    for net in (TemporalTransformer(3, steps), Cnn3d(3, channels=8)):
        assert net(x).shape == (4, 1)
    if window >= 4:
        assert RefittedCovLSTM(3, window_size=window, bidirectional=True)(x).shape == (4, 1)


def test_bidirectional_lstm_reads_both_directions() -> None:
    torch.manual_seed(0)
    uni, bi = (
        RefittedCovLSTM(2, 16, 16, 1, window_size=5),
        RefittedCovLSTM(2, 16, 16, 1, window_size=5, bidirectional=True),
    )
    assert bi.lstm.bidirectional and bi.lstm_head[0].in_features == 32 and uni.lstm_head[0].in_features == 16
    x = torch.randn(3, 2, 5, 5, 4)
    x2 = x.clone()
    x2[..., 0] += 1.0  # change only the oldest step
    assert not torch.allclose(bi(x), bi(x2))
    # the backward state after the oldest step is part of the head's input
    _, (h_n, _) = bi.lstm(bi.cnn(x.permute(0, 4, 1, 2, 3).reshape(12, 2, 5, 5)).reshape(3, 4, -1))
    assert h_n.shape == (2, 3, 16)


def test_transformer_step_encoding_counts_from_the_newest_step() -> None:
    torch.manual_seed(0)
    net = TemporalTransformer(2, time_steps=4, layers=1).eval()
    with torch.no_grad():
        net.position.normal_()
        x = torch.randn(2, 2, 3, 3, 2)
        full = torch.cat([torch.randn(2, 2, 3, 3, 2), x], dim=-1)
        tokens = net.stem(x.permute(0, 4, 1, 2, 3).reshape(4, 2, 3, 3)).reshape(2, 2, -1)
        expected = net.head(
            torch.cat(
                [
                    net.encoder(tokens + net.position[:, 2:]).mean(1),
                    net.encoder(tokens + net.position[:, 2:])[:, -1],
                ],
                1,
            )
        )
    assert torch.allclose(net(x), expected, atol=1e-6)
    assert net(full).shape == (2, 1)


def test_network_options_are_checked() -> None:
    assert check_network_options("transformer", {"d_model": 32, "heads": 2}) == {"d_model": 32, "heads": 2}
    with pytest.raises(InputError, match="expected one of d_model, dropout, heads, layers"):
        check_network_options("transformer", {"width": 3})
    with pytest.raises(InputError, match=r"models.cnn3d.channels: 2.5 is not a number of type int"):
        check_network_options("cnn3d", {"channels": 2.5})
    with pytest.raises(InputError, match="multiple of heads"):
        TemporalTransformer(2, 3, d_model=30, heads=4)
    with pytest.raises(ValueError, match=r"models\.cnn_lstm"):
        SocmapConfig.model_validate({"models": {"cnn_lstm": {"lr": 1}}})


@pytest.mark.parametrize("cls", [TransformerModel, Cnn3dModel, CnnLstmModel])
def test_seed_ensembles_save_and_load_exactly(cls: type[DeepModel], tmp_path: Path) -> None:
    model = _model(cls, seed_models=2, max_steps=20, min_steps=5, bidirectional=cls is CnnLstmModel)
    info = model.fit(_data(100))
    assert isinstance(model.net, SeedEnsemble) and len(model.net.members) == 2
    assert info.schedule["seed_models"] == 2
    first, second = (m(torch.ones(1, 2, 5, 5, 3)) for m in model.net.members)
    assert not torch.allclose(first, second)  # two seeds, two networks
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    x = _data(30, seed=9).windows
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)
    assert loaded.for_inference().predict(x) == pytest.approx(model.predict(x), rel=1e-4)


def test_seed_models_default_follows_the_data_size() -> None:
    from socmap.models.deep import auto_seed_models

    assert [auto_seed_models(n) for n in (100, 999, 1_000, 3_999, 4_000, 50_000)] == [5, 5, 3, 3, 1, 1]


def test_lstm_width_default_follows_the_data_size() -> None:
    """Width 32 below 8,000 training samples, 128 from there; a width in the config is used as given."""
    from socmap.models.networks import auto_lstm_width, network_options

    assert [auto_lstm_width(n) for n in (100, 7_999, 8_000, 100_000)] == [32, 32, 128, 128]
    small = network_options("cnn_lstm", TrainConfig(), SPEC, 1, n_train=7_999)
    large = network_options("cnn_lstm", TrainConfig(), SPEC, 1, n_train=8_000)
    assert (small["lstm_input_size"], small["lstm_hidden_size"]) == (32, 32)
    assert (large["lstm_input_size"], large["lstm_hidden_size"]) == (128, 128)
    given = network_options("cnn_lstm", TrainConfig(lstm_hidden_size=48), SPEC, 1, n_train=50_000)
    assert (given["lstm_input_size"], given["lstm_hidden_size"]) == (128, 48)
    model = _model(max_steps=2, min_steps=0)
    info = model.fit(_data(120))
    assert model.net_spec["kwargs"]["lstm_hidden_size"] == 32 == model.net.lstm.hidden_size
    assert (info.schedule["lstm_input_size"], info.schedule["lstm_hidden_size"]) == (32, 32)
    assert "lstm_hidden_size" not in _model(Cnn3dModel, max_steps=2, min_steps=0).fit(_data(60)).schedule


# ------------------------------------------------------------------------------------------- transfer
def test_init_from_starts_from_the_given_weights(tmp_path: Path) -> None:
    source = _model(max_steps=60, min_steps=10)
    source.fit(_data(120))
    save_model(source, tmp_path / "source")
    x = _data(40, seed=4).windows

    tuned = _model(lr=1e-12, max_steps=10, min_steps=1)
    tuned.init_from = tmp_path / "source"
    tuned.fit(_data(120, seed=2))
    np.testing.assert_allclose(tuned.predict(x), source.predict(x), rtol=1e-5, atol=1e-5)

    fresh = _model(lr=1e-12, max_steps=10, min_steps=1)
    fresh.fit(_data(120, seed=2))
    assert not np.allclose(fresh.predict(x), source.predict(x), rtol=1e-3)

    other = _model(TransformerModel, max_steps=10, min_steps=1)
    other.init_from = tmp_path / "source"
    with pytest.raises(InputError, match="fine-tuning needs a 'transformer' model"):
        other.fit(_data(120))


# ------------------------------------------------------------------------------------------- categorical bands
def test_deep_models_read_categorical_bands_as_one_hot_classes(tmp_path: Path) -> None:
    """Class codes 0/3/7 (and nodata) of a land-cover band become one-hot channels; the class effect is learned,
    an unseen class is reported, and a map copy makes it nodata."""
    from socmap.models.features import UnseenCategoryWarning
    from socmap.models.networks import CategoricalInput

    rng = np.random.default_rng(0)
    n = 240
    spec = InputSpec(("x", "lc"), ("lc",), 3, 1, ("1",), {}, TargetInfo("ph", "pH"), categorical=("lc",))
    windows = rng.normal(size=(n, 2, 3, 3, 1)).astype(np.float32)
    classes = rng.choice([0.0, 3.0, 7.0], size=n)
    windows[:, 1] = classes[:, None, None, None]
    windows[:5, 1, 0, 0, 0] = np.nan  # nodata in a corner
    effect = {0.0: 5.0, 3.0: 6.0, 7.0: 8.0}
    y = np.array([effect[c] for c in classes]) + 0.1 * rng.normal(size=n)
    coords = np.column_stack([rng.uniform(10, 11, n), rng.uniform(48, 49, n)])
    data = FitData(windows, y, np.arange(n), np.empty(0, np.int64), spec, coords, None, 0, None)
    model = _model(Cnn3dModel, max_steps=300, min_steps=60, patience_steps=200)
    model.fit(data)
    assert isinstance(model.net, CategoricalInput)
    assert model.net_spec["categorical"]["codes"] == [[0.0, 3.0, 7.0]]
    assert model.normalizer is not None and np.all(model.normalizer.mean[1] == -1.0)
    probe = np.repeat(windows[5:6], 3, axis=0)
    for i, code in enumerate((0.0, 3.0, 7.0)):
        probe[i, 1] = code
    pred = model.predict(probe)
    assert pred[0] < pred[1] < pred[2] and pred[2] - pred[0] > 1.5  # the class effect (3 units) is learned
    save_model(model, tmp_path)
    np.testing.assert_allclose(load_model(tmp_path).predict(probe), pred, rtol=1e-6)
    unseen = probe[:1].copy()
    unseen[0, 1] = 9.0
    with pytest.warns(UnseenCategoryWarning, match=r"categorical band lc: class code\(s\) 9 unseen"):
        assert np.isfinite(model.predict(unseen)).all()
    with pytest.warns(UnseenCategoryWarning, match="mapped as nodata"):
        assert np.isnan(model.for_inference().predict(unseen)).all()


# ------------------------------------------------------------------------------------------- relief channels
class _Inputs(torch.nn.Module):
    """Returns what it is given (to read what a wrapper feeds the network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_relief_channels_are_each_pixel_minus_its_window_mean() -> None:
    from socmap.models.networks import ReliefInput

    x = np.random.default_rng(1).normal(size=(4, 3, 5, 5, 2)).astype(np.float32)
    out = ReliefInput(_Inputs(), [2, 0], [0.5, 2.0])(torch.from_numpy(x)).numpy()
    assert out.shape == (4, 5, 5, 5, 2)
    np.testing.assert_array_equal(out[:, :3], x)
    for k, (ch, scale) in enumerate([(2, 0.5), (0, 2.0)]):
        expected = (x[:, ch] - x[:, ch].mean(axis=(1, 2), keepdims=True)) / scale
        np.testing.assert_allclose(out[:, 3 + k], expected, atol=1e-6)
    with pytest.raises(InputError, match="one positive scale each"):
        ReliefInput(_Inputs(), [0], [0.0])


def test_relief_bands_are_read_by_the_network_and_saved(tmp_path: Path) -> None:
    from socmap.models.networks import ReliefInput

    data = _data(100)
    model = _model(relief_bands=["b"], use_validation=False, max_steps=20, min_steps=5)
    model.fit(data)
    # the scale: root mean square of (pixel - window mean) of band b, standardised per step over the windows
    b = data.windows[:, 1].astype(np.float64)  # [n, 5, 5, 3]
    z = (b - b.mean(axis=(0, 1, 2))) / b.std(axis=(0, 1, 2))
    expected = np.sqrt(np.mean((z - z.mean(axis=(1, 2), keepdims=True)) ** 2))
    relief = model.net_spec["relief"]
    assert relief["bands"] == ["b"] and relief["channels"] == [1]
    assert relief["scales"] == pytest.approx([expected], rel=1e-6)
    assert isinstance(model.net, ReliefInput) and model.net.channels.tolist() == [1]
    assert model.net.net.cnn[0].in_channels == 3  # two bands + one relief channel
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    x = _data(30, seed=9).windows
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    mapping = loaded.for_inference()  # the map's traced, frozen graph, kept only if it matches the network
    assert isinstance(mapping, DeepModel) and isinstance(mapping.net, torch.jit.ScriptModule)
    assert mapping.predict(x) == pytest.approx(model.predict(x), rel=1e-4)
    with pytest.raises(
        InputError, match=r"train\.relief_bands: 'z' is not a band of the data; expected among a, b"
    ):
        _model(relief_bands=["z"], use_validation=False).fit(data)


def test_relief_of_a_band_beside_one_hot_classes_reads_that_band() -> None:
    from socmap.models.deep import _build_one
    from socmap.models.networks import CategoricalInput, ReliefInput

    cat = {"num_channels": 3, "channels": [1], "codes": [[0.0, 1.0]]}  # raw band 1 -> two class channels
    spec = {
        "name": "cnn_lstm",
        "kwargs": {"num_channels": 3, "lstm_input_size": 8, "lstm_hidden_size": 8, "static_channels": [2]},
        "categorical": cat,
        "relief": {"bands": ["c"], "channels": [2], "scales": [1.0]},
    }
    net = _build_one(spec)
    assert isinstance(net, CategoricalInput) and isinstance(net.net, ReliefInput)
    assert net.net.channels.tolist() == [1]  # raw band 2 is the second kept band; the classes follow
    inner = net.net.net
    assert inner.cnn[0].in_channels == 5  # kept 0, 2; classes of band 1; relief of band 2
    assert inner.static.tolist() == [1, 4]  # band 2 and its relief are static
    seen: list[torch.Tensor] = []
    inner.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    x = torch.randn(2, 3, 5, 5, 4)
    x[:, 1] = 1.0  # class code 0 after the normaliser's shift
    net.eval()(x)
    expected = x[:, 2] - x[:, 2].mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(seen[0][:, 4], expected)
