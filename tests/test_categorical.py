"""Categorical bands: one-hot and window shares of the training classes for tree/linear models, a class unseen
in training reported (and nodata in a map), never interpolated when warped."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from rasterio.enums import Resampling

import socmap.models.zoo  # noqa: F401  (registers the kinds)
from socmap.config import load_config
from socmap.data import RasterStack
from socmap.errors import InputError
from socmap.models import FitData, InputSpec, TargetInfo
from socmap.models.features import UnseenCategoryWarning, WindowFeatures
from socmap.models.trees import LinearModel


def _windows(n: int, seed: int, codes: list[float]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0, (n, 2, 3, 3, 1)).astype(np.float32)
    w[:, 0] = rng.choice(codes, size=(n, 3, 3, 1))
    return w


def test_one_hot_and_shares_of_training_classes() -> None:
    train = _windows(200, 0, [1.0, 2.0, 5.0])
    feats = WindowFeatures((0, 1), ["soil", "elev"], categorical_channels=(0,))
    x = feats.fit_transform(train)
    assert feats.categories_ == {0: [1.0, 2.0, 5.0]}
    names = list(feats.get_feature_names_out())
    assert names[:6] == ["soil=1", "soil=2", "soil=5", "soil_share=1", "soil_share=2", "soil_share=5"]
    centre = train[:, 0, 1, 1, 0]
    for j, code in enumerate((1.0, 2.0, 5.0)):
        np.testing.assert_array_equal(x[:, j], (centre == code).astype(float))
        np.testing.assert_allclose(x[:, 3 + j], (train[:, 0, :, :, 0] == code).mean(axis=(1, 2)))
    assert "soil_centre" not in names and "elev_centre" in names
    restored = WindowFeatures.from_state(feats.to_state())
    np.testing.assert_array_equal(restored.transform(train), x)


def test_unseen_class_is_reported_and_nodata_in_maps() -> None:
    """A class code absent from training: a warning naming band, code and count; the fitted model predicts
    those rows without any class indicator, its mapping copy gives nodata (NaN) there and only there."""
    train = _windows(200, 1, [1.0, 2.0])
    target = 3.0 * (train[:, 0, 1, 1, 0] == 2.0) + train[:, 1, 1, 1, 0]
    spec = InputSpec(("soil", "elev"), ("soil", "elev"), 3, 1, ("0",), {}, TargetInfo("y", "u"), ("soil",))
    model = LinearModel({}, "none", 1)
    empty = np.empty(0, np.int64)
    model.fit(FitData(train, np.asarray(target, np.float64), np.arange(200), empty, spec))
    new = _windows(20, 2, [1.0, 2.0])
    new[:4, 0, 1, 1, 0] = 9.0
    with pytest.warns(UnseenCategoryWarning, match=r"soil: class code\(s\) 9 unseen in training at 4 window"):
        point = model.predict(new)
    assert np.isfinite(point).all()
    with pytest.warns(UnseenCategoryWarning, match="mapped as nodata"):
        mapped = model.for_inference().predict(new)
    assert np.isnan(mapped[:4]).all()
    np.testing.assert_array_equal(mapped[4:], point[4:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(new[4:])  # only seen classes: no warning


def test_categorical_config_and_resampling() -> None:
    with pytest.raises(
        InputError, match=r"categorical landcover: expected among the static bands \(Elevation\)"
    ):
        load_config(None, {"covariates.categorical": ["landcover"]})
    stack = RasterStack([], [], [], {}, None, resampling=Resampling.average, categorical=["lc"])  # type: ignore[arg-type]
    assert stack._resampling("lc") == Resampling.mode and stack._resampling("dem") == Resampling.average
    stack.resampling = Resampling.bilinear
    assert stack._resampling("lc") == Resampling.nearest
