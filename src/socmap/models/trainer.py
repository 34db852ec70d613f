"""The deep models' training loop, in small parts: tensors, build, checkpoint, epoch, monitor, tracking.

:func:`fit_network` trains one network with Accelerate (plain ``python`` on a CPU, ``accelerate launch`` on
GPUs), early stopping on the monitoring rows with a restore of the best epoch's weights (a real copy), a
checkpoint after an epoch every ``train.checkpoint_seconds`` (``workdir/checkpoint.pt``, ``weights_only``
loadable) so an interrupted fit resumes (replaying the epochs after it) to the same weights, and local + W&B
(offline by default) tracking. The parts mirror torchgeo's trainer hooks:
:func:`build_tensors`, :func:`build_optimisation`, :func:`build_sampler`, :class:`Checkpoint`,
:func:`train_epoch`, :func:`evaluate_loss`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from numpy.typing import NDArray
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from socmap._atomic import atomic_file
from socmap.config import SamplingConfig, TrainConfig
from socmap.errors import InputError
from socmap.losses import SocLoss, point_prediction
from socmap.metrics import regression_metrics
from socmap.models.base import FitData, FitInfo, IntArray, read_rows
from socmap.models.schedule import Schedule, resolve_schedule
from socmap.normalize import Normalizer
from socmap.sampling import BalancedSampler
from socmap.transforms import TargetTransform

__all__ = [
    "BatchTensors",
    "Checkpoint",
    "EpochSampler",
    "Tracking",
    "fit_network",
    "plain_steps",
    "wandb_mode",
]

EVAL_BATCH = 4096
CHECKPOINT = "checkpoint.pt"


class EpochSampler(Sampler[int]):
    """A random permutation per epoch, seeded by (seed, epoch): resuming at any epoch gives the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class Tracking:
    """Where a fit is tracked: W&B mode (online/offline/disabled), project, run name and logged config."""

    mode: str = "disabled"
    project: str = "socmap"
    name: str = "socmap"
    config: dict[str, Any] = field(default_factory=dict)


def wandb_mode(configured: str | None) -> str:
    """The configured W&B mode, else ``$WANDB_MODE``, else offline (never online unless asked)."""
    mode = configured or os.environ.get("WANDB_MODE", "offline")
    if mode not in {"online", "offline", "disabled", "dryrun"}:
        raise InputError(f"wandb mode {mode!r}: expected online, offline or disabled")
    return "offline" if mode == "dryrun" else mode


class _Tracker:
    """Weights & Biases run (offline by default, never online unless asked); a no-op when disabled."""

    def __init__(self, tracking: Tracking, folder: Path | None) -> None:
        self.run: Any = None
        if tracking.mode == "disabled" or folder is None:
            return
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=tracking.project,
            settings=wandb.Settings(silent=True),
            mode=tracking.mode,  # type: ignore[arg-type]
            dir=str(folder),
            name=tracking.name,
            config=tracking.config,
            reinit="create_new",
        )

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


# ---------------------------------------------------------------------------------------------- build
@dataclass
class TensorSet:
    """Normalised windows, transformed targets and (composite losses) per-sample sigma of a set of rows."""

    x: torch.Tensor
    y: torch.Tensor
    sigma: torch.Tensor | None


def build_tensors(
    data: FitData, rows: IntArray, normalizer: Normalizer, transform: TargetTransform, tcfg: TrainConfig
) -> TensorSet:
    """Tensors of ``rows`` (in that order): windows normalised, targets transformed, sigma on that scale."""
    x = torch.from_numpy(normalizer.transform(read_rows(data.windows, rows)))
    y_raw = data.target[rows]
    y = torch.from_numpy(transform.forward(y_raw).astype(np.float32))
    sigma = None
    if tcfg.loss_type.startswith("composite"):
        raw = np.full(rows.size, tcfg.loss_sigma)
        if data.sigma is not None:
            given = np.asarray(data.sigma, np.float64)[rows]
            raw = np.where(np.isfinite(given) & (given > 0), given, tcfg.loss_sigma)
        sigma = torch.from_numpy(transform.scale_sigma(raw, y_raw).astype(np.float32))
    return TensorSet(x, y, sigma)


