"""Window extraction: fast path == naive per-sample reference, known values, time order, gaps, prepare."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import Affine

from socmap import synth
from socmap.config import SocmapConfig, load_config
from socmap.data import discover_stack
from socmap.errors import InputError, OutputError
from socmap.windows import extract_windows, extract_windows_naive, load_prepared, prepare

from tests.data.tiny import data as tiny


def tiny_config(root: Path, **extra: object) -> SocmapConfig:
    overrides: dict[str, object] = {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "covariates.static": ["Elevation"],
        "covariates.temporal": ["NDVI", "LST"],
        "windows.time_steps": 3,
    }
    overrides.update(extra)
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_prepared(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    data, reused = prepare(tiny_config(tiny_root), tmp_path_factory.mktemp("prep") / "tiny")
    assert not reused
    return data


def test_drops_by_reason(tiny_prepared) -> None:
    meta = tiny_prepared.meta
    assert meta.drops == tiny.EXPECTED_DROPS
    assert meta.n_samples == tiny.N_GOOD == len(tiny_prepared.samples)
    assert meta.n_input_rows == tiny.N_GOOD + sum(tiny.EXPECTED_DROPS.values())
    assert any("NDVI: no file for 2020" in w for w in meta.warnings)
    assert any("LST" in w and "CRS EPSG:4326 instead of EPSG:32632" in w for w in meta.warnings)
    assert meta.shape == [tiny.N_GOOD, 3, 5, 5, 3]
    assert meta.bands == ["Elevation", "NDVI", "LST"]


def test_known_values_time_order_and_gaps(tiny_prepared) -> None:
    w, s = tiny_prepared.windows, tiny_prepared.samples
    for i, row in s.iterrows():
        r, c, year = int(row["row"]), int(row["col"]), int(row["time"])
        rr, cc = np.mgrid[r - 2 : r + 3, c - 2 : c + 3]
        inside = (rr >= 0) & (rr < tiny.HEIGHT) & (cc >= 0) & (cc < tiny.WIDTH)
        lake = (rr >= 20) & (cc >= 30)
        expected_elev = np.where(inside & ~lake, tiny.elevation_value(rr, cc), np.nan)
        for k in range(3):  # static band repeated over the steps
            np.testing.assert_array_equal(w[i, 0, :, :, k], expected_elev.astype(np.float32))
        for k, yy in enumerate(range(year - 2, year + 1)):  # oldest first, sample year last
            expected = tiny.ndvi_value(yy, rr, cc)
            invalid = ~inside | lake | (yy not in tiny.YEARS) | (yy == 2020)
            if yy == 2019:
                invalid |= (rr < 5) & (cc < 5)
            np.testing.assert_allclose(
                w[i, 1, :, :, k], np.where(invalid, np.nan, expected).astype(np.float32), rtol=1e-6
            )
        # LST rises by 1 K per year at a fixed place: the sequence is chronological
        centre = w[i, 2, 2, 2, :]
        known = [k for k, yy in enumerate(range(year - 2, year + 1)) if yy in tiny.YEARS]
        assert np.all(np.diff(centre[known]) > 0.99)


def test_fast_equals_naive_on_fixture(tiny_root: Path, tiny_prepared) -> None:
    stack = discover_stack(tiny_config(tiny_root))
    s = tiny_prepared.samples
    naive = extract_windows_naive(stack, s["x"].to_numpy(), s["y"].to_numpy(), list(s["time"]), 5, 3)
    np.testing.assert_array_equal(naive, tiny_prepared.windows)


def test_fast_equals_naive_on_synthetic_bavaria(synth_dir: Path) -> None:
    config = load_config(
        None,
        {"samples.path": str(synth_dir / "samples.csv"), "covariates.root": str(synth_dir / "covariates")},
    )
    stack = discover_stack(config)
    samples = pd.read_csv(synth_dir / "samples.csv").sample(150, random_state=0)
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 25832, always_xy=True).transform(
        samples["GPS_LONG"], samples["GPS_LAT"]
    )
    x, y = np.asarray(x), np.asarray(y)
    rows, cols = stack.grid.rowcol(x, y)
    times = [str(v) for v in samples["year"]]
    fast = extract_windows(stack, rows, cols, times, 5, 5)
    naive = extract_windows_naive(stack, x, y, times, 5, 5)
    np.testing.assert_array_equal(fast, naive)


def test_prepared_windows_reproduce_the_synthetic_truth(synth_dir: Path, tmp_path: Path) -> None:
    """End to end: the truth features computed from prepared windows equal the generator's."""
    config = load_config(
        None,
        {
            "samples.path": str(synth_dir / "samples.csv"),
            "covariates.root": str(synth_dir / "covariates"),
            "filters.max_target": None,
        },
    )
    data, _ = prepare(config, tmp_path / "prep")
    w = np.asarray(data.windows)
    n = w.shape[0]
    assert n == json.loads((synth_dir / "truth.json").read_text())["n_samples"]  # nothing dropped

    def hist(ch: int) -> np.ndarray:  # [N, C, H, W, T] -> [N, T, 25]
        return w[:, ch].transpose(0, 3, 1, 2).reshape(n, 5, 25)

    feats = synth.truth_features(
        w[:, 0, :, :, -1].reshape(n, 25), hist(1), hist(2), hist(3), hist(4), hist(5)
    )
    truth = pd.read_csv(synth_dir / "truth.csv")
    merged = data.samples.assign(
        POINTID=data.samples["sample_id"].astype(np.int64), year=data.samples["year"].astype(int)
    )
    merged = merged.merge(truth, on=["POINTID", "year"], how="left", validate="one_to_one")
    for name in synth.FEATURES:
        np.testing.assert_allclose(feats[name], merged[f"feature_{name}"], rtol=1e-6, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(data.target, merged["OC_x"] if "OC_x" in merged else merged["OC"], rtol=0)


def test_even_window_and_single_step(tiny_root: Path, tmp_path: Path) -> None:
    data, _ = prepare(tiny_config(tiny_root, **{"windows.size": 4, "windows.time_steps": 1}), tmp_path / "p")
    w, s = data.windows, data.samples
    assert w.shape[1:] == (3, 4, 4, 1)
    i = int(np.flatnonzero((s["row"] == 10) & (s["col"] == 5))[0])
    rr, cc = np.mgrid[8:12, 3:7]  # even size: centre at index size // 2 = 2
    np.testing.assert_array_equal(w[i, 0, :, :, 0], tiny.elevation_value(rr, cc).astype(np.float32))


def test_reuse_and_refuse(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    prepare(tiny_config(tiny_root), out)
    before = (out / "windows.npy").stat().st_mtime_ns
    _, reused = prepare(tiny_config(tiny_root), out)
    assert reused and (out / "windows.npy").stat().st_mtime_ns == before
    with pytest.raises(OutputError, match="another config"):
        prepare(tiny_config(tiny_root, **{"windows.size": 3}), out)
    data, reused = prepare(tiny_config(tiny_root, **{"windows.size": 3}), out, overwrite=True)
    assert not reused and data.windows.shape[2] == 3
    loaded = load_prepared(out)
    assert isinstance(loaded.windows, np.memmap)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_all_samples_outside_hints_swapped_coordinates(tiny_root: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_root / "samples.csv")
    frame = frame.rename(columns={"GPS_LAT": "GPS_LONG", "GPS_LONG": "GPS_LAT"})
    frame.to_csv(tmp_path / "swapped.csv", index=False)
    with pytest.raises(InputError, match="latitude and longitude swapped") as info:
        prepare(tiny_config(tiny_root, **{"samples.path": str(tmp_path / "swapped.csv")}), tmp_path / "p")
    # where the samples fell and where the rasters are, both in lon/lat
    text = str(info.value)
    assert re.search(
        r"samples lon [\d.]+\.\.[\d.]+, lat [\d.]+\.\.[\d.]+ \(read from latitude/longitude", text
    )
    assert re.search(r"rasters lon [\d.]+\.\.[\d.]+, lat [\d.]+\.\.[\d.]+ \(x ", text)
    assert "samples.x / samples.y" in text and "\n" not in text


def test_prepared_folder_is_reused_from_the_run_folders_config_yaml(tiny_root: Path, tmp_path: Path) -> None:
    """A config written with absolute paths (RUN/config.yaml) is the same data as the one it came from."""
    from socmap.config import dump_config

    cfg = tiny_config(tiny_root)
    prepare(cfg, tmp_path / "p")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.yaml").write_text(dump_config(cfg))
    _, reused = prepare(load_config(tmp_path / "elsewhere" / "config.yaml"), tmp_path / "p")
    assert reused


def test_misaligned_raster_is_warped_or_refused(tmp_path: Path) -> None:
    root = tiny.make(tmp_path / "t")
    path = root / "covariates" / "yearly" / "NDVI" / "2021.tif"
    with rasterio.open(path) as src:
        data, profile = src.read(1), src.profile
    profile["transform"] = Affine(100.0, 0, tiny.X0 + 37.0, 0, -100.0, tiny.Y_TOP)  # 0.37 px shift
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    data_w, _ = prepare(tiny_config(root), tmp_path / "p")
    assert any("misaligned by +0.370" in w for w in data_w.meta.warnings)
    with pytest.raises(InputError, match=r"2021.tif is not on the working grid \(misaligned"):
        prepare(
            tiny_config(root, **{"grid.allow_warp": False, "covariates.temporal": ["NDVI"]}), tmp_path / "q"
        )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(3, 30),
    width=st.integers(3, 30),
    size=st.integers(3, 7),
    seed=st.integers(0, 2**16),
    n=st.integers(1, 25),
)
def test_fast_equals_naive_property(height: int, width: int, size: int, seed: int, n: int) -> None:
    """Random grids, points anywhere (edges and corners included) and random nodata."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        transform = Affine(30.0, 0, 500_000.0, 0, -30.0, 5_300_000.0)
        profile = {
            "driver": "GTiff",
            "dtype": "float32",
            "count": 1,
            "width": width,
            "height": height,
            "crs": "EPSG:32632",
            "transform": transform,
            "nodata": -1.0,
        }
        for name in ("static/E.tif", "yearly/B/2000.tif", "yearly/B/2001.tif"):
            arr = rng.normal(size=(height, width)).astype(np.float32) * 10
            arr[rng.random((height, width)) < 0.2] = -1.0
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(root / name, "w", **profile) as dst:
                dst.write(arr, 1)
        config = load_config(
            None, {"covariates.root": str(root), "covariates.static": ["E"], "covariates.temporal": ["B"]}
        )
        stack = discover_stack(config)
        x = 500_000.0 + rng.uniform(0, width * 30.0, n)
        y = 5_300_000.0 - rng.uniform(0, height * 30.0, n)
        x[0], y[0] = 500_000.0 + 0.01, 5_300_000.0 - 0.01  # the top-left corner pixel
        rows, cols = stack.grid.rowcol(x, y)
        times = [str(t) for t in rng.choice([2000, 2001], n)]
        fast = extract_windows(stack, rows, cols, times, size, 2)
        naive = extract_windows_naive(stack, x, y, times, size, 2)
        np.testing.assert_array_equal(fast, naive)
