"""Normalisation: fitted on training windows only, per band and step, NaN -> training mean, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from socmap.normalize import Normalizer


def windows(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(10.0, 3.0, size=(200, 3, 5, 5, 4)).astype(np.float32)
    w[:, 1] += np.arange(4, dtype=np.float32) * 5  # a trend over the steps
    w[rng.random(w.shape) < 0.1] = np.nan
    return w


def test_statistics_match_numpy_and_use_training_only() -> None:
    w = windows()
    train = np.arange(0, 150)
    norm = Normalizer.fit(w, train, ["S", "A", "B"], ["S"])
    # independent: nanmean/nanstd over (N, H, W) per channel and step; static pooled over steps
    t = w[train].astype(np.float64)
    np.testing.assert_allclose(norm.mean[1:], np.nanmean(t[:, 1:], axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(norm.std[1:], np.nanstd(t[:, 1:], axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(norm.mean[0], np.full(4, np.nanmean(t[:, 0])), rtol=1e-9)
    # changing validation windows does not change the statistics
    w2 = w.copy()
    w2[150:] = 1e6
    assert np.array_equal(Normalizer.fit(w2, train, ["S", "A", "B"], ["S"]).mean, norm.mean)


def test_transform_fills_nan_with_training_mean_and_torch_agrees(tmp_path: Path) -> None:
    w = windows(1)
    norm = Normalizer.fit(w, np.arange(200), ["S", "A", "B"], [])
    out = norm.transform(w)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.all(out[np.isnan(w)] == 0)
    finite = np.isfinite(w)
    assert abs(float(out[finite].mean())) < 0.05
    torch_out = norm.transform_torch(torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(torch_out, out, rtol=1e-6, atol=1e-6)
    norm.save(tmp_path / "n.json")
    back = Normalizer.load(tmp_path / "n.json")
    assert np.array_equal(back.mean, norm.mean) and np.array_equal(back.std, norm.std)


def test_constant_band_is_not_divided_by_zero() -> None:
    w = np.ones((10, 1, 3, 3, 2), dtype=np.float32)
    norm = Normalizer.fit(w, np.arange(10), ["C"], ["C"])
    assert np.all(norm.std == 1.0) and np.all(norm.transform(w) == 0)
