"""Deep models on window stacks [batch, bands, height, width, time]: ``cnn_lstm``, ``transformer``, ``cnn3d``.

``RefittedCovLSTM`` is the seed project's CNN-LSTM: a small CNN reads every time step's window, an LSTM reads
the chronological sequence (oldest first), and a fusion head combines the LSTM state with the last step's CNN
features. Networks never move themselves to a device (Accelerate does that); they travel as a state dict plus
the JSON keyword arguments of :func:`build_network` (see :mod:`socmap.models.deep`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from socmap.errors import InputError

if TYPE_CHECKING:
    from socmap.config import TrainConfig
    from socmap.models.base import InputSpec

__all__ = [
    "NETWORKS",
    "NETWORK_OPTIONS",
    "CategoricalInput",
    "Cnn3d",
    "FullPrecisionLinear",
    "PooledConv2d",
    "RefittedCovLSTM",
    "ReliefInput",
    "TemporalTransformer",
    "auto_lstm_width",
    "build_network",
    "check_network_options",
    "conv_matrix",
    "count_parameters",
    "network_options",
    "window_size_error",
]

# The CNN-LSTM convolves static bands once per window (not at every step) when that saves at least this share
# of its first convolution's work, static * (T - 1) / (bands * T). Measured per training step on one thread:
# 0.79 (Macedonia) 1.11-1.25x; 0.46 level (0.98-1.04x); 0.13 and 0.40 0.85-0.93x (the extra calls cost more).
STATIC_SPLIT_SHARE = 0.5
# Eager inference runs the CNN-LSTM's per-step convolutions as matrix products (:func:`conv_matrix`) on
# windows up to this size. Whole network, 1,024 windows x 5 steps, width 128, one thread, fp32: 4 px 1.66x
# faster, 5 px 2.07x, 6 px 1.67x, 7 px 1.68x, 9 px 1.08x (the matrix grows with the window's area, the
# convolution's work with the number of pixels only); under bf16 (products in float32) 9 px ran 0.72x.
DENSE_MAX_WINDOW = 7
SMALL_LSTM_WIDTH, LARGE_LSTM_WIDTH = 32, 128  # CNN-LSTM default widths below / from the threshold
LSTM_WIDTH_THRESHOLD = 8_000  # training samples (width 32 measured level with 128 at 7,474, lower at 15,000)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off for a network's output head (``map.precision: bf16``). Why: the head's FLOPs are
    negligible, but a bf16 output keeps 8 significant bits (0.4 % of the prediction on the transformed scale):
    on the bench's whole-Bavaria map the head caused most of bf16's change (docs/benchmarks.md). A no-op when
    autocast is off (fp32 maps and training, traced graphs)."""
    if device.type in {"cpu", "cuda"} and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class FullPrecisionLinear(nn.Linear):
    """``nn.Linear`` that runs in float32 under bf16 autocast (same parameters and state-dict keys). For the
    CNN-LSTM's per-step projection: its output goes straight into the float32 fusion head (the newest step's
    features), so a bf16 output would round that input to 8 significant bits; the layer is about 2 % of the
    network's FLOPs. On the bench's windows it cut bf16's largest change by 16 % (docs/benchmarks.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, in_features] (any float dtype) -> float32 [N, out_features] under autocast."""
        with full_precision(x.device):
            return super().forward(x.float())


class PooledConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, 3, padding=1)`` whose output feeds a 2x2 max pool (stride 2). While training, on an
    odd-sized input it computes only the rows and columns the pool reads: not the last row and column, which
    the pool's floor drops (a third of the first convolution's work on 5x5 windows). The pooled result is the
    same (tests/test_models.py). Inference keeps the plain padded convolution, which the map's frozen oneDNN
    graph fuses with its ReLU (the cropped form measured 1.3x slower there)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W] -> [N, out, H, W]; while training [N, out, H - H % 2, W - W % 2]."""
        return self.convolve(x, self.weight, self.bias)

    def convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's convolution with the given weight (a subset of its input channels) and bias."""
        if not self.training:
            return F.conv2d(x, weight, bias, padding=1)
        h, w = x.shape[-2:]
        return F.conv2d(F.pad(x, (1, 1 - w % 2, 1, 1 - h % 2)), weight, bias)


