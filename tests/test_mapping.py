"""Mapping: values equal the training-time extraction + models, the nodata policy, the COG and PNG outputs,
resume after a failure, and bit-identical results on Dask threads and a dask.distributed cluster."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import torch
import yaml
from numpy.lib.stride_tricks import sliding_window_view

import socmap._atomic as atomic
import socmap.mapping as mapping
import socmap.mapping.blocks as map_blocks
from socmap.config import MapConfig, TrainConfig, load_config
from socmap.data import RasterStack, discover_stack
from socmap.errors import InputError, OutputError
from socmap.mapping import MapResult, map_soc, parse_bbox, png_paths, uncertainty_method
from socmap.models import SocModel, TargetInfo, load_model, save_model
from socmap.models.deep import DeepModel
from socmap.models.networks import build_network
from socmap.region import load_region, to_crs
from socmap.train import train
from socmap.windows import extract_windows

YEAR = 2023
BLOCK = 64  # several blocks on the 2000 m grid (179 x 184 px)
# a 40 x 40 px box in the south-east (lakes, region edge) for the runs that only compare schedulers
BBOX = [700_000.0, 5_270_000.0, 780_000.0, 5_350_000.0]


def _opts(year: int | str | None = YEAR, **options: Any) -> MapConfig:
    """The map section of these tests: ``map.year`` plus any other option."""
    return MapConfig(year=None if year is None else str(year), **options)


@pytest.fixture(scope="module")
def run_dir(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with two 1-epoch CNN-LSTM runs (an ensemble of two point-prediction models)."""
    overrides: dict[str, object] = {
        "samples.path": str(small_synth_dir / "samples.csv"),
        "covariates.root": str(small_synth_dir / "covariates"),
        "filters.region": str(small_synth_dir / "region.geojson"),  # as the Bavaria configs name it
        "train.epochs": 1,
        "train.seed_models": 1,
        "train.num_runs": 2,
        "train.batch_size": 128,
        "train.wandb_mode": "disabled",
        "train.lr": 0.002,
        "train.lstm_input_size": 16,  # a small LSTM: fast tests; the mapping code does not depend on it
        "train.lstm_hidden_size": 16,
        "train.threads": 1,  # no OpenMP contention on a busy CI machine; restored below
        "uncertainty.calibration_folds": 0,  # uncalibrated (test_mapping_models maps a calibrated run)
    }
    out = tmp_path_factory.mktemp("maprun") / "run"
    threads = torch.get_num_threads()
    try:
        train(load_config(None, overrides), out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def mapped(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MapResult, list[tuple[int, int]]]:
    """The whole region mapped sequentially, with every progress report kept."""
    reports: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("map") / "soc_2023.tif"
    result = map_soc(_opts(block_size=BLOCK), run_dir, out, progress=lambda d, t: reports.append((d, t)))
    return result, reports


def _stack(run_dir: Path) -> RasterStack:
    return discover_stack(load_config(run_dir / "config.yaml"))


def _members(run_dir: Path) -> list[SocModel]:
    return [load_model(run_dir / "runs" / f"run_{i}") for i in range(2)]


def _read(path: Path) -> tuple[np.ndarray, dict[str, Any], dict[str, str]]:
    with rasterio.open(path) as src:
        return src.read(), dict(src.profile), src.tags()


def _grid_offset(path: Path, stack: RasterStack) -> tuple[int, int]:
    """(row, col) of the map's first pixel on the covariate grid (the map must be aligned to it)."""
    with rasterio.open(path) as src:
        t, g = src.transform, stack.grid.transform
    col, row = (t.c - g.c) / g.a, (t.f - g.f) / g.e
    assert col == round(col) and row == round(row) and (t.a, t.e) == (g.a, g.e)
    return round(row), round(col)


def test_map_equals_training_extraction_and_models(run_dir: Path, mapped: Any) -> None:
    """Every pixel's nodata status follows the documented policy, and the values at region-edge, lake-side
    and random pixels equal extract_windows + SocModel.predict (the training-time code) averaged over runs."""
    result, _ = mapped
    stack = _stack(run_dir)
    values, profile, _ = _read(result.out)
    row0, col0 = _grid_offset(result.out, stack)
    h, w = values.shape[1:]
    rows, cols = np.mgrid[row0 : row0 + h, col0 : col0 + w]
    xs, ys = stack.grid.transform @ (cols + 0.5, rows + 0.5)
    region = to_crs(load_region(load_config(run_dir / "config.yaml").filters.region), stack.grid.crs)
    inside = shapely.contains_xy(region, xs, ys)

    windows = extract_windows(stack, rows.ravel(), cols.ravel(), [str(YEAR)] * rows.size, 5, 5)
    valid_fraction = np.isfinite(windows).mean(axis=(1, 2, 3, 4)).reshape(h, w)
    centre_bands = np.isfinite(windows[:, :, 2, 2, -1]).sum(axis=1).reshape(h, w)
    expected = inside & (valid_fraction >= 0.5) & (2 * centre_bands >= 6)
    mapped_px = values[0] != profile["nodata"]
    np.testing.assert_array_equal(mapped_px, expected)
    assert result.n_mapped == expected.sum() and result.n_region_pixels == inside.sum()
    lake = inside & (centre_bands == 1)  # lakes: only Elevation has data
    assert lake.sum() > 5 and not mapped_px[lake].any()

    # pixels to compare: the region edge, next to lakes or other nodata, and a random sample
    pad = np.pad(~mapped_px, 2, constant_values=True)
    near_nodata = sliding_window_view(pad, (5, 5)).any(axis=(2, 3)) & mapped_px
    edge = near_nodata & ~sliding_window_view(np.pad(inside, 1), (3, 3)).all(axis=(2, 3))
    beside_lake = mapped_px & (sliding_window_view(np.pad(lake, 2), (5, 5)).any(axis=(2, 3)))
    assert edge.sum() > 100 and beside_lake.sum() > 20
    rng = np.random.default_rng(0)
    random = np.zeros_like(mapped_px)
    random.flat[rng.choice(np.flatnonzero(mapped_px), 300, replace=False)] = True
    pick = np.flatnonzero((edge | beside_lake | random).ravel())
    assert (np.isfinite(windows[pick]).mean(axis=(1, 2, 3, 4)) < 1).sum() > 100  # many windows hold NaN

    preds = np.stack([p.predict(windows[pick]) for p in _members(run_dir)])
    got = values[:, pick // w, pick % w]
    np.testing.assert_allclose(got[0], preds.mean(axis=0), rtol=1e-5, atol=1e-4)
    assert (got[1:5] == profile["nodata"]).all()  # no calibration, no own intervals: no interval bands
    np.testing.assert_allclose(got[5], preds.std(axis=0, ddof=1), rtol=1e-4, atol=1e-4)  # the run spread
    assert (got[6:] == profile["nodata"]).all()  # no AOA
    assert (values[:, ~mapped_px] == profile["nodata"]).all()


def test_cog_layout_metadata_and_pngs(run_dir: Path, mapped: Any) -> None:
    result, reports = mapped
    with rasterio.open(result.out) as src:
        assert src.driver == "GTiff" and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.profile["compress"] == "deflate"
        assert src.overviews(1) and src.overviews(4)
        assert src.crs.to_epsg() == 25832 and src.nodata == -9999.0
        assert src.count == 8 and set(src.dtypes) == {"float32"}
        assert src.units == ("g/kg",) * 6 + ("1", "1")
        d = src.descriptions
        assert d[0].startswith("mean: prediction of OC (g/kg): mean of 2 models")
        assert all("not available" in text for text in (*d[1:5], *d[6:]))
        assert "standard deviation (ddof=1)" in d[5] and "not a prediction interval" in d[5]
        tags = src.tags()
        assert tags["year"] == "2023" and tags["depth"] == "0-20 cm (LUCAS topsoil)"
        assert tags["covariate_time_labels"] == "2019,2020,2021,2022,2023"
        assert tags["model_ids"].split(",") == result.model_ids and len(result.model_ids) == 2
        assert tags["method"].startswith("none") and tags["socmap_version"]
        assert tags["region"].endswith("region.geojson") and result.region == tags["region"]
        assert tags["model_kinds"] == "cnn_lstm" and "cnn_lstm" in d[5]
        names = [src.tags(i)["name"] for i in range(1, 9)]
        assert names == ["mean", "Q0.05", "Q0.5", "Q0.95", "PI90_width", "model_spread_sd", "DI", "AOA"]
        assert src.tags(6)["method"] == d[5]
        pred = src.read(1, masked=True)
        assert 5 < float(pred.mean()) < 80  # g/kg, original scale
    for png in png_paths(result.out):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        assert matplotlib.image.imread(png).shape[0] > 200
    assert (result.png, result.uncertainty_png) == png_paths(result.out)
    leftovers = sorted(p.name for p in result.out.parent.iterdir())
    assert leftovers == ["soc_2023.png", "soc_2023.tif", "soc_2023_uncertainty.png"]
    # progress: region pixels, monotone, ending at the total
    done = [d for d, _ in reports]
    assert done == sorted(done) and reports[-1] == (result.n_region_pixels, result.n_region_pixels)
    assert result.method == "none" and result.n_blocks_resumed == 0 and result.aoa_share is None


def test_resume_after_failure_keeps_finished_blocks(
    run_dir: Path, mapped: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "soc_2023.tif"
    blocks = out.with_name(out.name + ".blocks")
    save = map_blocks.save_block
    calls = {"n": 0}

    def failing_save(path: Path, values: np.ndarray) -> None:
        if calls["n"] == 3:
            raise RuntimeError("injected failure")
        calls["n"] += 1
        save(path, values)

    monkeypatch.setattr(map_blocks, "save_block", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        map_soc(_opts(block_size=BLOCK), run_dir, out)
    monkeypatch.setattr(map_blocks, "save_block", save)
    finished = sorted(blocks.glob("r*.npy"))
    assert len(finished) == 3 and not out.exists() and not any(blocks.glob(".*tmp*"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished}

    with pytest.raises(OutputError, match="resume=True"):
        map_soc(_opts(block_size=BLOCK), run_dir, out)
    with pytest.raises(OutputError, match="different year"):
        map_soc(_opts(2022, block_size=BLOCK), run_dir, out, resume=True)

    seen: dict[str, tuple[int, bytes]] = {}
    write_outputs = mapping.write_outputs

    def snapshot(plan: Any, limits: tuple[float, float] | None = None) -> int:
        seen.update({p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in blocks.glob("r*.npy")})
        return write_outputs(plan, limits)

    monkeypatch.setattr(mapping, "write_outputs", snapshot)
    reports: list[int] = []
    resumed = map_soc(
        _opts(block_size=BLOCK), run_dir, out, resume=True, progress=lambda d, t: reports.append(d)
    )
    assert resumed.n_blocks_resumed == 3 and resumed.n_blocks == mapped[0].n_blocks
    assert all(seen[name] == before[name] for name in before) and len(seen) == resumed.n_blocks
    assert reports[0] > 0 and not blocks.exists()
    a, profile_a, tags_a = _read(resumed.out)
    b, profile_b, tags_b = _read(mapped[0].out)
    np.testing.assert_array_equal(a, b)
    assert profile_a == profile_b and tags_a == tags_b


def test_full_disk_is_one_line_and_resume_after_freeing_space_is_identical(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early free-space warning, then numpy's short write in the third block (a full disk): one line
    naming the block, no COG, no temporary file; ``resume`` after freeing space gives the uninterrupted COG."""
    options = _opts(bbox=BBOX, block_size=16)
    reference = map_soc(options, run_dir, tmp_path / "reference" / "soc.tif")
    out = tmp_path / "soc.tif"
    blocks = out.with_name(out.name + ".blocks")
    save, calls = np.save, {"n": 0}

    def filling_disk(file: Any, values: Any, *args: Any, **kwargs: Any) -> None:
        if calls["n"] == 2:
            raise OSError("819200 requested and 152544 written")
        calls["n"] += 1
        save(file, values, *args, **kwargs)

    monkeypatch.setattr(np, "save", filling_disk)
    monkeypatch.setattr(atomic, "free_bytes", lambda _path: 1000)
    warned: list[str] = []
    with pytest.raises(OutputError) as info:
        map_soc(options, run_dir, out, on_warning=warned.append)
    assert re.fullmatch(
        rf"cannot write map block {re.escape(str(blocks))}/r\d+_c\d+\.npy: no space left on device \(needs "
        r"about [\d.]+ kB, 1.0 kB free\); free space \(or choose another output\) and run again; map, train "
        r"and cv continue with --resume",
        str(info.value),
    ), str(info.value)
    assert len(warned) == 1 and re.match(
        rf"map {re.escape(str(out))} .* but .* has only 1.0 kB free", warned[0]
    )
    assert len(list(blocks.glob("r*.npy"))) == 2 and not out.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    resumed = map_soc(options, run_dir, out, resume=True)
    assert resumed.n_blocks_resumed == 2
    a, profile_a, tags_a = _read(resumed.out)
    b, profile_b, tags_b = _read(reference.out)
    np.testing.assert_array_equal(a, b)
    assert profile_a == profile_b and tags_a == tags_b


@pytest.mark.parametrize("scheduler", ["threads", "distributed", "client"])
def test_dask_schedulers_equal_sequential_bit_for_bit(
    run_dir: Path, mapped: Any, tmp_path: Path, scheduler: str
) -> None:
    sequential = map_soc(_opts(bbox=BBOX, block_size=16), run_dir, tmp_path / "seq.tif")
    if scheduler == "threads":
        other = map_soc(_opts(bbox=BBOX, block_size=16, scheduler="threads"), run_dir, tmp_path / "dask.tif")
    elif scheduler == "distributed":
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            options = _opts(bbox=BBOX, block_size=16, scheduler=cluster.scheduler_address)
            other = map_soc(options, run_dir, tmp_path / "dask.tif")
    else:  # a caller's own distributed.Client (in-process workers)
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            other = map_soc(_opts(bbox=BBOX, block_size=16), run_dir, tmp_path / "dask.tif", client=client)
    a, profile_a, _ = _read(sequential.out)
    b, profile_b, _ = _read(other.out)
    assert sequential.n_blocks >= 6 and sequential.n_mapped > 500
    np.testing.assert_array_equal(a, b)
    assert profile_a == profile_b
    # the bbox map is the full map's window (float tolerance: other batch compositions)
    full, _, _ = _read(mapped[0].out)
    stack = _stack(run_dir)
    (r0, c0), (r1, c1) = _grid_offset(mapped[0].out, stack), _grid_offset(sequential.out, stack)
    window = full[:, r1 - r0 : r1 - r0 + a.shape[1], c1 - c0 : c1 - c0 + a.shape[2]]
    np.testing.assert_allclose(a, window, rtol=1e-5, atol=1e-4)


def _single_model_run(run_dir: Path, target: Path) -> Path:
    target.mkdir()
    shutil.copy(run_dir / "config.yaml", target / "config.yaml")
    for name in (
        "model.pt",
        "model.json",
        "metrics.json",
    ):  # a finished run folder (map refuses unfinished ones)
        shutil.copy(run_dir / name, target / name)
    return target


def test_single_point_model_has_no_uncertainty_bands(run_dir: Path, tmp_path: Path) -> None:
    single = _single_model_run(run_dir, tmp_path / "single")
    result = map_soc(_opts(bbox=BBOX), single, tmp_path / "m.tif")
    values, profile, tags = _read(result.out)
    assert result.method == "none" and tags["method"].startswith("none")
    mapped_px = values[0] != profile["nodata"]
    assert mapped_px.sum() > 500 and (values[1:] == profile["nodata"]).all()
    with rasterio.open(result.out) as src:
        assert all("not available" in d for d in src.descriptions[1:])
    assert result.uncertainty_png.read_bytes()[:4] == b"\x89PNG"


def _quantile_member(base: DeepModel, seed: int) -> DeepModel:
    """A CNN-LSTM with a Q05/Q50/Q95 head (random weights), the base model's inputs and normalisation."""
    member = type(base)(TrainConfig(loss_type="quantile", quantiles=[0.05, 0.5, 0.95]))
    member.net_spec = {"name": base.net_spec["name"], "kwargs": {**base.net_spec["kwargs"], "n_outputs": 3}}
    torch.manual_seed(seed)
    member.net = build_network(member.net_spec["name"], **member.net_spec["kwargs"]).eval()
    member.normalizer, member.transform = base.normalizer, base.transform
    member.inputs, member.model_id = base.inputs, f"q{seed}"
    return member


def test_quantile_heads_are_averaged(run_dir: Path, tmp_path: Path) -> None:
    """Two members with quantile heads and no calibration: Q0.05/Q0.5/Q0.95 are the heads' own quantiles
    averaged over members (uncalibrated), band 5 their width, band 6 the members' spread."""
    folder = _single_model_run(run_dir, tmp_path / "quantile")
    base = load_model(run_dir)
    assert isinstance(base, DeepModel)
    members = [_quantile_member(base, i) for i in range(2)]
    for i, member in enumerate(members):
        save_model(member, folder / "runs" / f"run_{i}")
    assert uncertainty_method(members) == "model_intervals"
    result = map_soc(_opts(bbox=BBOX), folder, tmp_path / "q.tif")
    values, profile, tags = _read(result.out)
    assert result.method == "model_intervals" and tags["model_ids"] == "q0,q1"
    stack = _stack(run_dir)
    row0, col0 = _grid_offset(result.out, stack)
    r, c = np.nonzero(values[0] != profile["nodata"])
    windows = extract_windows(stack, r + row0, c + col0, [str(YEAR)] * r.size, 5, 5)
    heads = [m.predict_quantiles(windows, (0.05, 0.5, 0.95)) for m in members]
    assert all(h is not None for h in heads)
    q = np.mean([h for h in heads if h is not None], axis=0)
    pred = np.stack([m.predict(windows) for m in members])
    np.testing.assert_allclose(values[0, r, c], pred.mean(0), rtol=1e-5, atol=1e-4)
    for j in range(3):
        np.testing.assert_allclose(values[1 + j, r, c], q[:, j], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(values[4, r, c], q[:, 2] - q[:, 0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(values[5, r, c], pred.std(0, ddof=1), rtol=1e-4, atol=1e-4)
    with rasterio.open(result.out) as src:
        assert "cnn_lstm quantile head" in " ".join(src.descriptions)


def test_other_resolution_warps_and_warns(run_dir: Path, tmp_path: Path) -> None:
    result = map_soc(_opts(bbox=BBOX, resolution=4000.0), run_dir, tmp_path / "r.tif")
    with rasterio.open(result.out) as src:
        assert src.res == (4000.0, 4000.0) and 300 < result.n_mapped < 600
    assert any("different area" in w for w in result.warnings)


def test_region_from_argument_or_config(run_dir: Path, tmp_path: Path) -> None:
    """A user polygon limits the map to its pixel centres; without one, the config's filters.region is used."""
    polygon = {"type": "Polygon", "coordinates": [[[11.0, 48.0], [11.6, 48.0], [11.3, 48.4], [11.0, 48.0]]]}
    path = tmp_path / "triangle.geojson"
    path.write_text(
        json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": polygon}]})
    )
    stack = _stack(run_dir)
    region = to_crs(load_region(path), stack.grid.crs)

    def check(result: MapResult) -> None:
        values, profile, tags = _read(result.out)
        row0, col0 = _grid_offset(result.out, stack)
        rows, cols = np.mgrid[row0 : row0 + values.shape[1], col0 : col0 + values.shape[2]]
        inside = shapely.contains_xy(region, *(stack.grid.transform @ (cols + 0.5, rows + 0.5)))
        assert result.n_region_pixels == inside.sum() > 200 and tags["region"] == str(path)
        assert not (values[0] != profile["nodata"])[~inside].any()
        minx, miny, maxx, maxy = region.bounds  # the output is cut to the polygon's bounds
        assert values.shape[1] <= (maxy - miny) / 2000 + 2 and values.shape[2] <= (maxx - minx) / 2000 + 2

    check(map_soc(_opts(region=path), run_dir, tmp_path / "arg.tif"))
    folder = _single_model_run(run_dir, tmp_path / "with_region")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["filters"]["region"] = str(path)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    check(map_soc(_opts(), folder, tmp_path / "config.tif"))


def test_input_errors(run_dir: Path, mapped: Any, tmp_path: Path) -> None:
    """Errors name the config keys and parameters (map.year, map.bbox, overwrite=True), never CLI flags."""
    with pytest.raises(InputError, match=r"year 2005: .* 2001\.\.2005 .* 2002\.\.2023"):
        map_soc(_opts(2005), run_dir, tmp_path / "a.tif")
    with pytest.raises(InputError, match=r"map\.year 2031: .* 2027\.\.2031 .* 2002\.\.2023"):
        map_soc(_opts(2031), run_dir, tmp_path / "a.tif")
    with pytest.raises(InputError, match=r"map\.year is not set: .* 2002\.\.2023"):
        map_soc(_opts(None), run_dir, tmp_path / "a.tif")
    with pytest.raises(
        InputError, match=r"map\.bbox 0,0,10,10 \(in EPSG:25832\) does not overlap the region "
    ):
        map_soc(_opts(bbox=[0.0, 0.0, 10.0, 10.0]), run_dir, tmp_path / "a.tif")
    africa = tmp_path / "africa.geojson"
    africa.write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[20, 0], [21, 0], [21, 1], [20, 1], [20, 0]]]})
    )
    with pytest.raises(
        InputError,
        match=rf"region {africa.name} \(map\.region\) does not overlap the covariate grid: the region covers "
        r"lon 20\.0000\.\.21\.0000, lat 0\.0000\.\.1\.0000; the grid covers x .* in EPSG:25832; lon .*, lat ",
    ):
        map_soc(_opts(region=africa), run_dir, tmp_path / "a.tif")
    with pytest.raises(InputError, match=r"map\.scheduler: scheduler 'thread'"):
        load_config(None, {"map.scheduler": "thread"})
    unchecked = MapConfig.model_construct(year=str(YEAR), scheduler="thread")  # pydantic validation skipped
    with pytest.raises(InputError, match=r"map\.scheduler 'thread'"):
        map_soc(unchecked, run_dir, tmp_path / "a.tif")
    with pytest.raises(InputError, match=r"map\.block_size 8: expected 16\.\.8192"):
        map_soc(MapConfig.model_construct(year=str(YEAR), block_size=8), run_dir, tmp_path / "a.tif")
    with pytest.raises(InputError, match=r"config\.yaml is missing"):
        map_soc(_opts(), tmp_path, tmp_path / "a.tif")
    with pytest.raises(OutputError, match=r"\.tif"):
        map_soc(_opts(), run_dir, tmp_path / "a.png")
    with pytest.raises(OutputError, match="overwrite=True"):
        map_soc(_opts(), run_dir, mapped[0].out)
    assert [p.name for p in tmp_path.iterdir()] == ["africa.geojson"]  # no output was left behind
    assert parse_bbox("1,2,3,4") == [1.0, 2.0, 3.0, 4.0]
    for bad in ("1,2,3", "a,b,c,d", "3,2,1,4"):
        with pytest.raises(InputError, match=r"map\.bbox"):
            parse_bbox(bad)


def test_depth_tag_only_for_lucas_oc() -> None:
    assert mapping.depth_tag(TargetInfo("OC", "g/kg")) == "0-20 cm (LUCAS topsoil)"
    assert mapping.depth_tag(TargetInfo("SOC", "g/kg")) == "unknown"
    assert mapping.depth_tag(TargetInfo("OC", "%")) == "unknown"


def test_unfinished_run_folder_is_refused(run_dir: Path, tmp_path: Path) -> None:
    """A run folder whose training was interrupted (runs/ but no metrics.json) would map with only the runs that
    finished: refused with a one-line error instead."""
    folder = _single_model_run(run_dir, tmp_path / "unfinished")
    shutil.copytree(run_dir / "runs" / "run_0", folder / "runs" / "run_0")
    (folder / "metrics.json").unlink()
    with pytest.raises(InputError, match=r"is unfinished .no metrics.json.*socmap train --resume"):
        map_soc(_opts(bbox=BBOX), folder, tmp_path / "u.tif")


def _spy_precision(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The precision of every deep-model network call from now on (the option reached the model)."""
    seen: list[str] = []
    original = DeepModel.raw_output

    def spy(self: DeepModel, windows: Any, batch_size: int = 4096) -> torch.Tensor:
        seen.append(self.precision)
        return original(self, windows, batch_size)

    monkeypatch.setattr(DeepModel, "raw_output", spy)
    return seen


def test_bf16_map_is_within_tolerance_of_fp32_and_reaches_the_model(
    run_dir: Path, small_synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``map.precision: bf16`` runs every deep member's network under bf16 autocast (the option reaches the model
    call); the map stays within 2 % of the target's interquartile range of the fp32 map (stated tolerance: bf16
    keeps 8 bits of mantissa, and a 1-epoch network is not smoother than a trained one), the nodata mask and
    the region are unchanged, and the manifest tells the two apart (a bf16 map never resumes an fp32 one)."""
    import pandas as pd

    from socmap.models.base import precision_note

    seen = _spy_precision(monkeypatch)
    fp32 = map_soc(_opts(bbox=BBOX, block_size=BLOCK), run_dir, tmp_path / "fp32.tif")
    assert set(seen) == {"fp32"}
    seen.clear()
    bf16 = map_soc(_opts(bbox=BBOX, block_size=BLOCK, precision="bf16"), run_dir, tmp_path / "bf16.tif")
    assert set(seen) == {"bf16"}
    a, _, _ = _read(fp32.out)
    b, _, _ = _read(bf16.out)
    nodata = a == -9999.0
    np.testing.assert_array_equal(nodata, b == -9999.0)
    column = load_model(run_dir / "runs" / "run_0").require_inputs().target.column
    target = pd.read_csv(small_synth_dir / "samples.csv")[column].dropna()
    iqr = float(target.quantile(0.75) - target.quantile(0.25))
    change = np.abs(a[0] - b[0])[~nodata[0]]
    assert change.max() <= 0.02 * iqr, (change.max(), iqr)
    with rasterio.open(fp32.out) as fa, rasterio.open(bf16.out) as fb:
        assert fa.tags()["precision"] == "fp32" and fb.tags()["precision"].startswith("bf16: deep models")
    note = precision_note("bf16")
    assert (note in bf16.warnings) if note else not bf16.warnings
    assert not fp32.warnings


def test_a_uniform_interval_width_is_said_in_words() -> None:
    """A constant-width (plain split-conformal) interval gets a sentence with its width, not a flat colour;
    float32 overview averages of one width still count as one width; a varying width gets the colour map."""
    from socmap.mapping.previews import uniform_width_note

    width = np.ma.masked_invalid(np.array([[2.78, 2.78, np.nan], [2.78, 2.78, 2.78]], np.float32))
    note = uniform_width_note(width.compressed(), "pH")
    assert note is not None and note.startswith("the interval has the same width everywhere: 2.78 pH\n")
    rounded = np.float32(2.78) * (1 + np.array([0.0, 3e-7, -5e-7], np.float32))
    assert uniform_width_note(rounded, "pH") is not None
    assert uniform_width_note(np.array([2.78, 2.79]), "pH") is None
    assert uniform_width_note(np.array([np.nan]), "pH") is None


def test_refused_map_output_is_one_line_without_a_progress_bar(run_dir: Path, tmp_path: Path) -> None:
    """An output name ``map`` refuses gives its one-line error only: the progress bar starts with the first
    mapped block, so no empty bar is left above the error."""
    from tests.conftest import run_cli

    out = tmp_path / "a.png"
    bbox = ",".join(str(v) for v in BBOX)
    result = run_cli("map", "--run", str(run_dir), "--year", str(YEAR), "--bbox", bbox, "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == [f"error: out {out}: expected a GeoTIFF file name ending in .tif"]


def test_precision_flows_from_cli_and_config_into_the_model(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``socmap map --precision bf16`` and ``map.precision`` in the config reach the deep model's call; an
    unknown value is refused naming the key and the flag; ``socmap predict --precision`` reaches it too."""
    from typer.testing import CliRunner

    from socmap.cli import app, flag_message
    from socmap.mapping.members import clear_cache
    from socmap.predict import predict_samples

    seen = _spy_precision(monkeypatch)
    bbox = ",".join(str(v) for v in BBOX)
    args = ["map", "--run", str(run_dir), "--year", str(YEAR), "--bbox", bbox, "--block-size", "64"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a.tif"), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {"bf16"}
    assert load_config(None, {"map.precision": "bf16"}).map.precision == "bf16"
    assert load_config(None).map.precision == "fp32"
    with pytest.raises(InputError, match=r"map\.precision"):
        load_config(None, {"map.precision": "fp16"})
    with pytest.raises(InputError, match=r"map\.precision 'fp16'") as refused:
        map_soc(
            MapConfig.model_construct(**{**_opts().model_dump(), "precision": "fp16"}),
            run_dir,
            tmp_path / "x.tif",
        )
    assert "--precision" in flag_message(str(refused.value))
    seen.clear()
    config = load_config(run_dir / "config.yaml")
    predict_samples(config, run_dir, tmp_path / "p.csv", precision="bf16")
    assert seen and set(seen) == {"bf16"}
    seen.clear()
    predict_samples(config, run_dir, tmp_path / "p.csv", overwrite=True)
    assert seen and set(seen) == {"fp32"}
    clear_cache()
