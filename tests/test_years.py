"""Multi-year maps in one pass (non-Bavaria fixture): each year equals its single-year map, rasters are read
once per block for all years, the CF NetCDF cube holds the COGs' bands, resume works per (block, year)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

import socmap.mapping.years as years_mod
from socmap.config import MapConfig
from socmap.errors import InputError, OutputError
from socmap.mapping import map_soc
from socmap.mapping.years import YearsResult, map_years, parse_years, read_cube

from tests.data.temporal.data import YEARS, train_run

BLOCK = 16  # 36 x 40 px: 9 blocks
MAPPED = ["2014", "2018", "2022"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("temporal"))


@pytest.fixture(scope="module")
def mapped(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> YearsResult:
    out = tmp_path_factory.mktemp("years") / "soc.tif"
    return map_years(MapConfig(block_size=BLOCK), MAPPED, run_dir, out)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_parse_years() -> None:
    assert parse_years("2010:2013") == ["2010", "2011", "2012", "2013"]
    assert parse_years("2010:2016:3") == ["2010", "2013", "2016"]
    assert parse_years("2010, 2015,2023") == ["2010", "2015", "2023"]
    for bad in ("2013:2010", "a:b", "2010:2012:0", ",", "2010,2010"):
        with pytest.raises(InputError, match="--years"):
            parse_years(bad)


def test_each_year_equals_its_single_year_map(run_dir: Path, mapped: YearsResult, tmp_path: Path) -> None:
    assert mapped.years == MAPPED and mapped.unit == "%" and mapped.method == "conformal"
    single = map_soc(MapConfig(block_size=BLOCK, year="2018"), run_dir, tmp_path / "soc_2018.tif")
    np.testing.assert_array_equal(_read(mapped.outs["2018"]), _read(single.out))
    with rasterio.open(mapped.outs["2022"]) as src:
        assert src.tags()["year"] == "2022" and src.tags()["covariate_time_labels"] == "2021,2022"
    for year in MAPPED:  # the predictions differ between years (NDVI has a trend)
        assert mapped.n_mapped[year] == single.n_mapped
    assert not np.array_equal(_read(mapped.outs["2014"])[0], _read(mapped.outs["2022"])[0])
    assert not any(p.name.endswith(".blocks") for p in mapped.cube.parent.iterdir())


def test_cube_is_cf_netcdf_with_the_cogs_bands(mapped: YearsResult) -> None:
    xr = pytest.importorskip("xarray")
    from pyproj import CRS

    with xr.open_dataset(mapped.cube) as ds:
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds["mean"].dims == ("time", "y", "x") and ds["mean"].attrs["units"] == "%"
        assert ds["mean"].attrs["grid_mapping"] == "spatial_ref"
        assert CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]) == CRS.from_epsg(32737)
        assert [str(t)[:10] for t in ds["time"].values] == [f"{y}-07-01" for y in MAPPED]
        for i, year in enumerate(MAPPED):
            cog = _read(mapped.outs[year]).astype(np.float64)
            cog[cog == -9999.0] = np.nan
            for b, name in enumerate(mapped.bands):
                var = name.replace(".", "_")
                np.testing.assert_array_equal(ds[var].values[i], cog[b].astype(np.float32))
        with rasterio.open(mapped.outs[MAPPED[0]]) as src:
            t = src.transform
            np.testing.assert_allclose(ds["x"].values[:2], [t.c + t.a / 2, t.c + 1.5 * t.a])
    labels, values = read_cube(mapped.cube, "Q0.95")
    assert labels == MAPPED and values.shape[0] == 3
    with rasterio.open(f"NETCDF:{mapped.cube}:mean") as src:  # GDAL reads the grid mapping too
        assert src.crs.to_epsg() == 32737 and src.count == 3


def test_rasters_are_read_once_per_block_for_all_years(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str | None]] = []
    real = years_mod.read_inputs

    def counting(stack: Any, labels: Any, *args: Any) -> Any:
        calls.append(list(labels))
        return real(stack, labels, *args)

    monkeypatch.setattr(years_mod, "read_inputs", counting)
    result = map_years(MapConfig(block_size=BLOCK), ["2015", "2016", "2017"], run_dir, tmp_path / "s.tif")
    assert len(calls) == result.n_blocks == 9  # one read per block, not one per block and year
    assert all(
        c == ["2014", "2015", "2016", "2017"] for c in calls
    )  # the union of (2014,15), (15,16), (16,17)


def test_resume_recomputes_only_missing_block_years(
    run_dir: Path, mapped: YearsResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "soc.tif"
    real_save = years_mod.save_block
    saved: list[Path] = []

    def failing(path: Path, values: Any) -> None:
        if len(saved) == 10:
            raise RuntimeError("killed")
        saved.append(path)
        real_save(path, values)

    monkeypatch.setattr(years_mod, "save_block", failing)
    with pytest.raises(RuntimeError, match="killed"):
        map_years(MapConfig(block_size=BLOCK), MAPPED, run_dir, out)
    with pytest.raises(OutputError, match="interrupted map"):
        map_years(MapConfig(block_size=BLOCK), MAPPED, run_dir, out)
    monkeypatch.setattr(years_mod, "save_block", real_save)
    computed: list[str] = []
    real_compute = years_mod.compute_block

    def counting(job: Any, block: Any, *args: Any, **kwargs: Any) -> Any:
        computed.append(f"{job.labels}-{block.name}")
        return real_compute(job, block, *args, **kwargs)

    monkeypatch.setattr(years_mod, "compute_block", counting)
    resumed = map_years(MapConfig(block_size=BLOCK), MAPPED, run_dir, out, resume=True)
    assert resumed.n_resumed == 10 and len(computed) == 9 * 3 - 10
    for year in MAPPED:
        np.testing.assert_array_equal(_read(resumed.outs[year]), _read(mapped.outs[year]))


def test_dask_threads_equal_in_process(run_dir: Path, mapped: YearsResult, tmp_path: Path) -> None:
    result = map_years(MapConfig(block_size=BLOCK, scheduler="threads"), MAPPED, run_dir, tmp_path / "t.tif")
    for year in MAPPED:
        np.testing.assert_array_equal(_read(result.outs[year]), _read(mapped.outs[year]))


def test_refusals(run_dir: Path, mapped: YearsResult, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"map.year 2012: a map needs covariates for 2011..2012"):
        map_years(MapConfig(block_size=BLOCK), ["2012", "2013"], run_dir, tmp_path / "a.tif")
    assert YEARS[0] == 2012
    with pytest.raises(OutputError, match="exists"):
        map_years(MapConfig(block_size=BLOCK), MAPPED, run_dir, mapped.outs["2014"].with_name("soc.tif"))


def test_cli_years(run_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "soc.tif"
    proc = run_cli(
        "map", "--run", str(run_dir), "--years", "2020:2021", "--out", str(out), "--block-size", "32"
    )
    assert proc.returncode == 0, proc.stderr
    assert "mapped 2 years (2020..2021)" in proc.stdout and "CF-1.8 NetCDF" in proc.stdout
    assert (
        (tmp_path / "soc_2020.tif").is_file()
        and (tmp_path / "soc_2021.tif").is_file()
        and out.with_suffix(".nc").is_file()
    )
    bad = run_cli("map", "--run", str(run_dir), "--years", "2021:2020", "--out", str(tmp_path / "b.tif"))
    assert (
        bad.returncode == 2
        and len(bad.stderr.strip().splitlines()) == 1
        and "--years '2021:2020'" in bad.stderr
    )
