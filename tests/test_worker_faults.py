"""A map worker process killed mid-block (SIGKILL, as the kernel's OOM killer does): the block is retried in a
fresh worker, or the map stops with one line and ``--resume`` finishes it; either way the COG equals an
uninterrupted map's, byte for byte in every band."""

from __future__ import annotations

import importlib
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

import socmap.mapping.schedulers as schedulers
from socmap.config import MapConfig, load_config
from socmap.errors import OutputError
from socmap.mapping import MapResult, map_soc
from socmap.mapping.blocks import run_block
from socmap.mapping.plan import Block, MapJob
from socmap.train import train

BBOX = [700_000.0, 5_270_000.0, 780_000.0, 5_350_000.0]  # 40 x 40 px of the 2000 m grid: 9 blocks of 16
VICTIM = 4  # the block (in plan order, of those with region pixels) whose worker is killed


def options(**extra: Any) -> MapConfig:
    return MapConfig(year="2023", bbox=BBOX, block_size=16, **extra)


@pytest.fixture(scope="module")
def run_dir(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear run (fast to train and map; the scheduler code does not depend on the model kind)."""
    overrides: dict[str, object] = {
        "samples.path": str(small_synth_dir / "samples.csv"),
        "covariates.root": str(small_synth_dir / "covariates"),
        "train.model": "linear",
        "train.num_runs": 1,
        "train.wandb_mode": "disabled",
        "uncertainty.calibration_folds": 0,
    }
    out = tmp_path_factory.mktemp("faultrun") / "run"
    train(load_config(None, overrides), out)
    return out


@pytest.fixture(scope="module")
def reference(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> MapResult:
    """The uninterrupted map, in this process."""
    return map_soc(options(), run_dir, tmp_path_factory.mktemp("ref") / "ref.tif")


@pytest.fixture(scope="module")
def victim(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The file name of the block whose worker is killed."""
    from socmap.mapping import plan_map

    plan = plan_map(options(), run_dir, tmp_path_factory.mktemp("plan") / "plan.tif")
    names = [b.name for b in plan.blocks if b.n_region]
    assert len(names) >= 6
    return names[VICTIM]


def killer(victim: str, marker: Path | None) -> Any:
    """A ``run_block`` that SIGKILLs its own worker process at the victim block: once (``marker``: the file
    that records the kill), or every time (None). A nested function: Dask ships it to workers by value."""

    def run(job: MapJob, block: Block, *args: Any) -> int:
        if block.name == victim and (marker is None or not marker.exists()):
            if marker is not None:
                marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return run_block(job, block, *args)

    return run


def assert_same_cog(a: Path, b: Path) -> None:
    with rasterio.open(a) as src_a, rasterio.open(b) as src_b:
        assert src_a.profile == src_b.profile and src_a.tags() == src_b.tags()
        np.testing.assert_array_equal(src_a.read(), src_b.read())


def test_killed_worker_is_retried_to_the_same_cog(
    run_dir: Path, reference: MapResult, victim: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedulers, "run_block", killer(victim, tmp_path / "killed-once"))
    result = map_soc(options(scheduler="processes"), run_dir, tmp_path / "map.tif")
    assert (tmp_path / "killed-once").exists()  # the worker was killed, and the map still finished
    assert result.n_mapped == reference.n_mapped
    assert_same_cog(reference.out, result.out)


def test_worker_killed_twice_stops_with_one_line_then_resumes(
    run_dir: Path, reference: MapResult, victim: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "map.tif"
    with monkeypatch.context() as patch:
        patch.setattr(schedulers, "run_block", killer(victim, None))
        with pytest.raises(OutputError) as caught:
            map_soc(options(scheduler="processes"), run_dir, out)
    message = str(caught.value)
    assert "\n" not in message and "died twice" in message and "--resume" in message
    assert "blocks are finished and kept in" in message
    assert not out.exists()
    kept = len(list(out.parent.glob("*.blocks/r*.npy")))
    assert kept < reference.n_blocks  # the victim block is never written
    resumed = map_soc(options(), run_dir, out, resume=True)  # in this process: the blocks are the same
    assert resumed.n_blocks_resumed == kept and resumed.n_blocks == reference.n_blocks
    assert_same_cog(reference.out, resumed.out)


@pytest.mark.parametrize("workers", [2, 1])
def test_distributed_worker_killed(
    run_dir: Path,
    reference: MapResult,
    victim: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    """Two workers: the cluster reruns the dead worker's block. One worker: the map's scattered job dies with
    it, so the map stops with one line; ``--resume`` then finishes it. Both give the uninterrupted COG."""
    from distributed import LocalCluster

    out = tmp_path / "map.tif"
    with monkeypatch.context() as patch:
        patch.setattr(schedulers, "run_block", killer(victim, tmp_path / "killed-once"))
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            if workers == 2:
                result = map_soc(options(scheduler=cluster.scheduler_address), run_dir, out)
            else:
                with pytest.raises(OutputError) as caught:
                    map_soc(options(scheduler=cluster.scheduler_address), run_dir, out)
                assert "\n" not in str(caught.value) and "--resume" in str(caught.value)
                result = map_soc(options(), run_dir, out, resume=True)
    assert (tmp_path / "killed-once").exists()
    assert_same_cog(reference.out, result.out)


def test_multi_year_map_with_a_killed_worker_stops_with_one_line_then_resumes(
    run_dir: Path, victim: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`map --years` on processes: a dead worker stops the map with one line; `--resume` finishes it to the
    COGs of an uninterrupted multi-year map."""
    import socmap.mapping.years as years
    from socmap.mapping.years import map_years

    yrs = ["2022", "2023"]
    reference = map_years(options(), yrs, run_dir, tmp_path / "ref" / "soc.tif")
    real = years.run_years_block

    def kill(jobs: Any, block: Block, *args: Any) -> Any:
        if block.name == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return importlib.import_module("socmap.mapping.years").run_years_block(jobs, block, *args)

    out = tmp_path / "run" / "soc.tif"
    with monkeypatch.context() as patch:
        patch.setattr(years, "run_years_block", kill)
        with pytest.raises(OutputError) as caught:
            map_years(options(scheduler="processes"), yrs, run_dir, out)
    assert years.run_years_block is real
    message = str(caught.value)
    assert "\n" not in message and "worker process died" in message and "--resume" in message
    resumed = map_years(options(), yrs, run_dir, out, resume=True)
    for year in yrs:
        assert_same_cog(reference.outs[year], resumed.outs[year])
