"""Coordinates as covariates: generated at prepare time and at map time from pixel centres, identical in both,
never counted as data by the nodata policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from socmap.config import load_config
from socmap.data import discover_stack
from socmap.errors import InputError
from socmap.mapping.blocks import read_inputs
from socmap.windows import extract_windows, extract_windows_naive, prepare

from tests.data.tiny import data as tiny
from tests.test_windows import tiny_config


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make(tmp_path_factory.mktemp("tiny"))


def test_oblique_coordinates_at_prepare_time(tiny_root: Path, tmp_path: Path) -> None:
    """ogc_<angle> of every window pixel is its pixel centre rotated about the grid centre; the raster channels,
    kept samples and valid fractions are those of a prepare without coordinates."""
    plain, _ = prepare(tiny_config(tiny_root), tmp_path / "plain")
    cfg = tiny_config(tiny_root, **{"covariates.coordinates": "oblique", "covariates.oblique_angles": 4})
    data, _ = prepare(cfg, tmp_path / "oblique")
    angles = ["ogc_000", "ogc_045", "ogc_090", "ogc_135"]
    assert data.bands == ["Elevation", *angles, "NDVI", "LST"]
    assert data.meta.static_bands == ["Elevation", *angles]
    raster = [0, 5, 6]
    np.testing.assert_array_equal(np.asarray(data.windows)[:, raster], np.asarray(plain.windows))
    np.testing.assert_array_equal(data.samples["valid_fraction"], plain.samples["valid_fraction"])
    with rasterio.open(tiny_root / "covariates" / "static" / "Elevation.tif") as src:
        t, h, w = src.transform, src.height, src.width
    cx, cy = t @ (w / 2, h / 2)
    rows, cols = data.samples["row"].to_numpy(), data.samples["col"].to_numpy()
    for dr, dc in ((0, 0), (-1, 2), (2, -2)):  # the centre and other window pixels (5 x 5 window)
        x, y = t @ (cols + dc + 0.5, rows + dr + 0.5)
        for j, theta in enumerate((0.0, 45.0, 90.0, 135.0)):
            expected = (x - cx) * np.cos(np.radians(theta)) + (y - cy) * np.sin(np.radians(theta))
            got = np.asarray(data.windows)[:, 1 + j, 2 + dr, 2 + dc, -1]
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0.02)


def test_coordinates_identical_at_map_time_and_in_naive_reference(tiny_root: Path) -> None:
    """A map block's coordinate channels equal the windows cut by prepare's fast path and by the naive
    reference for the same pixels."""
    stack = discover_stack(tiny_config(tiny_root, **{"covariates.coordinates": "xy"}))
    assert stack.bands[1:3] == ["coord_x", "coord_y"] and stack.data_channels == [0, 3, 4]
    rows, cols = np.array([3, 10, 20]), np.array([4, 15, 25])
    fast = extract_windows(stack, rows, cols, ["2020"] * 3, 5, 3)
    xs, ys = stack.grid.transform @ (cols + 0.5, rows + 0.5)
    naive = extract_windows_naive(stack, np.asarray(xs), np.asarray(ys), ["2020"] * 3, 5, 3)
    np.testing.assert_array_equal(fast[:, 1:3], naive[:, 1:3])
    block = read_inputs(stack, ["2018", "2019", "2020"], 5, 0, 30, 0, 40)  # [C, T, rows+4, cols+4]
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        np.testing.assert_array_equal(block[1:3, -1, r : r + 5, c : c + 5], fast[i, 1:3, :, :, -1])


def test_coordinate_band_names_are_reserved(tiny_root: Path) -> None:
    with pytest.raises(InputError, match=r"coord_x are reserved for covariates\.coordinates"):
        load_config(None, {"covariates.static": ["coord_x"]})
    with pytest.raises(InputError, match="coordinates"):
        load_config(None, {"covariates.coordinates": "polar"})
