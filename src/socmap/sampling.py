"""Balanced sampling of a skewed target: up-sample rare target values in the set the model trains on.

SOC is strongly right-skewed (a few peat and forest samples far above the bulk), so a model trained on the
raw sample under-predicts high values. :func:`balanced_indices` bins the target and draws extra copies of
samples in thin bins; :class:`BalancedSampler` does so afresh each epoch for a torch DataLoader. Unlike the
seed project, whose balancing only fed normalisation statistics, these indices are what the model trains on.

Binning matters: ``"uniform"`` (equal-width bins over [min, max]) is what balances a right-skewed target,
because the sparse high-value bins are up-sampled. ``"quantile"`` bins hold (nearly) equal counts by
construction, so on a continuous target almost nothing is added; it only acts where ties (lab values rounded
to 0.1 g/kg, detection limits) make some quantile bins much fuller than others.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any, Literal, cast

import numpy as np
import torch.utils.data
from numpy.typing import ArrayLike, NDArray

from socmap.errors import InputError

__all__ = [
    "BalancedSampler",
    "balance_report",
    "balanced_indices",
    "bin_edges",
    "bin_labels",
]

IntArray = NDArray[np.intp]
FloatArray = NDArray[np.float64]
Binning = Literal["quantile", "uniform"]
BINNINGS: tuple[str, ...] = ("quantile", "uniform")


def _check_target(y: ArrayLike) -> FloatArray:
    yv = np.asarray(y, dtype=np.float64)
    if yv.ndim != 1 or yv.size == 0:
        raise InputError(f"y of shape {yv.shape}: expected a non-empty 1-D array of target values")
    if not np.all(np.isfinite(yv)):
        raise InputError(
            f"y has {int(np.sum(~np.isfinite(yv)))} NaN or infinite values: expected finite values"
        )
    return yv


def _check_options(n_bins: object, min_fraction: object, binning: object) -> tuple[int, float, Binning]:
    if not isinstance(n_bins, numbers.Integral) or isinstance(n_bins, bool) or int(n_bins) < 2:
        raise InputError(f"n_bins {n_bins!r}: expected an integer >= 2")
    if (
        not isinstance(min_fraction, numbers.Real)
        or isinstance(min_fraction, bool)
        or not 0.0 < float(min_fraction) <= 1.0
    ):
        raise InputError(f"min_fraction {min_fraction!r}: expected a number in (0, 1]")
    if binning not in BINNINGS:
        raise InputError(f"binning {binning!r}: expected one of {', '.join(BINNINGS)}")
    return int(n_bins), float(min_fraction), cast(Binning, binning)


def bin_edges(y: ArrayLike, n_bins: int = 128, binning: Binning = "quantile") -> FloatArray:
    """Bin edges of the target: quantiles (duplicates removed: ties give fewer, unequal bins) or equal width.

    Returns an empty array when all values are equal (no spread to bin).
    """
    yv = _check_target(y)
    n_bins, _, binning = _check_options(n_bins, 1.0, binning)
    lo, hi = float(yv.min()), float(yv.max())
    if lo == hi:
        return np.empty(0, dtype=np.float64)
    if binning == "uniform":
        return np.linspace(lo, hi, n_bins + 1)
    return np.unique(np.quantile(yv, np.linspace(0.0, 1.0, n_bins + 1)))


def bin_labels(y: FloatArray, edges: FloatArray) -> IntArray:
    """Bin per value, with numpy.histogram's convention: [e_i, e_i+1), the last bin closed."""
    if edges.size < 2:
        return np.zeros(y.size, dtype=np.intp)
    idx = np.searchsorted(edges, y, side="right") - 1
    return np.asarray(np.clip(idx, 0, edges.size - 2), dtype=np.intp)


def _bin_targets(labels: IntArray, min_fraction: float) -> tuple[NDArray[np.int64], int]:
    """Counts per bin and the count every non-empty bin is raised to (ceil(min_fraction x largest))."""
    counts = np.bincount(labels).astype(np.int64)
    # round first so that e.g. 0.7 * 10 = 7.000000000000001 does not become 8
    target = math.ceil(round(min_fraction * int(counts.max()), 9))
    return counts, target