def conv_matrix(weight: torch.Tensor, size: int, channels_last: bool = False) -> torch.Tensor:
    """A 3x3 same-padded convolution as a matrix, for the outputs that a 2x2 max pool (floor) reads.

    Why: on 4-7 px windows oneDNN's convolution runs far below the machine's matmul rate (a 5x5 image is too
    small to tile), while one matrix product over every window and step runs near it (``DENSE_MAX_WINDOW``).

    Args:
        weight: ``[out, in, 3, 3]``.
        size: the input's height and width.
        channels_last: input rows ordered (row, column, channel) instead of (channel, row, column).

    Returns:
        ``[in * size², 4 * out * (size // 2)²]``; columns ordered (pool offset row, column; pooled row,
        column; channel), so the pool is a maximum over 4 contiguous column blocks. Every entry is exactly a
        weight or zero: the product of the weights ``[out * in, 9]`` with a fixed 0/1 tap matrix, one matrix
        product whose backward is another (deterministic, unlike a gather's scatter-add on several threads).
    """
    out_ch, in_ch = weight.shape[:2]
    taps = _conv_taps(size).to(device=weight.device, dtype=weight.dtype)  # [9, size², positions]
    p2 = (size // 2) ** 2
    dense = (weight.reshape(out_ch * in_ch, 9) @ taps.reshape(9, -1)).reshape(
        out_ch, in_ch, size * size, 4 * p2
    )
    order = (2, 1, 3, 0) if channels_last else (1, 2, 3, 0)  # rows (pixel, channel) or (channel, pixel)
    return dense.permute(*order).reshape(in_ch * size * size, 4 * p2 * out_ch)


@functools.lru_cache(maxsize=16)
def _conv_taps(size: int) -> torch.Tensor:
    """``[9, size², 4 p²]`` (p = size // 2): 1 where tap (ky, kx) of a same-padded 3x3 convolution links input
    pixel (y, x) to an output the pool reads, listed (pool offset row, column; pooled row, column). Built
    outside inference mode, so that a cached matrix made during a prediction serves later training."""
    p = size // 2
    with torch.inference_mode(False):
        taps = torch.zeros(3, 3, size, size, 2, 2, p, p, dtype=torch.float64)
        for dy, dx, ph, pw in itertools.product(range(2), range(2), range(p), range(p)):
            oy, ox = 2 * ph + dy, 2 * pw + dx
            for ky, kx in itertools.product(range(3), range(3)):
                y, x = oy + ky - 1, ox + kx - 1
                if 0 <= y < size and 0 <= x < size:
                    taps[ky, kx, y, x, dy, dx, ph, pw] = 1.0
        return taps.reshape(9, size * size, 4 * p * p)


def _pooled_relu(z: torch.Tensor, bias: torch.Tensor | None, cells: int) -> torch.Tensor:
    """ReLU(max pool(conv)) from :func:`conv_matrix`'s product ``z``: the bias is constant within a pool and
    ReLU is monotone, so the maximum is taken first."""
    pooled = z.reshape(z.shape[0], 4, -1).amax(1)
    return F.relu(pooled if bias is None else pooled + bias.repeat(cells))


def _training_layout(steps: torch.Tensor) -> torch.Tensor:
    """Per-step windows in channels-last layout (training only). Why: the CPU's NCHW max-pool kernel with
    indices took 1.2-1.6 ms per call on 768 x 32 planes of 5x5 (0.1 ms in NHWC); with the cropped convolutions
    a training step is 1.2-1.4x faster on one thread (docs/benchmarks.md). Inference keeps NCHW: the map's
    frozen oneDNN graph picks its own layouts."""
    return steps.contiguous(memory_format=torch.channels_last)


def window_size_error(window_size: int) -> str:
    """The one-line refusal of a window too small for the CNN-LSTM, naming the key and what works."""
    return (
        f"windows.size {window_size}: cnn_lstm needs windows of at least {RefittedCovLSTM.MIN_WINDOW} pixels "
        "(its two 2x2 poolings); set windows.size 4 or more, or use cnn3d, transformer (any window) or a tree model"
    )


class RefittedCovLSTM(nn.Module):
    """CNN per time step -> LSTM over time -> fusion head -> ``n_outputs`` values per sample.

    Per step: Conv2d(C->32, 3x3, pad 1)+ReLU+MaxPool2, Conv2d(32->64, 3x3, pad 1)+ReLU+MaxPool2 (4x spatial
    reduction), Linear(->lstm_input_size)+ReLU. LSTM(lstm_input_size -> lstm_hidden_size, num_layers, dropout
    between layers); its last output -> Linear(->64)+ReLU; concatenated with the last step's CNN features ->
    Linear(->32)+ReLU -> Linear(->n_outputs). Works for any window >= 4 and any number of steps >= 1.
    About 307k parameters for 6 bands and 5x5 windows at the seed project's width 128 (these class defaults);
    44k at width 32, which ``socmap`` uses below 8,000 training samples (see :func:`auto_lstm_width`).
    ``static_channels``: the bands constant in time, convolved once per window while training (see
    :meth:`_step_features`).
    """

    MIN_WINDOW: ClassVar[int] = 4  # two 2x2 max-pools
    static: torch.Tensor
    dynamic: torch.Tensor

    def __init__(
        self,
        num_channels: int,
        lstm_input_size: int = 128,
        lstm_hidden_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.25,
        window_size: int = 5,
        n_outputs: int = 1,
        bidirectional: bool = False,
        static_channels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if window_size < self.MIN_WINDOW:
            raise InputError(window_size_error(window_size))
        if num_channels < 1:
            raise InputError(f"num_channels {num_channels}: expected at least 1 band")
        reduced = (window_size // 2) // 2
        self.cnn = nn.Sequential(
            PooledConv2d(num_channels, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            PooledConv2d(32, 64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            FullPrecisionLinear(64 * reduced * reduced, lstm_input_size),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(
            lstm_input_size,
            lstm_hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        self.lstm_head = nn.Sequential(nn.Linear(directions * lstm_hidden_size, 64), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(lstm_input_size + 64, 32), nn.ReLU(), nn.Linear(32, n_outputs))
        self.n_outputs = n_outputs
        static = sorted({int(c) for c in static_channels})
        if any(not 0 <= c < num_channels for c in static):
            raise InputError(f"static_channels {static}: expected channel indices below {num_channels}")
        # not saved with the weights (older state dicts load): the network's options rebuild them
        self.register_buffer("static", torch.tensor(static, dtype=torch.long), persistent=False)
        dynamic = [c for c in range(num_channels) if c not in static]
        self.register_buffer("dynamic", torch.tensor(dynamic, dtype=torch.long), persistent=False)

    def _step_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> per-step CNN features [batch, time, lstm_input_size].

        Three ways to the same features (up to float rounding, tested): evaluation with gradients and traced
        map graphs run the plain per-step CNN; eager inference runs it as matrix products
        (:meth:`_dense_step_features`); training runs the first convolution (:meth:`_first_convolution`), and
        on windows up to ``DENSE_MAX_WINDOW`` the second convolution as a matrix product
        (:meth:`_second_layer`; a training step 1.08-1.42x faster on 4-5 px windows, docs/benchmarks.md).
        """
        b, c, h, w, t = x.shape
        if self._dense_inference(h, w):
            return self._dense_step_features(x)
        if not self.training:
            return self.cnn(x.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)).reshape(b, t, -1)
        pooled = self.cnn[2](self.cnn[1](self._first_convolution(x)))  # [b * t, 32, p, p], channels-last
        if h == w <= DENSE_MAX_WINDOW:
            rows = pooled.permute(0, 2, 3, 1).reshape(b * t, -1)  # (row, column, channel): a view
            return self._second_layer(rows, pooled.shape[-1]).reshape(b, t, -1)
        return self.cnn[3:](pooled).reshape(b, t, -1)

    def _first_convolution(self, x: torch.Tensor) -> torch.Tensor:
        """The first convolution of every step while training, ``[batch * time, 32, h', w']`` channels-last.

        Static bands hold the same window at every step, so when they are most of the first convolution's
        work (``STATIC_SPLIT_SHARE``) their share of it (a linear map, before its ReLU) is computed once per
        window, from the newest step, and added to every step's share of the time-varying bands: the same sum,
        up to float rounding, for a fraction of the work (13 of Macedonia's 15 bands are static: the first
        convolution's FLOPs drop 4.8x). While training only: the map's frozen graph fuses the plain
        convolution with its ReLU and ran 2x slower with the split (docs/benchmarks.md). With
        ``train.input_noise`` a static band's noise is then its newest step's draw (one per window).
        """
        b, c, h, w, t = x.shape
        first: PooledConv2d = self.cnn[0]  # type: ignore[assignment]
        if self.static.numel() * (t - 1) < STATIC_SPLIT_SHARE * c * t:
            return first(_training_layout(x.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)))
        x_static = x[:, self.static, :, :, -1]
        fixed = first.convolve(
            _training_layout(x_static), first.weight.index_select(1, self.static), first.bias
        )
        if self.dynamic.numel() == 0:
            out = fixed.unsqueeze(1).expand(-1, t, -1, -1, -1)
        else:
            steps = x.index_select(1, self.dynamic).permute(0, 4, 1, 2, 3).reshape(b * t, -1, h, w)
            w_dynamic = first.weight.index_select(1, self.dynamic)
            varying = first.convolve(_training_layout(steps), w_dynamic, None)
            out = varying.reshape(b, t, *varying.shape[1:]) + fixed.unsqueeze(1)
        return out.reshape(b * t, *out.shape[2:])

    def _second_layer(self, rows: torch.Tensor, p: int) -> torch.Tensor:
        """The second convolution, its ReLU and pool, and the projection, as matrix products: pooled first-layer
        maps flattened (row, column, channel) ``[N, p * p * 32]`` -> ``[N, lstm_input_size]``."""
        conv2: PooledConv2d = self.cnn[3]  # type: ignore[assignment]
        project: nn.Linear = self.cnn[7]  # type: ignore[assignment]
        q = p // 2
        h = _pooled_relu(rows @ conv_matrix(conv2.weight, p, channels_last=True), conv2.bias, q * q)
        # the projection reads the pooled maps flattened channel-first; h is (row, column, channel)
        weight = project.weight.reshape(project.out_features, -1, q, q).permute(0, 2, 3, 1)
        return F.relu(F.linear(h, weight.reshape(project.out_features, -1), project.bias))

    def _dense_inference(self, h: int, w: int) -> bool:
        """Whether the per-step CNN runs as matrix products: eager inference (no gradients, not training) on
        windows up to ``DENSE_MAX_WINDOW``. Not in a TorchScript trace: the map's frozen, optimised fp32 graph
        runs the convolutions in oneDNN's blocked layout, fused with their ReLU, and the whole network was
        1.2x faster that way than with the products (21.8 vs 26.8 ms per 1,024 windows, width 128, one
        thread), so fp32 maps keep their convolutions (and their values)."""
        return (
            not self.training
            and not torch.is_grad_enabled()
            and not torch.jit.is_tracing()  # type: ignore[attr-defined]
            and h == w <= DENSE_MAX_WINDOW
        )

    def _dense_step_features(self, x: torch.Tensor) -> torch.Tensor:
        """The per-step CNN as three matrix products (:func:`conv_matrix`), for eager inference on small windows:
        the same network up to float rounding (tested), the whole network 2.07x faster on 5x5 windows
        (``DENSE_MAX_WINDOW``). In float32 under bf16 autocast: the CNN's bf16 rounding made most of bf16's
        change to the bench's whole-Bavaria map (largest change 0.20 -> 0.023 g/kg), so under bf16 only the
        LSTM's products run in bf16. Not while training or when gradients are wanted: training keeps the
        first convolution (cropped, channels-last, static bands once; as a product its backward measured
        slower) and runs only the second as a product (:meth:`_second_layer`)."""
        b, _, s, _, t = x.shape
        conv1: PooledConv2d = self.cnn[0]  # type: ignore[assignment]
        p = s // 2
        with full_precision(x.device):
            steps = x.to(conv1.weight.dtype).permute(0, 4, 1, 2, 3).reshape(b * t, -1)
            rows = _pooled_relu(steps @ conv_matrix(conv1.weight, s), conv1.bias, p * p)
            return self._second_layer(rows, p).reshape(b, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> [batch, n_outputs]."""
        features = self._step_features(x)
        sequence, (h_n, _) = self.lstm(features)
        # forward: its state after the newest step; backward (bidirectional): its state after the oldest step
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else sequence[:, -1]
        with full_precision(x.device):
            fused = torch.cat([features[:, -1].float(), self.lstm_head(last.float())], dim=1)
            return self.fusion(fused)


def _step_stem(num_channels: int, width: int, dropout: float) -> nn.Sequential:
    """Per-step CNN stem for any window size >= 1: two 3x3 convolutions (same padding) and a global average
    pool, so it works for 1x1 windows as well as 9x9 ones."""
    return nn.Sequential(
        nn.Conv2d(num_channels, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, width, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
    )


class TemporalTransformer(nn.Module):
    """Per-step CNN stem -> learned step (position) encoding -> transformer encoder over the steps -> pooled
    head. The step encoding is indexed from the newest step backwards, so "the sample's own year" has the same
    code whatever the sequence length. Pooling: mean over steps concatenated with the newest step's token.
    T = 1 (static covariates) is a one-token sequence."""

    def __init__(
        self,
        num_channels: int,
        time_steps: int,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise InputError(f"models.transformer: d_model {d_model} must be a multiple of heads {heads}")
        self.stem = _step_stem(num_channels, d_model, 0.0)
        self.position = nn.Parameter(torch.zeros(1, max(time_steps, 1), d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Linear(2 * d_model, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, n_outputs)
        )
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> [batch, n_outputs]."""
        b, c, h, w, t = x.shape
        tokens = self.stem(x.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)).reshape(b, t, -1)
        encoded = self.encoder(tokens + self.position[:, -t:])
        with full_precision(x.device):
            return self.head(torch.cat([encoded.mean(dim=1), encoded[:, -1]], dim=1).float())


class Cnn3d(nn.Module):
    """A 3D CNN over (time, height, width): two 3x3x3 convolutions (same padding, so T = 1 and small windows
    work), global average pooling and a small head; sees space and time jointly rather than step by step."""

    def __init__(
        self, num_channels: int, channels: int = 32, dropout: float = 0.1, n_outputs: int = 1
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(num_channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv3d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.head = nn.Sequential(nn.Linear(2 * channels, 64), nn.ReLU(), nn.Linear(64, n_outputs))
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> [batch, n_outputs]."""
        features = self.body(x.permute(0, 1, 4, 2, 3))
        with full_precision(x.device):
            return self.head(features.float())


class CategoricalInput(nn.Module):
    """One-hot channels for categorical bands in front of a network: each categorical channel (class codes,
    which socmap's normaliser shifts by +1 so that nodata, filled with 0, matches no class) becomes one 0/1
    channel per class seen in training; the other channels pass unchanged, in order, before them."""

    keep: torch.Tensor

    def __init__(
        self, net: nn.Module, num_channels: int, channels: list[int], codes: list[list[float]]
    ) -> None:
        super().__init__()
        self.net = net
        keep = [c for c in range(num_channels) if c not in set(channels)]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long))
        self.channels = list(channels)
        for i, values in enumerate(codes):
            self.register_buffer(f"codes_{i}", torch.tensor(values, dtype=torch.float32) + 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> the wrapped network's output."""
        parts = [x.index_select(1, self.keep)]
        for i, ch in enumerate(self.channels):
            codes = getattr(self, f"codes_{i}").to(x.dtype).view(1, -1, 1, 1, 1)
            parts.append((x[:, ch : ch + 1] == codes).to(x.dtype))
        return self.net(torch.cat(parts, dim=1))


class ReliefInput(nn.Module):
    """Local-relief channels in front of a network: for each of ``channels`` (indices of the wrapped network's
    input) the pixels minus their window's mean at every step, divided by ``scales`` (the root mean square of
    that difference over the training windows), appended after the input's channels.

    Why: a topographic position index (centre minus window mean of elevation) is a small difference on top of
    a large level; the CNN's 3x3 convolution, ReLU and max-pool blur where in the window a value lies, and on
    synthetic Bavaria, whose truth has such a term, the CNN-LSTM did not learn it from elevation alone
    (docs/benchmarks.md). Trees get the same information as ``{band}_centre_minus_wmean``.
    """

    channels: torch.Tensor
    scales: torch.Tensor

    def __init__(self, net: nn.Module, channels: list[int], scales: list[float]) -> None:
        super().__init__()
        if len(channels) != len(scales) or any(s <= 0 for s in scales):
            raise InputError(f"relief channels {channels} need one positive scale each, got {scales}")
        self.net = net
        self.register_buffer("channels", torch.tensor(channels, dtype=torch.long))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> the wrapped network's output."""
        picked = x.index_select(1, self.channels)
        relief = (picked - picked.mean(dim=(2, 3), keepdim=True)) / self.scales.to(x.dtype).view(
            1, -1, 1, 1, 1
        )
        return self.net(torch.cat([x, relief], dim=1))


NETWORKS: dict[str, type[nn.Module]] = {
    "cnn_lstm": RefittedCovLSTM,
    "transformer": TemporalTransformer,
    "cnn3d": Cnn3d,
}
# Architecture options a user may set in ``models.<kind>`` (the training regime lives in ``train:``).
NETWORK_OPTIONS: dict[str, dict[str, type]] = {
    "transformer": {"d_model": int, "heads": int, "layers": int, "dropout": float},
    "cnn3d": {"channels": int, "dropout": float},
}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered network by name (``cnn_lstm``)."""
    if name not in NETWORKS:
        raise InputError(f"network {name!r}: expected one of {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](**kwargs)


def check_network_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``models.<name>`` options of a network, checked by name and type (an error lists the allowed keys)."""
    allowed = NETWORK_OPTIONS.get(name, {})
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in allowed:
            keys = ", ".join(sorted(allowed)) or "none (set cnn_lstm's in train:)"
            raise InputError(f"models.{name}.{key}: not an option of {name}; expected one of {keys}")
        kind = allowed[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and value != int(value))
        ):
            raise InputError(f"models.{name}.{key}: {value!r} is not a number of type {kind.__name__}")
        if (kind is float and not 0 <= value < 1) or (kind is int and value < 1):
            raise InputError(f"models.{name}.{key}: {value!r} is out of range")
        out[key] = kind(value)
    return out


def network_options(
    name: str,
    train: TrainConfig,
    inputs: InputSpec,
    n_outputs: int,
    options: dict[str, Any] | None = None,
    *,
    n_train: int,
) -> dict[str, Any]:
    """The JSON-serialisable keyword arguments :func:`build_network` rebuilds network ``name`` from
    (``options``: the user's ``models.<name>`` architecture options; ``n_train``: the training samples the
    CNN-LSTM's default width follows, see :func:`auto_lstm_width`)."""
    if name not in NETWORKS:
        raise InputError(f"network {name!r}: expected one of {', '.join(sorted(NETWORKS))}")
    channels = len(inputs.bands)
    extra = check_network_options(name, options or {})
    if name == "transformer":
        return {"num_channels": channels, "time_steps": inputs.time_steps, "n_outputs": n_outputs} | extra
    if name == "cnn3d":
        return {"num_channels": channels, "n_outputs": n_outputs} | extra
    return {
        "num_channels": channels,
        "lstm_input_size": train.lstm_input_size or auto_lstm_width(n_train),
        "lstm_hidden_size": train.lstm_hidden_size or auto_lstm_width(n_train),
        "num_layers": train.num_layers,
        "dropout": train.dropout,
        "window_size": inputs.window_size,
        "n_outputs": n_outputs,
        "bidirectional": train.bidirectional,
        "static_channels": list(inputs.static_channels),
    }


def auto_lstm_width(n_train: int) -> int:
    """The CNN-LSTM's default LSTM input and hidden size for a fit on ``n_train`` samples: 32 below
    ``LSTM_WIDTH_THRESHOLD`` (8,000), else the seed project's 128.

    Why: a network sized for 16,000 samples over-fits a few hundred. Measured (docs/benchmarks.md), width 32
    (44k instead of 307k parameters) scored R² +0.027 on 120-profile subsets of Edgeroi, +0.013 on all of it,
    level on Edgeroi 5-15 cm, Macedonia (3,100 training samples) and synthetic Bavaria with 7,474 (+0.003),
    and -0.001 / -0.007 on synthetic Bavaria with 15,000 training samples; so the small width below 8,000.
    """
    return SMALL_LSTM_WIDTH if n_train < LSTM_WIDTH_THRESHOLD else LARGE_LSTM_WIDTH


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters of a network."""
    return sum(p.numel() for p in model.parameters())
