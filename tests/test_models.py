"""RefittedCovLSTM: architecture, parameter count, shapes for any window >= 4 and any T >= 1."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from socmap.errors import InputError
from socmap.models.deep import _build_one, _one_hot_static
from socmap.models.networks import (
    CategoricalInput,
    RefittedCovLSTM,
    build_network,
    conv_matrix,
    count_parameters,
)


def expected_parameters(c: int, window: int, hidden: int = 128, feat: int = 128, outputs: int = 1) -> int:
    """Independent count from the layer formulas of the documented architecture."""
    conv1 = c * 32 * 9 + 32
    conv2 = 32 * 64 * 9 + 64
    reduced = (window // 2) // 2
    linear = 64 * reduced * reduced * feat + feat
    lstm = 4 * (feat * hidden + hidden * hidden + 2 * hidden) + 4 * (
        hidden * hidden + hidden * hidden + 2 * hidden
    )
    head = hidden * 64 + 64
    fusion = (feat + 64) * 32 + 32 + 32 * outputs + outputs
    return conv1 + conv2 + linear + lstm + head + fusion


def test_parameter_count_six_bands_5x5() -> None:
    model = RefittedCovLSTM(6)
    assert count_parameters(model) == expected_parameters(6, 5) == 307_233  # "about 307k"
    small = RefittedCovLSTM(6, lstm_input_size=32, lstm_hidden_size=32)  # socmap's width below 8,000 samples
    assert count_parameters(small) == expected_parameters(6, 5, hidden=32, feat=32) == 44_481  # "44k"


@pytest.mark.parametrize(("channels", "window", "steps"), [(6, 5, 5), (3, 4, 1), (15, 9, 12), (1, 7, 3)])
def test_shapes(channels: int, window: int, steps: int) -> None:
    model = RefittedCovLSTM(channels, window_size=window, n_outputs=3)
    out = model(torch.randn(4, channels, window, window, steps))
    assert out.shape == (4, 3)
    assert count_parameters(model) == expected_parameters(channels, window, outputs=3)


def test_time_order_matters_and_last_step_feeds_fusion() -> None:
    torch.manual_seed(0)
    model = RefittedCovLSTM(2).eval()
    x = torch.randn(3, 2, 5, 5, 4)
    reversed_x = x.flip(-1)
    assert not torch.allclose(model(x), model(reversed_x))


def test_small_window_refused_and_registry() -> None:
    message = (
        "windows.size 3: cnn_lstm needs windows of at least 4 pixels (its two 2x2 poolings); set windows.size 4 "
        "or more, or use cnn3d, transformer (any window) or a tree model"
    )
    with pytest.raises(InputError) as refused:
        RefittedCovLSTM(6, window_size=3)
    assert str(refused.value) == message
    # cv creates every kind before any fitting: a 3-pixel config is refused there, naming the key
    from socmap.config import load_config
    from socmap.evaluate.stage import check_models

    small = load_config(None, {"windows.size": 3, "cv.models": ["rf", "cnn3d", "transformer", "cnn_lstm"]})
    with pytest.raises(InputError) as early:
        check_models(small)
    assert str(early.value) == message
    assert check_models(load_config(None, {"windows.size": 3, "cv.models": ["rf", "cnn3d", "transformer"]}))
    with pytest.raises(InputError, match=r"network .resnet.: expected one of cnn3d, cnn_lstm, transformer"):
        build_network("resnet", num_channels=6)


def test_model_never_moves_itself_to_a_device() -> None:
    """On the meta device any internal .cpu()/.cuda()/.to() would show in the output's device or fail."""
    model = RefittedCovLSTM(6).to("meta")
    out = model(torch.empty(2, 6, 5, 5, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 1)
    assert {p.device.type for p in model.parameters()} == {"meta"}


def _padded_reference(net: RefittedCovLSTM) -> torch.nn.Sequential:
    """The seed project's per-step CNN (plain padded convolutions, NCHW) with ``net``'s weights."""
    first = net.cnn[0]
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(first.in_channels, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        *list(net.cnn)[6:],
    )
    ref.load_state_dict(net.cnn.state_dict())  # the same parameter names: older state dicts load
    return ref


@pytest.mark.parametrize("window", [4, 5, 6, 7, 8, 9])
def test_training_cnn_computes_only_what_the_pools_read(window: int) -> None:
    """While training, the convolutions skip the last row/column an odd input's pool drops and run channels-
    last: the per-step features equal the padded NCHW CNN's up to float rounding; in evaluation mode (maps)
    the network runs the padded convolutions and equals it exactly."""
    from socmap.models.networks import _training_layout

    torch.manual_seed(window)
    net = RefittedCovLSTM(6, 32, 32, window_size=window)
    ref = _padded_reference(net)
    steps = torch.randn(40, 6, window, window)
    with torch.no_grad():
        want = ref(steps)
        net.train()
        got = net.cnn(_training_layout(steps))
        if window % 2:  # the cropped convolution's output is one row and column short
            assert net.cnn[0](steps).shape[-2:] == (window - 1, window - 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        net.eval()
        assert torch.equal(net.cnn(steps), want)
        assert net.cnn[0](steps).shape[-2:] == (window, window)


@pytest.mark.parametrize("window", [4, 5, 6, 7, 8, 9])
def test_training_features_and_gradients_equal_the_per_step_cnn(window: int) -> None:
    """While training, windows up to DENSE_MAX_WINDOW run the second convolution as a matrix product
    (``_second_layer``), larger ones the convolution: either way the step features and every CNN gradient equal
    the seed project's padded per-step CNN's up to float rounding."""
    from socmap.models.networks import DENSE_MAX_WINDOW

    torch.manual_seed(window)
    net = RefittedCovLSTM(5, 16, 16, dropout=0.0, window_size=window).train()
    ref = _padded_reference(net)
    x = torch.randn(24, 5, window, window, 3)
    want = ref(x.permute(0, 4, 1, 2, 3).reshape(72, 5, window, window)).reshape(24, 3, -1)
    want.square().sum().backward()
    with mock.patch.object(RefittedCovLSTM, "_second_layer", autospec=True, side_effect=_real_second) as spy:
        got = net._step_features(x)
    assert spy.call_count == (1 if window <= DENSE_MAX_WINDOW else 0)
    got.square().sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grads = dict(ref.named_parameters())
    for name, param in net.cnn.named_parameters():
        assert param.grad is not None
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-4, atol=1e-5)
    # the product's layout where the pooled maps are larger than 1 x 1 (q = 2 for 8-9 px windows)
    pooled = torch.randn(10, 32, window // 2, window // 2)
    rows = pooled.permute(0, 2, 3, 1).reshape(10, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            net._second_layer(rows, window // 2), net.cnn[3:](pooled), rtol=1e-5, atol=1e-6
        )


_real_second = RefittedCovLSTM._second_layer


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [2, 3, 4, 5, 7])
def test_conv_matrix_is_the_convolution_the_pool_reads(size: int, channels_last: bool) -> None:
    """x @ conv_matrix(w) holds F.conv2d(x, w, padding=1) at every output a 2x2 floor pool reads, in the
    documented column order (pool offset row, column; pooled row, column; channel)."""
    torch.manual_seed(size)
    weight, x = (
        torch.randn(7, 3, 3, 3, dtype=torch.float64),
        torch.randn(11, 3, size, size, dtype=torch.float64),
    )
    flat = x.permute(0, 2, 3, 1).reshape(11, -1) if channels_last else x.reshape(11, -1)
    got = flat @ conv_matrix(weight, size, channels_last=channels_last)
    p = size // 2
    want = torch.nn.functional.conv2d(x, weight, padding=1)[:, :, : 2 * p, : 2 * p]
    want = want.reshape(11, 7, p, 2, p, 2).permute(0, 3, 5, 2, 4, 1).reshape(11, -1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.shape == (11, 4 * 7 * p * p)


def test_tap_matrices_cached_during_a_prediction_serve_training() -> None:
    """The cached tap matrix of a window size first needed by a prediction (inference mode) is a normal tensor:
    a later training step through it back-propagates (an inference tensor cannot be saved for backward)."""
    from socmap.models.networks import _conv_taps

    _conv_taps.cache_clear()
    net = RefittedCovLSTM(3, 8, 8, window_size=6)
    with torch.inference_mode():
        net.eval()(torch.randn(4, 3, 6, 6, 2))
    assert not _conv_taps(6).is_inference() and not _conv_taps(3).is_inference()
    net.train()(torch.randn(4, 3, 6, 6, 2)).sum().backward()
    assert net.cnn[3].weight.grad is not None and net.cnn[3].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("window", "steps", "bidirectional"), [(4, 3, False), (5, 5, True), (6, 1, False), (7, 2, False)]
)
def test_inference_runs_the_cnn_as_matrix_products(window: int, steps: int, bidirectional: bool) -> None:
    """Eager inference (no gradients) on windows up to DENSE_MAX_WINDOW runs the per-step CNN as products; the
    outputs equal the convolutions' (evaluation mode with gradients on) up to float rounding."""
    torch.manual_seed(window)
    net = RefittedCovLSTM(3, 16, 16, window_size=window, bidirectional=bidirectional).eval()
    x = torch.randn(40, 3, window, window, steps)
    want = net(x).detach()  # gradients on: the convolutions
    with mock.patch.object(
        RefittedCovLSTM, "_dense_step_features", autospec=True, side_effect=_real_dense
    ) as spy:
        with torch.inference_mode():
            got = net(x)
        assert spy.call_count == 1
        net(x)  # gradients on: not the products
        assert spy.call_count == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


_real_dense = RefittedCovLSTM._dense_step_features


def test_products_not_in_traces_training_or_large_windows() -> None:
    """The map's traced (frozen, oneDNN-fused) graph and training do not run the inference products (training
    keeps its first convolution); neither do windows over DENSE_MAX_WINDOW."""
    from socmap.models.networks import DENSE_MAX_WINDOW

    torch.manual_seed(0)
    with mock.patch.object(
        RefittedCovLSTM, "_dense_step_features", autospec=True, side_effect=_real_dense
    ) as spy:
        net = RefittedCovLSTM(3, 16, 16, window_size=5).eval()
        with torch.no_grad():
            traced = torch.jit.trace(net, torch.randn(8, 3, 5, 5, 2), check_trace=False)
        assert spy.call_count == 0 and "aten::_convolution" in str(traced.inlined_graph)
        with torch.no_grad():
            net.train()(torch.randn(8, 3, 5, 5, 2))
            big = DENSE_MAX_WINDOW + 1
            RefittedCovLSTM(3, 16, 16, window_size=big).eval()(torch.randn(8, 3, big, big, 2))
        assert spy.call_count == 0


def test_bf16_inference_runs_the_cnn_in_float32() -> None:
    """Under bf16 autocast the products run in float32: the per-step features are bit for bit the fp32 ones
    (the CNN's bf16 rounding made most of bf16's change to a map); the LSTM still runs in bf16."""
    torch.manual_seed(0)
    net = RefittedCovLSTM(4, 16, 16, dropout=0.0, window_size=5).eval()
    x = torch.randn(64, 4, 5, 5, 3)
    with torch.inference_mode():
        fp32_features, fp32_out = net._step_features(x), net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features, out = net._step_features(x), net(x)
    assert features.dtype == torch.float32 and torch.equal(features, fp32_features)
    assert not torch.equal(out, fp32_out)  # the LSTM's products are bf16


def test_training_step_gradients_match_the_padded_network() -> None:
    """Gradients of the whole network through the cropped convolutions equal those through the padded ones up
    to float rounding (dropout off)."""
    torch.manual_seed(0)
    net = RefittedCovLSTM(4, 16, 16, dropout=0.0, window_size=5).train()
    plain = RefittedCovLSTM(4, 16, 16, dropout=0.0, window_size=5).train()
    plain.load_state_dict(net.state_dict())
    plain.cnn = _padded_reference(plain)
    x, y = torch.randn(12, 4, 5, 5, 3), torch.randn(12, 1)
    for model in (net, plain):
        torch.nn.functional.mse_loss(model(x), y).backward()
    for (name, a), b in zip(net.named_parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def _conv_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of the network's convolutions on ``x`` (torch's own counter)."""
    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))


def _static_windows(n: int, channels: int, steps: int, static: list[int], seed: int = 0) -> torch.Tensor:
    """Windows whose ``static`` channels hold one window at every step, as socmap extracts static bands."""
    x = torch.randn(n, channels, 5, 5, steps, generator=torch.Generator().manual_seed(seed))
    x[:, static] = x[:, static, :, :, :1]
    return x


@pytest.mark.parametrize("static", [[0, 1, 2, 3, 4, 5, 6], [1, 2, 4, 5, 6, 7, 8], list(range(9))])
def test_static_bands_are_convolved_once_per_window_while_training(static: list[int]) -> None:
    """With most of the first convolution's work on static bands, training convolves them once per window
    (prefix or scattered channels): same outputs and gradients as the per-step network within float
    rounding, and torch's FLOP counter sees the first convolution's saving (also with every band static);
    evaluation is the plain network."""
    torch.manual_seed(0)
    split = RefittedCovLSTM(9, 16, 16, dropout=0.0, static_channels=static).train()
    plain = RefittedCovLSTM(9, 16, 16, dropout=0.0).train()
    plain.load_state_dict(split.state_dict())  # the static channels are not part of the weights
    x, y = _static_windows(12, 9, 6, static), torch.randn(12, 1)
    for net in (split, plain):
        torch.nn.functional.mse_loss(net(x), y).backward()
    torch.testing.assert_close(split(x), plain(x), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(split.named_parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    # first convolution: 4x4 training outputs x 32 x 9 taps per band; static bands at 1 step instead of 6
    per_band = 2 * 12 * 16 * 32 * 9
    saved = per_band * len(static) * (6 - 1)
    assert _conv_flops(plain, x) - _conv_flops(split, x) == saved
    split.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(split(x), plain(x))  # evaluation: the plain per-step convolution


def test_static_split_needs_most_of_the_work_and_several_steps() -> None:
    """Below half of the first convolution's work (1 static band of 6 over 5 steps), or with one step, the
    network convolves every step as before (the extra calls cost more than they save)."""
    for channels, steps, static in ((6, 5, [0]), (9, 1, list(range(7)))):
        torch.manual_seed(0)
        split = RefittedCovLSTM(channels, 16, 16, dropout=0.0, static_channels=static).train()
        plain = RefittedCovLSTM(channels, 16, 16, dropout=0.0).train()
        plain.load_state_dict(split.state_dict())
        x = _static_windows(4, channels, steps, static)
        assert _conv_flops(split, x) == _conv_flops(plain, x)
        assert torch.equal(split(x), plain(x))
    with pytest.raises(InputError, match=r"static_channels \[0, 6\]: expected channel indices below 6"):
        RefittedCovLSTM(6, static_channels=[6, 0])


def test_fitted_cnn_lstm_knows_the_datas_static_bands() -> None:
    """A fit's network options carry the data's static channels (static bands first, as extracted), and the
    network rebuilt from them splits its first convolution."""
    from socmap.config import TrainConfig
    from socmap.models.base import InputSpec, TargetInfo
    from socmap.models.networks import network_options

    bands = ("dem", "slope", "clay", "ndvi")
    spec = InputSpec(
        bands, ("dem", "slope", "clay"), 5, 12, tuple(map(str, range(12))), {}, TargetInfo("oc", "%")
    )
    options = network_options("cnn_lstm", TrainConfig(), spec, 1, n_train=500)
    assert options["static_channels"] == [0, 1, 2]
    net = build_network("cnn_lstm", **options)
    assert net.static.tolist() == [0, 1, 2] and net.dynamic.tolist() == [3]


def test_one_hot_network_learns_which_of_its_channels_are_static() -> None:
    """Categorical bands become one-hot channels after the kept bands; a static categorical band's classes
    are static channels of the wrapped network."""
    cat = {"num_channels": 5, "channels": [1, 3], "codes": [[0.0, 1.0, 2.0], [5.0, 6.0]]}
    assert _one_hot_static(5, cat, {0, 1, 2}) == [0, 1, 3, 4, 5]  # kept 0, 2, 4 -> 0, 1, 2; band 1 -> 3, 4, 5
    assert _one_hot_static(5, cat, {3, 4}) == [2, 6, 7]
    spec = {
        "name": "cnn_lstm",
        "kwargs": {
            "num_channels": 5,
            "lstm_input_size": 8,
            "lstm_hidden_size": 8,
            "static_channels": [0, 1, 2],
        },
        "categorical": cat,
    }
    wrapped = _build_one(spec)
    assert isinstance(wrapped, CategoricalInput)
    assert wrapped.net.static.tolist() == [0, 1, 3, 4, 5]


def test_cnn_lstm_step_features_stay_float32_under_bf16_autocast() -> None:
    """On the convolution path (the CNN modules called directly, as traces and evaluation with gradients do) the
    last projection feeds the float32 fusion head directly (the newest step's features), so it runs in float32
    under bf16 autocast while the convolutions run in bf16; its parameters keep nn.Linear's keys."""
    torch.manual_seed(0)
    net = RefittedCovLSTM(4, 16, 16, dropout=0.0, window_size=5).eval()
    steps = torch.randn(64, 4, 5, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv = net.cnn[0](steps)
        features = net.cnn(steps)
    assert conv.dtype == torch.bfloat16  # the convolutions still run in bf16
    assert features.dtype == torch.float32
    assert not torch.equal(features.to(torch.bfloat16).float(), features)  # not bf16 values
    keys = {k for k in net.state_dict() if k.startswith("cnn.7.")}
    assert keys == {"cnn.7.weight", "cnn.7.bias"} and isinstance(net.cnn[7], torch.nn.Linear)


@pytest.mark.parametrize("name", ["cnn_lstm", "transformer", "cnn3d"])
def test_output_head_runs_in_float32_under_bf16_autocast(name: str) -> None:
    """``map.precision: bf16`` autocasts the network, but its small output head stays float32: outputs are not
    rounded to bf16's 8 significant bits (they were, and that rounding was most of bf16's change to a map)."""
    torch.manual_seed(0)
    kwargs: dict[str, int] = {"num_channels": 4} | ({"time_steps": 3} if name == "transformer" else {})
    net = build_network(name, **kwargs).eval()
    x = torch.randn(64, 4, 5, 5, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32
    assert not torch.equal(out.to(torch.bfloat16).float(), out)  # not bf16 values
    with torch.no_grad():
        plain = net(x)
    assert (out - plain).abs().max() < 0.05 * plain.abs().max()  # still the same network
