"""A deep model's training schedule, resolved from the data size: counted in optimiser steps, not epochs.

Why: defaults given in epochs only work for one data size. 200 epochs of 256-sample batches are 10,000 steps on
16,000 samples but 200 steps on 300 samples (one batch per epoch: under-trained, and early stopping then keeps
an almost untrained network). So the budget, the patience and a warm-up are given in optimiser steps and turned
into epochs for the training part at hand, and the batch size follows the number of training samples:

- batch size (``train.batch_size``, default auto): ``n_train / 32`` rounded to a power of two, within 16..256;
- epochs (``train.epochs``, default auto): ``ceil(train.max_steps / steps per epoch)``;
- patience (``train.patience``, default auto): ``ceil(train.patience_steps / steps per epoch)``, at least 3;
- learning rate (``train.lr``, default auto): ``1e-3 * sqrt(batch / 256)`` (Adam's square-root scaling with
  the batch size: 2.5e-4 at 16, 5e-4 at 64, 1e-3 at 256; measured on synthetic Bavaria, docs/benchmarks.md);
- warm-up (``train.min_steps``): no epoch before ``ceil(min_steps / steps per epoch)`` can become the best
  (restored) epoch and early stopping cannot stop before it, so a fit never restores an untrained network.

A value set explicitly in the config (``epochs``, ``patience``, ``batch_size``, ``lr``) is used as given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socmap.config import TrainConfig

__all__ = ["Schedule", "auto_batch_size", "auto_lr", "resolve_schedule"]

MIN_BATCH, MAX_BATCH = 16, 256
MIN_PATIENCE = 3
LR_AT_MAX_BATCH = 1e-3


def auto_batch_size(n_train: int) -> int:
    """``n_train / 32`` rounded to a power of two, clipped to 16..256 (about 32 steps per epoch)."""
    if n_train <= 0:
        return MIN_BATCH
    power = 2 ** round(math.log2(max(n_train / 32, 1)))
    return int(min(max(power, MIN_BATCH), MAX_BATCH))


def auto_lr(batch_size: int) -> float:
    """``1e-3 * sqrt(batch_size / 256)``: the default learning rate of a batch size."""
    return LR_AT_MAX_BATCH * math.sqrt(batch_size / MAX_BATCH)


@dataclass(frozen=True)
class Schedule:
    """The resolved schedule of one fit (stored in the fit's report)."""

    batch_size: int
    steps_per_epoch: int
    epochs: int
    patience: int
    min_epochs: int
    lr: float

    def to_json(self) -> dict[str, float]:
        """JSON form (``fit.json``, ``metrics.json``)."""
        return asdict(self)


def resolve_schedule(tcfg: TrainConfig, n_train: int) -> Schedule:
    """Batch size, epoch budget, patience and warm-up of a fit on ``n_train`` samples (see the module doc)."""
    batch = tcfg.batch_size or auto_batch_size(n_train)
    steps = max(1, math.ceil(max(n_train, 1) / batch))
    epochs = tcfg.epochs or max(1, math.ceil(tcfg.max_steps / steps))
    patience = tcfg.patience or max(MIN_PATIENCE, math.ceil(tcfg.patience_steps / steps))
    min_epochs = min(epochs, max(1, math.ceil(tcfg.min_steps / steps)))
    return Schedule(batch, steps, epochs, patience, min_epochs, tcfg.lr or auto_lr(batch))