def balanced_indices(
    y: ArrayLike,
    n_bins: int = 128,
    min_fraction: float = 0.75,
    binning: Binning = "quantile",
    rng_or_seed: np.random.Generator | int | None = 0,
) -> IntArray:
    """Shuffled indices into ``y``: every sample once, plus extra draws that fill thin target bins.

    Every non-empty bin holding fewer than ``min_fraction`` x (largest bin count) samples is up-sampled with
    replacement to ceil(min_fraction x largest count); fuller bins keep their samples once. See the module
    docstring for the choice of ``binning``: with ``"quantile"`` on a continuous target almost nothing is
    added.
    """
    yv = _check_target(y)
    n_bins, min_fraction, binning = _check_options(n_bins, min_fraction, binning)
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    labels = bin_labels(yv, bin_edges(yv, n_bins, binning))
    counts, target = _bin_targets(labels, min_fraction)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    extra = [
        rng.choice(order[starts[b] : starts[b + 1]], size=int(target - c), replace=True)
        for b, c in enumerate(counts)
        if 0 < c < target
    ]
    out = np.concatenate([np.arange(yv.size, dtype=np.intp), *extra]).astype(np.intp)
    return np.asarray(rng.permutation(out), dtype=np.intp)


class BalancedSampler(torch.utils.data.Sampler[int]):
    """A torch Sampler that yields a fresh :func:`balanced_indices` list each epoch.

    Epoch ``e`` draws with ``numpy.random.default_rng((seed, e))``, so a run is reproducible and every epoch
    sees different extra copies and a different order. The epoch counter advances after each ``__iter__``;
    :meth:`set_epoch` sets it (e.g. when resuming). The length is the same every epoch.
    """

    y: FloatArray
    n_bins: int
    min_fraction: float
    binning: Binning
    seed: int
    epoch: int
    _length: int

    def __init__(
        self,
        y: ArrayLike,
        n_bins: int = 128,
        min_fraction: float = 0.75,
        binning: Binning = "quantile",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.y = _check_target(y)
        self.n_bins, self.min_fraction, self.binning = _check_options(n_bins, min_fraction, binning)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or int(seed) < 0:
            raise InputError(f"seed {seed!r}: expected an integer >= 0")
        self.seed = int(seed)
        self.epoch = 0
        labels = bin_labels(self.y, bin_edges(self.y, self.n_bins, self.binning))
        counts, target = _bin_targets(labels, self.min_fraction)
        self._length = int(
            self.y.size + np.sum(np.where((counts > 0) & (counts < target), target - counts, 0))
        )

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose index list the next ``__iter__`` yields."""
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or int(epoch) < 0:
            raise InputError(f"epoch {epoch!r}: expected an integer >= 0")
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> IntArray:
        """The balanced index list of ``epoch`` (what ``__iter__`` yields for it)."""
        rng = np.random.default_rng((self.seed, epoch))
        return balanced_indices(self.y, self.n_bins, self.min_fraction, self.binning, rng)

    def __iter__(self) -> Iterator[int]:
        idx = self.indices(self.epoch)
        self.epoch += 1
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self._length


def balance_report(
    y: ArrayLike, indices: ArrayLike, n_bins: int = 128, binning: Binning = "quantile"
) -> dict[str, Any]:
    """Counts and target statistics before and after balancing, for logging.

    ``bins_upsampled`` counts the bins (same ``n_bins``/``binning`` as used for balancing) that hold more
    samples in ``indices`` than in ``y``.
    """
    yv = _check_target(y)
    idx = np.asarray(indices, dtype=np.intp).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= yv.size):
        raise InputError(
            f"indices span [{idx.min()}, {idx.max()}]: expected indices into y (0..{yv.size - 1})"
        )
    edges = bin_edges(yv, n_bins, binning)
    before = np.bincount(bin_labels(yv, edges), minlength=max(edges.size - 1, 1))
    after = np.bincount(bin_labels(yv[idx], edges), minlength=before.size)
    yb = yv[idx]
    return {
        "n_original": int(yv.size),
        "n_balanced": int(idx.size),
        "n_added": int(idx.size - yv.size),
        "n_bins": int(np.count_nonzero(before)),
        "bins_upsampled": int(np.count_nonzero(after > before)),
        "mean_before": float(yv.mean()),
        "mean_after": float(yb.mean()) if yb.size else float("nan"),
        "median_before": float(np.median(yv)),
        "median_after": float(np.median(yb)) if yb.size else float("nan"),
    }