def build_optimisation(
    model: torch.nn.Module, tcfg: TrainConfig, schedule: Schedule
) -> tuple[torch.optim.Optimizer, Any]:
    """Adam (with weight decay) and the configured learning-rate schedule (or None).

    Adam is torch's fused implementation (one kernel per parameter instead of a dozen element-wise ops): the
    same update up to float rounding, and 1.2x faster steps for the small networks of small data sets, whose
    steps are mostly per-op overhead (docs/benchmarks.md)."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=schedule.lr, weight_decay=tcfg.weight_decay, fused=True
    )
    scheduler: Any = None
    if tcfg.lr_schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, schedule.patience // 3)
        )
    elif tcfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule.epochs)
    return optimizer, scheduler


def augment_batch(xb: torch.Tensor, tcfg: TrainConfig) -> torch.Tensor:
    """A random symmetry of the square on the windows of a batch (``train.augment: dihedral``) and Gaussian
    noise on the normalised inputs (``train.input_noise``); draws from torch's seeded generator."""
    if tcfg.augment == "dihedral":
        k = int(torch.randint(0, 8, (1,)))
        if k >= 4:
            xb = xb.flip(3)
        xb = torch.rot90(xb, k % 4, dims=(2, 3))
    if tcfg.input_noise > 0:
        xb = xb + tcfg.input_noise * torch.randn_like(xb)
    return xb


def build_sampler(
    target: NDArray[np.float64], sampling: SamplingConfig, seed: int
) -> EpochSampler | BalancedSampler:
    """Balanced up-sampling of rare targets (``sampling.balanced``) or a seeded permutation per epoch."""
    if sampling.balanced:
        return BalancedSampler(
            target,
            n_bins=sampling.n_bins,
            min_fraction=sampling.min_fraction,
            binning=sampling.binning,
            seed=seed,
        )
    return EpochSampler(len(target), seed)


class BatchTensors(TensorDataset):
    """A ``TensorDataset`` that hands the loader a whole batch at once (``__getitems__``): one indexed copy per
    tensor instead of a tensor per sample stacked by the collate function. The batches are the same values in
    the same order (tests/test_training_steps.py); the per-sample path took 6 % of a 16-sample-batch fit."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return tuple(tensor[rows] for tensor in self.tensors)


def batch_as_is(batch: Any) -> Any:
    """The loader's collate function for :class:`BatchTensors`: its batch is already collated."""
    return batch


