"""Target transforms: exact round trips (property-tested), training-only fit, sigma scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from socmap.errors import InputError
from socmap.transforms import TargetTransform

targets = arrays(np.float64, st.integers(2, 50), elements=st.floats(0.0, 600.0, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(y=targets, name=st.sampled_from(["none", "log", "normalize"]))
def test_inverse_forward_is_identity(y: np.ndarray, name: str) -> None:
    t = TargetTransform(name).fit(y)
    np.testing.assert_allclose(t.inverse(t.forward(y)), y, rtol=1e-12, atol=1e-9)
    back = TargetTransform.from_dict(t.to_dict())
    np.testing.assert_array_equal(back.forward(y), t.forward(y))
    z = torch.from_numpy(t.forward(y))
    np.testing.assert_allclose(t.inverse_torch(z).numpy(), y, rtol=1e-12, atol=1e-9)


def test_normalize_uses_training_targets() -> None:
    train = np.array([10.0, 20.0, 30.0])
    t = TargetTransform("normalize").fit(train)
    assert t.params == {"mean": 20.0, "std": pytest.approx(np.std(train))}
    np.testing.assert_allclose(t.forward(np.array([20.0])), [0.0])


def test_sigma_scaling_matches_the_derivative() -> None:
    y, sigma = np.array([5.0, 50.0]), np.array([1.0, 1.0])
    log = TargetTransform("log").fit(y)
    h = 1e-6
    numeric = (log.forward(y + h) - log.forward(y)) / h
    np.testing.assert_allclose(log.scale_sigma(sigma, y), sigma * numeric, rtol=1e-4)
    norm = TargetTransform("normalize").fit(y)
    np.testing.assert_allclose(norm.scale_sigma(sigma, y), sigma / np.std(y))


def test_unknown_transform() -> None:
    with pytest.raises(InputError, match="target_transform 'sqrt': expected one of none, log, normalize"):
        TargetTransform("sqrt")
