"""Balanced sampling: exact per-bin counts, effect on a skewed target, epoch reproducibility, argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from socmap.errors import InputError
from socmap.sampling import BalancedSampler, balance_report, balanced_indices


def skewed(n: int = 5000, seed: int = 0) -> NDArray[np.float64]:
    """Right-skewed SOC-like target (g/kg): lognormal, median 20, a long tail of high values."""
    return np.random.default_rng(seed).lognormal(np.log(20.0), 0.7, n)


@pytest.mark.parametrize(("n_bins", "min_fraction"), [(32, 0.5), (128, 0.75), (16, 1.0)])
def test_uniform_bins_are_filled_to_the_threshold_exactly(n_bins: int, min_fraction: float) -> None:
    y = skewed()
    idx = balanced_indices(y, n_bins=n_bins, min_fraction=min_fraction, binning="uniform", rng_or_seed=1)
    counts, edges = np.histogram(y, bins=n_bins)  # equal-width bins over [min, max], computed independently
    target = math.ceil(min_fraction * counts.max())
    expected = np.where((counts > 0) & (counts < target), target, counts)
    after, _ = np.histogram(y[idx], bins=edges)
    np.testing.assert_array_equal(after, expected)
    assert idx.size == expected.sum()
    assert np.all(np.bincount(idx, minlength=y.size) >= 1)  # every original sample at least once
    assert idx.dtype.kind == "i" and idx.min() >= 0 and idx.max() < y.size


def test_uniform_binning_raises_the_share_of_high_values() -> None:
    y = skewed()
    idx = balanced_indices(y, binning="uniform")
    high = np.quantile(y, 0.9)
    assert np.mean(y[idx] > high) > 3 * np.mean(y > high)
    assert np.median(y[idx]) > 1.5 * np.median(y)


def test_quantile_binning_adds_nothing_on_a_continuous_target() -> None:
    y = skewed()
    idx = balanced_indices(y, binning="quantile")
    np.testing.assert_array_equal(np.sort(idx), np.arange(y.size))  # just a shuffle
    assert not np.array_equal(idx, np.arange(y.size))


def test_quantile_binning_acts_on_ties() -> None:
    """Lab values rounded to 1 g/kg: duplicate quantile edges merge into fuller bins, others are up-sampled."""
    y = np.round(skewed())
    edges = np.unique(np.quantile(y, np.linspace(0, 1, 129)))
    counts, _ = np.histogram(y, bins=edges)
    target = math.ceil(0.75 * counts.max())
    idx = balanced_indices(y, binning="quantile")
    after, _ = np.histogram(y[idx], bins=edges)
    np.testing.assert_array_equal(after, np.where((counts > 0) & (counts < target), target, counts))
    assert idx.size > y.size


def test_balanced_indices_seeding() -> None:
    y = skewed(1000)
    a = balanced_indices(y, n_bins=20, binning="uniform", rng_or_seed=3)
    b = balanced_indices(y, n_bins=20, binning="uniform", rng_or_seed=np.random.default_rng(3))
    c = balanced_indices(y, n_bins=20, binning="uniform", rng_or_seed=4)
    np.testing.assert_array_equal(a, b)
    assert a.size == c.size and not np.array_equal(a, c)


def test_constant_target_is_only_shuffled() -> None:
    idx = balanced_indices(np.full(50, 7.0), binning="uniform")
    np.testing.assert_array_equal(np.sort(idx), np.arange(50))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"binning": "log"}, "binning 'log': expected one of quantile, uniform"),
        ({"n_bins": 1}, "n_bins 1: expected an integer >= 2"),
        ({"min_fraction": 0}, "min_fraction 0: expected a number in (0, 1]"),
        ({"min_fraction": 1.5}, "min_fraction 1.5: expected a number in (0, 1]"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as info:
        balanced_indices(skewed(100), **kwargs)
    assert str(info.value) == message
    with pytest.raises(InputError) as info:
        BalancedSampler(skewed(100), **kwargs)
    assert str(info.value) == message


def test_invalid_targets() -> None:
    with pytest.raises(InputError, match="1 NaN or infinite values"):
        balanced_indices([1.0, np.nan, 3.0])
    with pytest.raises(InputError, match="expected a non-empty 1-D array"):
        balanced_indices(np.ones((3, 2)))


def test_sampler_epochs_are_fresh_and_reproducible() -> None:
    y = skewed(2000)
    sampler = BalancedSampler(y, n_bins=32, binning="uniform", seed=5)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert len(epoch0) == len(epoch1) == len(sampler) > y.size
    assert epoch0 != epoch1
    assert sorted(set(epoch0)) == list(range(y.size))

    twin = BalancedSampler(y, n_bins=32, binning="uniform", seed=5)
    assert list(twin) == epoch0
    twin.set_epoch(1)
    assert list(twin) == epoch1
    assert list(BalancedSampler(y, n_bins=32, binning="uniform", seed=6)) != epoch0
    np.testing.assert_array_equal(sampler.indices(0), epoch0)


def test_sampler_feeds_a_dataloader() -> None:
    y = skewed(300)
    data = torch.utils.data.TensorDataset(torch.as_tensor(y))
    sampler = BalancedSampler(y, n_bins=16, binning="uniform")
    loader = torch.utils.data.DataLoader(data, batch_size=64, sampler=sampler)
    seen = torch.cat([batch[0] for batch in loader]).numpy()
    assert seen.size == len(sampler)
    assert np.mean(seen) > np.mean(y)


def test_balance_report() -> None:
    y = skewed()
    idx = balanced_indices(y, n_bins=32, binning="uniform")
    report = balance_report(y, idx, n_bins=32, binning="uniform")
    counts, _ = np.histogram(y, bins=32)
    target = math.ceil(0.75 * counts.max())
    assert report["n_original"] == y.size
    assert report["n_balanced"] == idx.size
    assert report["n_added"] == idx.size - y.size
    assert report["n_bins"] == np.count_nonzero(counts)
    assert report["bins_upsampled"] == np.count_nonzero((counts > 0) & (counts < target))
    assert report["mean_before"] == pytest.approx(y.mean())
    assert report["median_after"] == pytest.approx(np.median(y[idx]))
    assert report["mean_after"] > report["mean_before"]
    with pytest.raises(InputError, match="expected indices into y"):
        balance_report(y, [0, y.size])