# ---------------------------------------------------------------------------------------------- state
@dataclass
class LoopState:
    """Everything the loop carries from epoch to epoch (and the checkpoint restores)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    next_epoch: int = 0


class Checkpoint:
    """``checkpoint.pt`` after an epoch (every ``train.checkpoint_seconds``): weights, optimiser, schedule, loop
    state and the torch RNG, so a resumed fit replays the later epochs exactly."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / CHECKPOINT if folder is not None else None

    def load(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, average: AveragedModel | None = None
    ) -> LoopState:
        """The saved loop state (weights etc. restored into the given objects), or a fresh one."""
        if self.path is None or not self.path.is_file():
            return LoopState()
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                f"checkpoint {self.path} is corrupt ({type(exc).__name__}); delete it to restart"
            ) from None
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if average is not None and ckpt.get("average") is not None:
            average.load_state_dict(ckpt["average"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = [dict(zip(ckpt["history_keys"], row, strict=True)) for row in ckpt["history"].tolist()]
        return LoopState(
            history,
            ckpt["best_state"],
            float(ckpt["best_loss"]),
            int(ckpt["best_epoch"]),
            int(ckpt["bad_epochs"]),
            int(ckpt["epoch"]) + 1,
        )

    def save(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        state: LoopState,
        average: AveragedModel | None = None,
    ) -> None:
        """Write the checkpoint atomically (a killed process leaves the previous one)."""
        if self.path is None:
            return
        keys = list(state.history[0])
        payload = {
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "average": average.state_dict() if average is not None else None,
            "best_state": state.best_state,
            "best_loss": state.best_loss,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "epoch": state.next_epoch - 1,
            "history_keys": keys,
            "history": torch.tensor(
                [[r.get(k, float("nan")) for k in keys] for r in state.history], dtype=torch.float64
            ),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_file(self.path, "training checkpoint") as tmp:
            torch.save(payload, tmp)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- epochs
def evaluate_loss(
    model: torch.nn.Module, loss_fn: SocLoss, tensors: TensorSet, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Mean loss and raw outputs over a whole tensor set, in eval mode."""
    model.eval()
    outputs, total = [], 0.0
    x, y, sigma = tensors.x, tensors.y, tensors.sigma
    with torch.inference_mode():
        for start in range(0, len(x), EVAL_BATCH):
            xb = x[start : start + EVAL_BATCH].to(device)
            yb = y[start : start + EVAL_BATCH].to(device)
            sb = sigma[start : start + EVAL_BATCH].to(device) if sigma is not None else None
            out = model(xb)
            total += float(loss_fn(out, yb, sb)) * len(xb)
            outputs.append(out.float().cpu())
    return total / max(len(x), 1), torch.cat(outputs)


def plain_steps(accelerator: Accelerator) -> bool:
    """Whether a training step may call torch directly (``loss.backward()``, ``clip_grad_norm_``, the optimiser's
    own ``step``) instead of Accelerate's wrappers: one process, no gradient scaler, no accumulation, where the
    wrappers do exactly these calls. Why: their per-step checks (Accelerate 1.15 looks up an optional package
    on disk twice per optimiser step) took 17 % of a small network's fit (profiled, one thread)."""
    return (
        accelerator.distributed_type == DistributedType.NO
        and accelerator.scaler is None
        and accelerator.gradient_accumulation_steps == 1
    )


def train_epoch(
    model: torch.nn.Module,
    loader: Any,
    optimizer: Any,
    loss_fn: SocLoss,
    accelerator: Accelerator,
    tcfg: TrainConfig,
    use_sigma: bool,
    average: AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over the loader (updating the weight average after every step, if any); returns train_loss,
    seconds, data_seconds and samples."""
    model.train()
    started = time.perf_counter()
    data_time, total, count = 0.0, 0.0, 0
    direct = plain_steps(accelerator)
    step = getattr(optimizer, "optimizer", optimizer).step if direct else optimizer.step
    parameters = list(model.parameters())
    fetch_start = time.perf_counter()
    for xb, yb, sb in loader:
        data_time += time.perf_counter() - fetch_start
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(augment_batch(xb, tcfg)), yb, sb if use_sigma else None)
        if direct:
            loss.backward()
        else:
            accelerator.backward(loss)
        if tcfg.grad_clip > 0:
            clip = torch.nn.utils.clip_grad_norm_ if direct else accelerator.clip_grad_norm_
            clip(parameters, tcfg.grad_clip)
        step()
        if average is not None:
            average.update_parameters(accelerator.unwrap_model(model))
        total += float(loss.detach()) * len(xb)
        count += len(xb)
        fetch_start = time.perf_counter()
    return {
        "train_loss": total / max(count, 1),
        "seconds": time.perf_counter() - started,
        "data_seconds": data_time,
        "samples": float(count),
    }


@dataclass
class _Run:
    """The objects of one fit that the epoch loop uses."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: EpochSampler | BalancedSampler
    loss_fn: SocLoss
    accelerator: Accelerator
    train: TensorSet
    monitor: TensorSet | None
    schedule: Schedule
    average: AveragedModel | None = None

    def scored(self) -> torch.nn.Module:
        """The network early stopping scores and the fit keeps: the weight average if any, else the model."""
        return self.average.module if self.average is not None else self.accelerator.unwrap_model(self.model)


def weight_average(model: torch.nn.Module, ema_steps: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (decay ``1 - 1/ema_steps``), or None for 0.

    Why: with a constant learning rate the weights after any one step carry that step's gradient noise, so the
    early-stopping curve is noisy and the restored epoch is partly chance; an average over the last few hundred
    steps is smoother (Polyak averaging). Measured on synthetic Bavaria: single networks gained, an average of
    runs did not (docs/benchmarks.md), so it is off by default. Buffers are averaged too."""
    if ema_steps <= 0:
        return None
    decay = 1.0 - 1.0 / ema_steps
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _monitor_row(run: _Run, data: FitData, transform: TargetTransform, tcfg: TrainConfig) -> dict[str, float]:
    """Monitoring loss and R²/RMSE/MAE (original scale) of the early-stopping rows."""
    assert run.monitor is not None
    loss, out = evaluate_loss(run.scored(), run.loss_fn, run.monitor, run.accelerator.device)
    quantiles = tuple(tcfg.quantiles)
    pred = transform.inverse(point_prediction(out, tcfg.loss_type, quantiles).double().numpy())
    m = regression_metrics(data.target[data.monitor], pred)
    return {"val_loss": loss, "val_r2": m["r2"], "val_rmse": m["rmse"], "val_mae": m["mae"]}


def _step_schedule(scheduler: Any, monitored: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(monitored)
    elif scheduler is not None:
        scheduler.step()


def _loop(
    run: _Run,
    data: FitData,
    transform: TargetTransform,
    tcfg: TrainConfig,
    state: LoopState,
    tracker: _Tracker,
) -> bool:
    """Epochs from ``state.next_epoch`` until the budget or early stopping; returns whether it stopped early."""
    checkpoint, last_saved = Checkpoint(data.workdir), time.monotonic()
    unwrapped = run.accelerator.unwrap_model(run.model)
    plan = run.schedule
    if state.history and run.monitor is not None and state.bad_epochs >= plan.patience:
        return True
    for epoch in range(state.next_epoch, plan.epochs):
        run.sampler.set_epoch(epoch)
        run.loader.set_epoch(epoch)  # Accelerate's loader re-sets the sampler's epoch from its own counter
        stats = train_epoch(
            run.model,
            run.loader,
            run.optimizer,
            run.loss_fn,
            run.accelerator,
            tcfg,
            run.train.sigma is not None,
            run.average,
        )
        row: dict[str, float] = {"epoch": float(epoch), "train_loss": stats["train_loss"]}
        monitored = stats["train_loss"]
        if run.monitor is not None:
            row |= _monitor_row(run, data, transform, tcfg)
            monitored = row["val_loss"]
        row |= {"lr": float(run.optimizer.param_groups[0]["lr"]), "max_epochs": float(plan.epochs)} | {
            k: stats[k] for k in stats if k != "train_loss"
        }
        state.history.append(row)
        if epoch + 1 < plan.min_epochs:
            pass  # warm-up: no epoch before it can be restored, nor count towards patience
        elif monitored < state.best_loss - tcfg.min_delta:
            state.best_loss, state.best_epoch, state.bad_epochs = monitored, epoch, 0
            state.best_state = {k: v.detach().cpu().clone() for k, v in run.scored().state_dict().items()}
        else:
            state.bad_epochs += 1
        _step_schedule(run.scheduler, monitored)
        tracker.log(row, step=epoch)
        if data.on_epoch is not None:
            data.on_epoch(epoch, row)
        state.next_epoch = epoch + 1
        if time.monotonic() - last_saved >= tcfg.checkpoint_seconds:
            checkpoint.save(unwrapped, run.optimizer, run.scheduler, state, run.average)
            last_saved = time.monotonic()
        if run.monitor is not None and state.bad_epochs >= plan.patience:
            return True
        if data.stop_after_epoch is not None and epoch >= data.stop_after_epoch:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (test interruption)")
    return False


def fit_network(
    model: torch.nn.Module,
    data: FitData,
    normalizer: Normalizer,
    transform: TargetTransform,
    tcfg: TrainConfig,
    sampling: SamplingConfig,
    tracking: Tracking,
) -> tuple[torch.nn.Module, FitInfo]:
    """Train ``model`` (built after ``torch.manual_seed(data.seed)``) and return it with the best weights.

    Args:
        model: the freshly built network.
        data: rows to train on and to monitor (early stopping; empty: train the whole epoch budget).
        normalizer, transform: fitted on the training rows.
        tcfg, sampling: the ``train`` and ``sampling`` config sections.
        tracking: W&B settings.
    """
    train_set = build_tensors(data, data.train, normalizer, transform, tcfg)
    monitor_set = (
        build_tensors(data, data.monitor, normalizer, transform, tcfg) if data.monitor.size else None
    )
    loss_fn = SocLoss(tcfg.loss_type, tcfg.loss_alpha, tcfg.loss_sigma, tuple(tcfg.quantiles))
    schedule = resolve_schedule(tcfg, int(data.train.size))
    optimizer, scheduler = build_optimisation(model, tcfg, schedule)
    sampler = build_sampler(data.target[data.train], sampling, data.seed)
    sigma = train_set.sigma if train_set.sigma is not None else torch.zeros_like(train_set.y)
    loader = DataLoader(
        BatchTensors(train_set.x, train_set.y, sigma),
        batch_size=schedule.batch_size,
        sampler=sampler,
        collate_fn=batch_as_is,
    )
    accelerator = Accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    run = _Run(
        model,
        optimizer,
        scheduler,
        loader,
        sampler,
        loss_fn,
        accelerator,
        train_set,
        monitor_set,
        schedule,
        weight_average(accelerator.unwrap_model(model), tcfg.ema_steps),
    )
    state = Checkpoint(data.workdir).load(accelerator.unwrap_model(model), optimizer, scheduler, run.average)
    tracker = _Tracker(tracking, data.workdir)
    n_parameters = sum(p.numel() for p in model.parameters())
    if state.next_epoch == 0:
        tracker.log({"parameters": n_parameters}, step=0)
    stopped = _loop(run, data, transform, tcfg, state, tracker)
    final = accelerator.unwrap_model(model)
    if state.best_state is not None:
        final.load_state_dict(state.best_state)  # the best epoch's weights, not the last epoch's
    elif run.average is not None:
        final.load_state_dict(run.average.module.state_dict())
    info = FitInfo(n_parameters, len(state.history), state.best_epoch, stopped, state.history)
    info.schedule = schedule.to_json()
    if monitor_set is not None and not stopped and state.best_epoch == schedule.epochs - 1:
        info.warnings.append(
            f"still improving at the last epoch ({schedule.epochs}, {schedule.epochs * schedule.steps_per_epoch} "
            "optimiser steps): the network may be under-trained; raise train.max_steps (or train.epochs)"
        )
    tracker.finish({f"final/{k}": v for k, v in (state.history[-1] if state.history else {}).items()})
    return final.cpu().eval(), info
