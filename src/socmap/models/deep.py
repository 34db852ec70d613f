"""Deep models behind the model interface: a network + the normaliser + the target transform + its loss head.

:class:`DeepModel` fits any network of :mod:`socmap.models.networks` with :func:`~socmap.models.trainer.fit_network`
and travels as ``model.pt`` (a state dict, loaded with ``torch.load(..., weights_only=True)``: no pickled code)
plus its JSON state in ``model.json`` (architecture, loss head, normalisation, target transform), so
predictions leave on the original target scale and a checkpoint from another band set is refused by name.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from socmap._atomic import atomic_file
from socmap.config import SamplingConfig, SocmapConfig, SplitConfig, TrainConfig
from socmap.errors import InputError, OutputError
from socmap.losses import n_outputs_for, point_prediction
from socmap.models.base import (
    PREDICT_BATCH,
    FitData,
    FitInfo,
    FloatArray,
    InputSpec,
    SocModel,
    check_precision,
    read_rows,
)
from socmap.models.checks import degenerate_warning
from socmap.models.features import MAX_CATEGORIES, unseen_classes
from socmap.models.networks import (
    CategoricalInput,
    RefittedCovLSTM,
    ReliefInput,
    build_network,
    check_network_options,
    network_options,
    window_size_error,
)
from socmap.models.trainer import Tracking, fit_network, wandb_mode
from socmap.normalize import Normalizer
from socmap.split import holdout_splitter
from socmap.transforms import TargetTransform

__all__ = [
    "WEIGHTS_FILE",
    "Cnn3dModel",
    "CnnLstmModel",
    "DeepModel",
    "SeedEnsemble",
    "TransformerModel",
    "auto_seed_models",
]

WEIGHTS_FILE = "model.pt"
MEMBER_FILE = "member.pt"  # one network of a seed ensemble fitted as its own task (fit_member)
Z95 = 1.6448536269514722  # standard normal 95% quantile
MEMBER_SEED_STRIDE = 1_000_003  # member i of a fit with seed s uses seed s + i * stride
RELIEF_ROWS = 4096  # training windows the relief channels' scales are measured on (a random subset above it)
RELIEF_MIN_SCALE = 1e-6


def auto_seed_models(n_train: int) -> int:
    """Networks per deep model by default: 5 below 1,000 training samples, 3 below 4,000, else 1 (a small
    data set makes one network's result depend on its seed; averaging a few costs little there)."""
    return 5 if n_train < 1_000 else 3 if n_train < 4_000 else 1


class SeedEnsemble(torch.nn.Module):
    """Several networks of one architecture (different seeds and early-stopping splits) whose head outputs
    are averaged on the transformed scale: one module, so tracing and saving treat it as one network.

    With ``log_factors`` (a log target's mean back-transform, one factor per member from its own held-out
    rows) the members are averaged on the original scale instead: the output is the transformed value whose
    plain back-transform is ``mean_i(exp(scale * z_i) * factor_i)`` (``scale``: the transform's log sd). Each
    member's mean is then calibrated on rows it did not train on, and averaging cannot bias it; a factor fitted
    on single members but applied to their log-scale average would not match that average's smaller error.
    The factors live in ``model.json`` (not in the state dict), so older ensembles load unchanged.
    """

    log_factors: torch.Tensor | None

    def __init__(
        self,
        members: Sequence[torch.nn.Module],
        log_factors: Sequence[float] | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.scale = float(scale)
        if log_factors is None:
            self.log_factors = None
        else:
            factors = torch.tensor([float(f) for f in log_factors], dtype=torch.float32).view(-1, 1, 1)
            self.register_buffer("log_factors", factors, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the members' outputs (on the original scale when the members carry factors)."""
        outputs = torch.stack([m(x) for m in self.members])
        if self.log_factors is None:
            return outputs.mean(dim=0)
        pooled = torch.logsumexp(outputs.float() * self.scale + self.log_factors, dim=0)
        return (pooled - math.log(len(self.members))) / self.scale


def _one_hot_static(n_raw: int, cat: dict[str, Any], static: set[int]) -> list[int]:
    """Static channels among :class:`CategoricalInput`'s outputs: kept bands in order, then each categorical
    band's one-hot channels (static when the band is)."""
    categorical = set(cat["channels"])
    keep = [c for c in range(n_raw) if c not in categorical]
    out = [i for i, c in enumerate(keep) if c in static]
    start = len(keep)
    for channel, codes in zip(cat["channels"], cat["codes"], strict=True):
        if channel in static:
            out += range(start, start + len(codes))
        start += len(codes)
    return out


def _build_one(spec: dict[str, Any]) -> torch.nn.Module:
    """One network of a spec, behind local-relief channels (:class:`ReliefInput`) and one-hot channels
    (:class:`CategoricalInput`) when the spec has them: raw bands -> one-hot -> relief appended -> network."""
    cat, relief = spec.get("categorical"), spec.get("relief")
    kwargs = dict(spec["kwargs"])
    n_raw = int(kwargs["num_channels"])
    static = set(kwargs.get("static_channels", []))
    categorical = set(cat["channels"]) if cat else set()
    if cat:
        kwargs["num_channels"] = n_raw - len(categorical) + sum(len(c) for c in cat["codes"])
        # raw channel indices -> the one-hot network's (kept bands, then classes)
        if "static_channels" in kwargs:
            kwargs["static_channels"] = _one_hot_static(n_raw, cat, static)
    if relief:  # a raw band's place among the kept bands (one-hot classes follow them), relief channels last
        kept = [c for c in range(n_raw) if c not in categorical]
        width = int(kwargs["num_channels"])
        kwargs["num_channels"] = width + len(relief["channels"])
        if "static_channels" in kwargs:
            extra = [width + i for i, c in enumerate(relief["channels"]) if c in static]
            kwargs["static_channels"] = [*kwargs["static_channels"], *extra]
    net = build_network(spec["name"], **kwargs)
    if relief:
        positions = [kept.index(int(c)) for c in relief["channels"]]
        net = ReliefInput(net, positions, [float(v) for v in relief["scales"]])
    if cat:
        net = CategoricalInput(net, n_raw, list(cat["channels"]), [list(c) for c in cat["codes"]])
    return net


def _build(spec: dict[str, Any]) -> torch.nn.Module:
    """The network (or seed ensemble) a ``model.json`` ``model`` entry describes."""
    count = int(spec.get("members", 1))
    nets = [_build_one(spec) for _ in range(count)]
    if count == 1:
        return nets[0]
    return SeedEnsemble(nets, spec.get("log_factors"), float(spec.get("log_scale", 1.0)))


def _class_codes(
    windows: NDArray[np.float32], rows: NDArray[np.int64], channel: int, name: str
) -> list[float]:
    """The class codes of a categorical channel anywhere in the training windows (at most MAX_CATEGORIES)."""
    values = np.asarray(read_rows(windows, rows)[:, channel], np.float64)
    codes = sorted({float(v) for v in np.unique(values[np.isfinite(values)])})
    if len(codes) > MAX_CATEGORIES:
        raise InputError(
            f"categorical band {name}: {len(codes)} distinct values in training, expected at most "
            f"{MAX_CATEGORIES} class codes (remove it from covariates.categorical?)"
        )
    return codes


class DeepModel(SocModel):
    """A network on normalised windows; the head is a point, Gaussian (mean, log variance) or quantile head."""

    network: ClassVar[str] = "cnn_lstm"

    def __init__(
        self,
        train: TrainConfig | None = None,
        sampling: SamplingConfig | None = None,
        tracking: Tracking | None = None,
        split: SplitConfig | None = None,
    ) -> None:
        self.train_cfg = train or TrainConfig()
        self.sampling = sampling or SamplingConfig()
        self.split_cfg = split or SplitConfig()
        self.tracking = tracking or Tracking()
        self.options: dict[str, Any] = {}
        self.init_from: Path | None = None
        self.nodata_unseen = False  # mapping copies: windows of an unseen class predict nodata
        self.precision = "fp32"  # inference: fp32, or bf16 autocast (with_precision)
        self.loss_type = self.train_cfg.loss_type
        self.quantiles = tuple(self.train_cfg.quantiles)
        self.net: torch.nn.Module | None = None
        self.net_spec: dict[str, Any] = {}
        self.normalizer: Normalizer | None = None
        self.transform = TargetTransform(self.train_cfg.target_transform)
        self.best_epoch, self.seed = -1, 0

    @classmethod
    def from_config(cls, config: SocmapConfig) -> DeepModel:
        """The factory the registry calls: ``train`` and ``sampling`` sections, W&B settings."""
        tracking = Tracking(
            wandb_mode(config.train.wandb_mode),
            config.train.wandb_project,
            config.name,
            config.model_dump(mode="json", exclude={"base_dir"}),
        )
        if cls.network == "cnn_lstm" and config.windows.size < RefittedCovLSTM.MIN_WINDOW:
            raise InputError(window_size_error(config.windows.size))  # before any fit (cv creates every kind)
        model = cls(config.train, config.sampling, tracking, config.split)
        model.options = check_network_options(cls.network, dict(config.models.get(cls.kind, {})))
        if config.train.init_from is not None:
            model.init_from = config.resolve(config.train.init_from)
        return model

    # ------------------------------------------------------------------ fit
    def early_stopping_rows(self, data: FitData) -> FitData:
        """``data`` with monitoring rows: the given ones, else (``train.use_validation``) an inner hold-out of
        about ``split.val_ratio`` of the training rows with ``split.method`` (``buffered`` -> ``distance-split``;
        see :func:`socmap.split.holdout_splitter`), never any other row."""
        if data.monitor.size or not self.train_cfg.use_validation:
            return data
        if data.coords is None:
            raise InputError("early stopping needs sample coordinates (FitData.coords) for its inner split")
        method = "distance-split" if self.split_cfg.method == "buffered" else self.split_cfg.method
        splitter = holdout_splitter(self.split_cfg, data.seed, method)
        try:
            inner_train, inner_val = next(iter(splitter.split(data.coords[data.train])))
        except InputError as exc:
            raise InputError(f"early stopping: split.method {method} of the training rows: {exc}") from None
        if len(inner_val) < 5 or len(inner_train) < 10:
            raise InputError(
                f"early stopping: split {method} of {data.train.size} training samples gave {len(inner_train)} "
                f"training and {len(inner_val)} early-stopping samples: too few; use more samples, a larger "
                "split.val_ratio, or train.use_validation: false"
            )
        out = dataclasses.replace(data)
        out.train, out.monitor = data.train[inner_train], data.train[inner_val]
        return out

    def _source(self, inputs: InputSpec) -> DeepModel | None:
        """The model ``train.init_from`` names (same kind and bands), or None."""
        if self.init_from is None:
            return None
        from socmap.models.registry import load_model

        source = load_model(self.init_from, list(inputs.bands))
        if not isinstance(source, DeepModel) or source.kind != self.kind:
            raise InputError(
                f"train.init_from {self.init_from}: holds a {source.kind!r} model; fine-tuning needs a {self.kind!r} "
                "model trained on the same bands"
            )
        source.require_inputs().check_windows((0, *inputs.window_shape), f"train.init_from {self.init_from}")
        return source

    def _start(self, data: FitData, source: DeepModel | None) -> FitData:
        """Member 0's rows; normaliser, target transform and network spec from them (or from ``source``)."""
        first = self.early_stopping_rows(data)
        if source is not None:
            assert source.normalizer is not None
            self.normalizer, self.transform = (
                source.normalizer,
                TargetTransform.from_dict(source.transform.to_dict()),
            )
            self.transform.params.pop("smearing", None)
            ensemble_keys = ("members", "log_factors", "log_scale")  # of the source's fit, not of this one
            self.net_spec = {k: v for k, v in source.net_spec.items() if k not in ensemble_keys}
            return first
        self.normalizer = Normalizer.fit(
            data.windows, first.train, list(data.inputs.bands), list(data.inputs.static_bands)
        )
        self.transform = TargetTransform(self.train_cfg.target_transform).fit(data.target[first.train])
        kwargs = network_options(
            self.network,
            self.train_cfg,
            data.inputs,
            n_outputs_for(self.loss_type, self.quantiles),
            self.options,
            n_train=int(data.train.size),
        )
        self.net_spec = {"name": self.network, "kwargs": kwargs}
        channels = list(data.inputs.categorical_channels)
        if channels:  # class codes pass the normaliser shifted by +1 (nodata -> 0 matches no class)
            self.normalizer.mean[channels], self.normalizer.std[channels] = -1.0, 1.0
            names = data.inputs.bands
            codes = [_class_codes(data.windows, first.train, ch, names[ch]) for ch in channels]
            self.net_spec["categorical"] = {"num_channels": len(names), "channels": channels, "codes": codes}
        if self.train_cfg.relief_bands:
            self.net_spec["relief"] = self._relief(data, first.train)
        return first

    def _relief(self, data: FitData, rows: NDArray[np.int64]) -> dict[str, Any]:
        """``train.relief_bands`` as channels, each with the root mean square of its pixels' difference from
        their window's mean over (at most ``RELIEF_ROWS`` of) the training windows, normalised."""
        assert self.normalizer is not None
        names = list(data.inputs.bands)
        channels: list[int] = []
        for band in dict.fromkeys(self.train_cfg.relief_bands):
            if band not in names:
                raise InputError(
                    f"train.relief_bands: {band!r} is not a band of the data; expected among {', '.join(names)}"
                )
            if names.index(band) in data.inputs.categorical_channels:
                raise InputError(
                    f"train.relief_bands: {band} is a categorical band (covariates.categorical); relief needs "
                    "numbers"
                )
            channels.append(names.index(band))
        if rows.size > RELIEF_ROWS:
            rows = np.sort(np.random.default_rng(data.seed).choice(rows, RELIEF_ROWS, replace=False))
        windows = self.normalizer.transform(read_rows(data.windows, rows))[:, channels].astype(np.float64)
        rms = np.sqrt(np.mean((windows - windows.mean(axis=(2, 3), keepdims=True)) ** 2, axis=(0, 2, 3, 4)))
        scales = [float(v) if v > RELIEF_MIN_SCALE else 1.0 for v in rms]  # no relief (flat band): unscaled
        return {"bands": [names[c] for c in channels], "channels": channels, "scales": scales}

    def _fit_member(self, member: FitData, source: DeepModel | None) -> tuple[torch.nn.Module, FitInfo]:
        """One network on one member's rows, from the source's weights when fine-tuning."""
        assert self.normalizer is not None
        torch.manual_seed(member.seed)
        net = _build_one(self.net_spec)
        if source is not None and source.net is not None:
            weights = source.net.state_dict()
            if isinstance(source.net, SeedEnsemble):
                weights = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith("members.0.")}
            net.load_state_dict(weights)
        tracking = dataclasses.replace(
            self.tracking,
            name=f"{self.tracking.name}-seed{member.seed}",
            config={"seed": member.seed, **self.tracking.config},
        )
        return fit_network(
            net, member, self.normalizer, self.transform, self.train_cfg, self.sampling, tracking
        )

    def member_count(self, n_train: int) -> int:
        """Networks of a fit on ``n_train`` training rows: ``train.seed_models``, else by size (see
        :func:`auto_seed_models`)."""
        return self.train_cfg.seed_models or auto_seed_models(n_train)

    def _members(self, data: FitData) -> tuple[DeepModel | None, list[FitData]]:
        """The fine-tuning source and every member's rows, seed and work folder; sets the normaliser, target
        transform and network spec (from member 0's training rows): the same in any process, so members can
        be fitted apart (:meth:`fit_member`) and joined (:meth:`fit_from_members`)."""
        self.inputs, self.seed = data.inputs, data.seed
        source = self._source(data.inputs)
        first = self._start(data, source)
        count = self.member_count(int(data.train.size))
        members = []
        for i in range(count):
            workdir = data.workdir if count == 1 or data.workdir is None else data.workdir / f"seed_{i}"
            member = (
                first
                if i == 0
                else self.early_stopping_rows(
                    dataclasses.replace(data, seed=data.seed + i * MEMBER_SEED_STRIDE, workdir=workdir)
                )
            )
            members.append(dataclasses.replace(member, workdir=workdir))
        return source, members

    def fit(self, data: FitData) -> FitInfo:
        """A seed ensemble of ``train.seed_models`` networks (default by training size, see
        :func:`auto_seed_models`), each early-stopping on its own inner split of the training rows (see
        :meth:`early_stopping_rows`) so that together they learn from every training row; normaliser and target
        transform from member 0's training rows; the log transform's smearing factor and the degenerate-model
        check from each member's early-stopping rows (rows it did not fit on)."""
        source, members = self._members(data)
        fitted = [self._fit_member(member, source) for member in members]
        return self._join(data, members, fitted)

    def fit_member(self, data: FitData, index: int) -> Path:
        """Fit network ``index`` of the seed ensemble :meth:`fit` would fit on ``data`` and write it (weights
        and fit report, loadable with ``weights_only=True``) into its work folder ``data.workdir/seed_<index>``;
        returns that file. The networks of one fit are independent: cv runs them as separate tasks."""
        source, members = self._members(data)
        member = members[index]
        if data.workdir is None or member.workdir is None or member.workdir == data.workdir:
            raise ValueError("fit_member needs data.workdir and a seed ensemble of at least two networks")
        member.workdir.mkdir(parents=True, exist_ok=True)
        net, info = self._fit_member(member, source)
        record = {
            "weights": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "info": dataclasses.asdict(info),
        }
        path = member.workdir / MEMBER_FILE
        with atomic_file(path, f"network {index} of a seed ensemble") as tmp:
            torch.save(record, tmp)
        return path

    def fit_from_members(self, data: FitData) -> FitInfo:
        """The fit of :meth:`fit`, from the networks :meth:`fit_member` wrote for every index (the same
        numbers as :meth:`fit` when each network was fitted with the same torch thread count)."""
        _, members = self._members(data)
        fitted = []
        for i, member in enumerate(members):
            assert member.workdir is not None
            path = member.workdir / MEMBER_FILE
            try:
                record = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
                raise OutputError(
                    f"network {i} of a {self.kind} seed ensemble: {path} is missing or unreadable "
                    f"({type(exc).__name__}); every worker must see the same cv folder"
                ) from None
            net = _build_one(self.net_spec)
            net.load_state_dict(record["weights"])
            fitted.append((net, FitInfo(**record["info"])))
        return self._join(data, members, fitted)

    def _join(
        self, data: FitData, members: list[FitData], fitted: list[tuple[torch.nn.Module, FitInfo]]
    ) -> FitInfo:
        """The seed ensemble of the fitted networks; smearing and warnings from their early-stopping rows."""
        count = len(members)
        z_true, z_pred = [], []
        for i, (member, (net, info)) in enumerate(zip(members, fitted, strict=True)):
            if member.monitor.size:
                self.net = net
                out = self.raw_output(read_rows(data.windows, member.monitor))
                z_true.append(self.transform.forward(data.target[member.monitor]))
                z_pred.append(point_prediction(out, self.loss_type, self.quantiles).double().numpy())
                label = (
                    f"its early-stopping rows (network {i + 1} of {count})"
                    if count > 1
                    else "its early-stopping rows"
                )
                warning = degenerate_warning(data.target[member.monitor], self._point(out), label)
                info.warnings.extend([warning] if warning else [])
        nets = [net for net, _ in fitted]
        self.net = nets[0] if count == 1 else SeedEnsemble(nets)
        self.net_spec = {**self.net_spec, "members": count}
        if z_true and self.train_cfg.back_transform == "mean" and self.loss_type != "gaussian_nll":
            self._fit_mean_factors(nets, z_true, z_pred)
        if data.workdir is not None:  # a finished fit's checkpoint would make a later fit here resume from it
            for member in members:
                assert member.workdir is not None
                (member.workdir / "checkpoint.pt").unlink(missing_ok=True)
                if count > 1:
                    (member.workdir / MEMBER_FILE).unlink(missing_ok=True)
        return self._combined([info for _, info in fitted])

    def _fit_mean_factors(
        self, nets: list[torch.nn.Module], z_true: list[FloatArray], z_pred: list[FloatArray]
    ) -> None:
        """A log target's mean back-transform: one factor per network from its own early-stopping rows, the
        networks averaged on the original scale (:class:`SeedEnsemble`); one pooled factor for one network, a
        head with several outputs, or when a network has no early-stopping rows."""
        if self.transform.name != "log":
            return
        if len(nets) > 1 and len(z_true) == len(nets) and self.n_outputs == 1:
            logs = [
                math.log(self.transform.smearing_factor(t, p)) for t, p in zip(z_true, z_pred, strict=True)
            ]
            scale = self.transform.log_scale
            self.net = SeedEnsemble(nets, logs, scale)
            self.net_spec = {**self.net_spec, "log_factors": logs, "log_scale": scale}
            self.transform.params["smearing"] = 1.0
            return
        self.transform.fit_smearing(np.concatenate(z_true), np.concatenate(z_pred))

    def _combined(self, infos: list[FitInfo]) -> FitInfo:
        """Member 0's history and epochs (the run's early-stopping score), every member's warnings."""
        info = infos[0]
        self.best_epoch = info.best_epoch
        info.parameters = int(sum(p.numel() for p in self.net.parameters())) if self.net is not None else 0
        info.warnings = [w for part in infos for w in part.warnings]
        kwargs = self.net_spec.get("kwargs", {})
        if "lstm_hidden_size" in kwargs:  # the CNN-LSTM's width, resolved from the training size by default
            widths = {k: kwargs[k] for k in ("lstm_input_size", "lstm_hidden_size")}
            info.schedule = {**info.schedule, **widths}
        if len(infos) > 1:
            info.schedule = {**info.schedule, "seed_models": len(infos)}
            info.epochs_trained = max(part.epochs_trained for part in infos)
        return info

    # ------------------------------------------------------------------ predict
    def _ready(self) -> tuple[torch.nn.Module, Normalizer]:
        if self.net is None or self.normalizer is None:
            raise InputError(f"model {self.kind!r}: call fit before predict")
        return self.net, self.normalizer

    def raw_output(
        self, windows: NDArray[np.float32] | torch.Tensor, batch_size: int = PREDICT_BATCH
    ) -> torch.Tensor:
        """Head outputs on the transformed scale, [N, K], in evaluation mode (no dropout)."""
        net, normalizer = self._ready()
        net.eval()
        outputs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(windows), batch_size):
                chunk = torch.as_tensor(np.array(windows[start : start + batch_size], dtype=np.float32))
                out = net(normalizer.transform_torch(chunk)).float()
                unseen = self._unseen_classes(chunk)
                if self.nodata_unseen and unseen is not None:
                    out[torch.from_numpy(unseen)] = float("nan")
                outputs.append(out)
        return torch.cat(outputs) if outputs else torch.empty((0, self.n_outputs))

    def _autocast(self) -> torch.autocast:
        """bf16 autocast on CPU when ``precision`` is bf16 (matmuls and convolutions in bfloat16, reductions
        and the output in float32), else a disabled one (exact fp32)."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def with_precision(self, precision: str) -> SocModel:
        """A copy whose network runs in ``precision`` (``bf16``: ``torch.autocast`` on CPU, opt-in: faster on
        CPUs with bf16 instructions, predictions change by a small fraction of the model's error; ``fp32``:
        exact). Training is unaffected."""
        copy = self._shallow_copy()
        copy.precision = check_precision(precision)
        return copy

    def _unseen_classes(self, chunk: torch.Tensor) -> NDArray[np.bool_] | None:
        """Windows whose centre holds a class code of a categorical band not seen in training (warned with the
        band, codes and count); None without categorical bands or unseen codes."""
        cat = self.net_spec.get("categorical")
        if not cat or chunk.shape[0] == 0:
            return None
        _, _, h, w, t = chunk.shape
        out = np.zeros(chunk.shape[0], bool)
        names = self.require_inputs().bands
        action = "mapped as nodata" if self.nodata_unseen else "no class channel set"
        for ch, codes in zip(cat["channels"], cat["codes"], strict=True):
            centre = chunk[:, ch, h // 2, w // 2, t - 1].double().numpy()
            out |= unseen_classes(centre, codes, names[ch], action)
        return out if out.any() else None

    @property
    def n_outputs(self) -> int:
        return n_outputs_for(self.loss_type, self.quantiles)

    def _point(self, out: torch.Tensor) -> FloatArray:
        """Point predictions on the original scale: the mean (``train.back_transform: mean``; for a log target
        the lognormal correction of a Gaussian head, else the fitted factor) or the back-transformed value."""
        z = point_prediction(out, self.loss_type, self.quantiles).double().numpy()
        if self.transform.name != "log" or self.train_cfg.back_transform == "median":
            return self.transform.inverse(z)
        log_variance = out[:, 1].double().clamp(-10, 10).numpy() if self.loss_type == "gaussian_nll" else None
        return self.transform.inverse_mean(z, log_variance)

    def predict(self, windows: NDArray[np.float32], batch_size: int = PREDICT_BATCH) -> FloatArray:
        """Point predictions on the original scale (mean, or the median of a quantile head)."""
        return self._point(self.raw_output(windows, batch_size))

    def gives_quantiles(self, levels: Sequence[float]) -> bool:
        if self.loss_type == "gaussian_nll":
            return all(0.0 < q < 1.0 for q in levels)
        available = {round(q, 6) for q in self.quantiles}
        return self.loss_type == "quantile" and all(round(q, 6) in available for q in levels)

    def _quantiles(self, out: torch.Tensor, levels: Sequence[float]) -> FloatArray:
        """Quantiles of a Gaussian or quantile head (monotone inverse transforms map quantiles exactly)."""
        from scipy.stats import norm

        out = out.double()
        if self.loss_type == "gaussian_nll":
            mean, sd = out[:, 0].numpy(), np.exp(0.5 * out[:, 1].clamp(-10, 10).numpy())
            z = np.column_stack([mean + float(norm.ppf(q)) * sd for q in levels])
        else:
            values = out.sort(dim=1).values.numpy()
            order = sorted(round(q, 6) for q in self.quantiles)
            z = values[:, [order.index(round(q, 6)) for q in levels]]
        return np.sort(self.transform.inverse(z), axis=1)

    def predict_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> FloatArray | None:
        if not self.gives_quantiles(levels):
            return None
        return self._quantiles(self.raw_output(windows, batch_size), levels)

    def predict_with_quantiles(
        self, windows: NDArray[np.float32], levels: Sequence[float], batch_size: int = PREDICT_BATCH
    ) -> tuple[FloatArray, FloatArray | None]:
        """One forward pass for both."""
        out = self.raw_output(windows, batch_size)
        return self._point(out), (self._quantiles(out, levels) if self.gives_quantiles(levels) else None)

    def for_inference(self) -> SocModel:
        """The network traced, frozen and optimised for CPU inference (fused conv + ReLU, oneDNN layouts):
        about 1.6x faster on one thread. Kept only if it reproduces the eager network on a probe batch
        (rtol 1e-5), else the eager network is used. Windows of a categorical class unseen in training predict
        nodata in the copy. With bf16 (:meth:`with_precision`) the network stays eager: a graph traced under
        autocast does not run (it records the bf16 matmuls without their casts) and the frozen fp32 graph's
        oneDNN LSTM refuses autocast's bf16 inputs."""
        net, _ = self._ready()
        if self.precision != "fp32":
            copy = self._shallow_copy()
            copy.nodata_unseen = True
            copy.net = net.eval()
            return copy
        c, h, w, t = self.require_inputs().window_shape
        probe = torch.randn(64, c, h, w, t, generator=torch.Generator().manual_seed(0))
        cat = self.net_spec.get("categorical")
        for ch, codes in zip(cat["channels"], cat["codes"], strict=True) if cat else ():
            pick = torch.randint(
                0, len(codes), probe[:, ch].shape, generator=torch.Generator().manual_seed(1)
            )
            probe[:, ch] = torch.tensor(codes, dtype=torch.float32)[pick] + 1.0  # normalised class codes
        net = net.eval()
        fast: torch.nn.Module
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and TorchScript notices
                fast = torch.jit.optimize_for_inference(
                    torch.jit.freeze(torch.jit.trace(net, probe, check_trace=False))
                )
                same = torch.allclose(fast(probe[:37]), net(probe[:37]), rtol=1e-5, atol=1e-6)
        except Exception:  # a network TorchScript cannot trace: stay eager
            fast, same = net, True
        copy = self._shallow_copy()
        copy.nodata_unseen = True  # a map makes windows of a class unseen in training nodata
        copy.net = fast if same else net
        return copy

    def _shallow_copy(self) -> DeepModel:
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        return copy

    def describe(self) -> str:
        return f"{self.kind} ({self.loss_type} loss, {self.transform.name} target)"

    # ------------------------------------------------------------------ persistence
    def state(self, folder: Path) -> dict[str, Any]:
        net, normalizer = self._ready()
        weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        with atomic_file(folder / WEIGHTS_FILE, "model weights") as tmp:
            torch.save(weights, tmp)
        return {
            "model": self.net_spec,
            "loss_type": self.loss_type,
            "quantiles": list(self.quantiles),
            "normalizer": normalizer.to_dict(),
            "target_transform": self.transform.to_dict(),
            "back_transform": self.train_cfg.back_transform,
            "best_epoch": self.best_epoch,
            "seed": self.seed,
            "parameters": int(sum(p.numel() for p in net.parameters())),
        }

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any], inputs: InputSpec) -> SocModel:
        weights_path = folder / WEIGHTS_FILE
        if not weights_path.is_file():
            raise InputError(f"model folder {folder}: {WEIGHTS_FILE} is missing (is it a socmap run folder?)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                weights = torch.load(weights_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise InputError(
                f"model file {weights_path} holds more than weights (e.g. pickled code) and was refused "
                "(weights_only=True); load only model files written by socmap"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise InputError(
                f"model file {weights_path} is truncated or corrupt: {str(exc).splitlines()[0]}"
            ) from None
        model = cls(
            TrainConfig(
                loss_type=state["loss_type"],
                quantiles=list(state.get("quantiles", [0.05, 0.5, 0.95])),
                back_transform=state.get("back_transform", "median"),
            )
        )
        model.net_spec = dict(state["model"])
        net = _build(model.net_spec)
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:
            raise InputError(
                f"model file {weights_path} does not fit model.json: {str(exc).splitlines()[0]}"
            ) from None
        model.net = net.eval()
        model.normalizer = Normalizer.from_dict(state["normalizer"])
        model.transform = TargetTransform.from_dict(state["target_transform"])
        model.best_epoch, model.seed = int(state.get("best_epoch", -1)), int(state.get("seed", 0))
        model.inputs = inputs
        return model


class CnnLstmModel(DeepModel):
    """The seed project's CNN-LSTM (``RefittedCovLSTM``; ``train.bidirectional`` for a bidirectional LSTM)."""

    kind: ClassVar[str] = "cnn_lstm"  # also set by the registry (socmap.models.zoo)

    network: ClassVar[str] = "cnn_lstm"


class TransformerModel(DeepModel):
    """A temporal transformer over per-step CNN features (:class:`~socmap.models.networks.TemporalTransformer`)."""

    kind: ClassVar[str] = "transformer"  # also set by the registry (socmap.models.zoo)

    network: ClassVar[str] = "transformer"


class Cnn3dModel(DeepModel):
    """A 3D CNN over time, height and width (:class:`~socmap.models.networks.Cnn3d`)."""

    kind: ClassVar[str] = "cnn3d"  # also set by the registry (socmap.models.zoo)

    network: ClassVar[str] = "cnn3d"
