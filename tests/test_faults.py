"""Faults a user meets on a shared cluster, injected so they run anywhere: a full disk, a read-only or quota-
limited folder (every writer ends with one line naming the path, nothing half-written under a final name, a
rerun after "freeing space" gives the same result), a truncated / edited / stale prepared cache (refused or
rebuilt, never used) and odd rasters (NaN nodata, ±Inf, scaled integers, a nodata value per year)."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

import socmap._atomic as atomic
from socmap import cli
from socmap._atomic import atomic_file, write_text
from socmap.config import SocmapConfig, load_config
from socmap.errors import OutputError
from socmap.mapping.blocks import save_block
from socmap.models.trainer import Checkpoint, LoopState
from socmap.windows import DamagedCache, load_prepared, prepare

from tests.data.tiny import data as tiny

FREE = 1_500_000  # the free space every test reports (monkeypatched): messages are exact
HINT = "free space (or choose another output) and run again; map, train and cv continue with --resume"


def tiny_config(root: Path) -> SocmapConfig:
    return load_config(
        None,
        {
            "samples.path": str(root / "samples.csv"),
            "covariates.root": str(root / "covariates"),
            "covariates.static": ["Elevation"],
            "covariates.temporal": ["NDVI", "LST"],
            "windows.time_steps": 3,
        },
    )


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def fixed_free_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "free_bytes", lambda _path: FREE)


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings an interrupted write left behind (there must be none)."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def enospc(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------------------------------- full disk
def test_map_block_short_write_is_one_line_and_leaves_no_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy's short write inside the block saver (what a full disk gives) names the block and its size."""

    def short_write(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("819200 requested and 152544 written")

    monkeypatch.setattr(np, "save", short_write)
    path = tmp_path / "soc.tif.blocks" / "r0_c0.npy"
    with pytest.raises(OutputError) as info:
        save_block(path, np.zeros((8, 160, 160), np.float32))
    assert str(info.value) == (
        f"cannot write map block {path}: no space left on device (needs about 819.3 kB, 1.5 MB free); {HINT}"
    )
    assert not path.exists() and leftovers(tmp_path) == []


def test_checkpoint_torch_zip_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's zip writer reports a full disk as ``unexpected pos``; the old checkpoint stays intact."""
    checkpoint = Checkpoint(tmp_path)
    assert checkpoint.path is not None
    path = checkpoint.path
    path.write_bytes(b"previous checkpoint")

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = LoopState()
    state.history.append({"loss": 1.0})
    with pytest.raises(OutputError) as info:
        checkpoint.save(model, optimizer, None, state)
    assert str(info.value) == (
        f"cannot write training checkpoint {path}: no space left on device (1.5 MB free); {HINT}"
    )
    assert path.read_bytes() == b"previous checkpoint" and leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) for a real short write")
def test_xgboost_model_file_on_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XGBoost reports a full disk as its own error (``FileStream.Write incomplete``, a ValueError): the real
    library error, produced by writing to /dev/full, becomes the one-line disk message; no file is left."""
    from xgboost import XGBRegressor

    from socmap.models.trees import ESTIMATOR_UBJ, XGBoostModel

    rng = np.random.default_rng(0)
    estimator = XGBRegressor(n_estimators=5, n_jobs=1).fit(rng.normal(size=(50, 3)), rng.normal(size=50))
    full = tmp_path / "full.ubj"
    full.symlink_to("/dev/full")
    real_save = estimator.save_model
    monkeypatch.setattr(estimator, "save_model", lambda _path: real_save(str(full)))
    model = XGBoostModel()
    model.estimator = estimator
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(OutputError) as info:
        model.save_estimator(folder)
    assert str(info.value) == (
        f"cannot write model file {folder / ESTIMATOR_UBJ}: no space left on device (1.5 MB free); {HINT}"
    )
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "code", "reason", "what"),
    [
        ("metrics_per_fold.csv", errno.ENOSPC, "no space left on device (1.5 MB free)", "table"),
        ("report.html", errno.EDQUOT, "disk quota exceeded (1.5 MB free)", "report"),
        ("soc_2023.png", errno.EROFS, "read-only file system", "preview image"),
        ("cv.json", errno.EACCES, "permission denied", "metadata"),
    ],
)
def test_every_atomic_writer_names_path_reason_and_what(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, code: int, reason: str, what: str
) -> None:
    """cv tables, the report, previews, JSON: the fault of the output location, one line, no final file."""

    def fail(self: Path, *_args: Any, **_kwargs: Any) -> int:
        raise OSError(code, "injected")

    monkeypatch.setattr(Path, "write_text", fail)
    target = tmp_path / name
    with pytest.raises(OutputError) as info:
        write_text(target, "content")
    hint = (
        HINT if code in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable or choose another output"
    )
    assert str(info.value) == f"cannot write {what} {target}: {reason}; {hint}"
    assert not target.exists() and leftovers(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path: Path) -> None:
    """Only disk faults are translated: a bug in a writer stays a bug (and still leaves no file)."""
    with pytest.raises(ValueError, match="a bug"), atomic_file(tmp_path / "x.csv"):
        raise ValueError("a bug")
    with pytest.raises(OSError, match="Connection reset"), atomic_file(tmp_path / "x.csv"):
        raise OSError(errno.ECONNRESET, "Connection reset")
    assert list(tmp_path.iterdir()) == []


def test_prepare_on_a_full_disk_then_after_freeing_space(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """windows.npy is written without a memory map (no SIGBUS): a full disk is one line, no prepared folder
    remains, and the rerun after freeing space writes the same windows as a run that never failed."""
    out = tmp_path / "prepared"
    save = np.save
    monkeypatch.setattr(np, "save", enospc)
    with pytest.raises(OutputError) as info:
        prepare(tiny_config(tiny_root), out)
    assert str(info.value).startswith(
        f"cannot write prepared folder {out}: no space left on device (needs about "
    )
    assert str(info.value).endswith(f" kB, 1.5 MB free); {HINT}")
    assert not out.exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(np, "save", save)
    data, reused = prepare(tiny_config(tiny_root), out)
    reference, _ = prepare(tiny_config(tiny_root), tmp_path / "reference")
    assert not reused
    np.testing.assert_array_equal(np.asarray(data.windows), np.asarray(reference.windows))


def test_prepare_refuses_before_writing_when_space_is_short(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic, "free_bytes", lambda _path: 1000)
    out = tmp_path / "prepared"
    with pytest.raises(
        OutputError, match=r"^prepared folder .* \(windows.npy\) needs about .* but .* has only"
    ):
        prepare(tiny_config(tiny_root), out)
    assert not out.exists()


def test_cli_prints_one_line_and_exits_2(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI entry point (in process, so the failure can be injected): ``error: ...``, exit 2."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"samples: {{path: {tiny_root / 'samples.csv'}}}\ncovariates: {{root: {tiny_root / 'covariates'}, "
        "static: [Elevation], temporal: [NDVI, LST]}\n"
    )
    monkeypatch.setattr(np, "save", enospc)
    monkeypatch.setattr(
        sys, "argv", ["socmap", "prepare", "--config", str(config), "--out", str(tmp_path / "p")]
    )
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(f"error: cannot write prepared folder {tmp_path / 'p'}: no space left on device")
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------- damaged cache
@pytest.fixture
def cache(tiny_root: Path, tmp_path: Path) -> tuple[Path, np.ndarray]:
    out = tmp_path / "prepared"
    data, _ = prepare(tiny_config(tiny_root), out)
    return out, np.array(data.windows)


def test_truncated_windows_are_refused_or_rebuilt(tiny_root: Path, cache: tuple[Path, np.ndarray]) -> None:
    out, windows = cache
    size = (out / "windows.npy").stat().st_size
    with open(out / "windows.npy", "r+b") as fh:
        fh.truncate(size - 100)
    expected = (
        f"prepared folder {out} is damaged: windows.npy is {size - 100} bytes, {size} when prepared "
        "(truncated or edited)"
    )
    with pytest.raises(DamagedCache) as info:
        load_prepared(out)
    assert str(info.value) == expected
    with pytest.raises(DamagedCache) as info:
        prepare(tiny_config(tiny_root), out)
    assert str(info.value) == expected + "; pass --overwrite to rebuild it"
    data, reused = prepare(tiny_config(tiny_root), out, overwrite=True)
    assert not reused
    np.testing.assert_array_equal(np.asarray(data.windows), windows)


def test_edited_samples_and_broken_meta_are_refused(tiny_root: Path, cache: tuple[Path, np.ndarray]) -> None:
    out, _ = cache
    samples = pd.read_parquet(out / "samples.parquet")
    samples.loc[0, "target"] += 1.0  # same size, other bytes
    samples.to_parquet(out / "samples.parquet", index=False)
    with pytest.raises(
        DamagedCache, match=r"samples.parquet (was edited since it was prepared|is \d+ bytes)"
    ):
        load_prepared(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(
        DamagedCache, match=rf"^prepared folder {out} is damaged: meta.json is not valid JSON"
    ):
        prepare(tiny_config(tiny_root), out)


def test_changed_inputs_are_not_reused(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    out = tmp_path / "prepared"
    prepare(tiny_config(root), out)
    raster = root / "covariates" / "static" / "Elevation.tif"
    with rasterio.open(raster, "r+") as dst:
        dst.write(dst.read(1) + 1, 1)
    with pytest.raises(OutputError, match="was made from another config or other input files"):
        prepare(tiny_config(root), out)
    data, reused = prepare(tiny_config(root), out, overwrite=True)
    assert not reused and np.nanmax(data.windows[:, 0]) > 0


# --------------------------------------------------------------------------------------------- odd rasters
def _rewrite(path: Path, data: np.ndarray, dtype: str, nodata: float | None, **tags: float) -> None:
    with rasterio.open(path) as src:
        profile = src.profile | {"dtype": dtype, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(dtype), 1)
        if tags:
            dst.scales, dst.offsets = (tags["scale"],), (tags["offset"],)


def test_odd_rasters_follow_the_nodata_policy(tiny_root: Path, tmp_path: Path) -> None:
    """NaN as nodata, ±Inf values (nodata), an int16 raster with scale/offset tags (read in its unit) and a
    band whose nodata value differs per year give the windows of the plain float32 rasters."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    cov = root / "covariates"
    with rasterio.open(cov / "static" / "Elevation.tif") as src:
        elev = src.read(1)
    elev[elev == tiny.NODATA] = np.nan
    infinite = [(10, 5), (12, 8)]
    elev[infinite[0]], elev[infinite[1]] = np.inf, -np.inf
    _rewrite(cov / "static" / "Elevation.tif", elev, "float32", float("nan"))
    with rasterio.open(cov / "yearly" / "NDVI" / "2019.tif") as src:
        ndvi19 = src.read(1)
    _rewrite(
        cov / "yearly" / "NDVI" / "2019.tif", np.where(ndvi19 == tiny.NODATA, -1, ndvi19), "float32", -1.0
    )
    with rasterio.open(cov / "yearly" / "NDVI" / "2021.tif") as src:
        ndvi21 = src.read(1).astype(np.float64)
    counts = np.where(ndvi21 == tiny.NODATA, -32768, np.round((ndvi21 - 20) / 0.001))
    _rewrite(cov / "yearly" / "NDVI" / "2021.tif", counts, "int16", -32768, scale=0.001, offset=20.0)

    odd, _ = prepare(tiny_config(root), tmp_path / "odd")
    plain, _ = prepare(tiny_config(tiny_root), tmp_path / "plain")
    expected = np.array(plain.windows)
    rows, cols = plain.samples["row"].to_numpy(), plain.samples["col"].to_numpy()
    for r, c in infinite:  # the ±Inf pixels are nodata wherever a window holds them
        for i in np.flatnonzero((abs(rows - r) <= 2) & (abs(cols - c) <= 2)):
            expected[i, 0, r - rows[i] + 2, c - cols[i] + 2, :] = np.nan
    assert len(odd.samples) == len(plain.samples)
    assert np.isnan(expected[:, 0]).sum() > np.isnan(plain.windows[:, 0]).sum()  # the Inf pixels are sampled
    np.testing.assert_allclose(np.asarray(odd.windows), expected, rtol=0, atol=1e-4)
    assert not np.isinf(odd.windows).any()


def test_gdal_write_errors_of_the_mosaic_and_cog_are_disk_faults(tmp_path: Path) -> None:
    """GDAL reports a full disk as text (``Write error``, ``Free disk space available``), not as an errno."""
    from rasterio._err import CPLE_AppDefinedError, CPLE_FileIOError

    from socmap._atomic import writing

    path = tmp_path / "soc.tif.blocks" / "assembled.tif"
    with pytest.raises(OutputError) as info, writing(path, "map mosaic", need=4_000_000):
        raise CPLE_FileIOError(3, 10, "TIFFAppendToStrip:Write error at scanline 3")
    assert str(info.value) == (
        f"cannot write map mosaic {path}: no space left on device (needs about 4.0 MB, 1.5 MB free); {HINT}"
    )
    with (
        pytest.raises(
            OutputError, match=r"^cannot write map COG .*: no space left on device \(1.5 MB free\)"
        ),
        writing(path, "map COG"),
    ):
        raise CPLE_AppDefinedError(1, 1, "Free disk space available is 1 bytes, whereas 2 are necessary")
    with pytest.raises(CPLE_AppDefinedError), writing(path, "map COG"):  # other GDAL errors stay as they are
        raise CPLE_AppDefinedError(1, 1, "Unknown option COMPRES")


@pytest.mark.parametrize("driver", ["GTiff", "COG"])
def test_a_geotiff_truncated_by_a_full_disk_is_detected(tmp_path: Path, driver: str) -> None:
    """libtiff reports a full disk only on stderr and GDAL's write returns normally: the map's mosaic and COG
    are checked against their tile offsets before they get a final name."""
    import rasterio.shutil

    from socmap.mapping.cog import check_complete

    src_path = tmp_path / "tiles.tif"
    profile = {"driver": "GTiff", "dtype": "float32", "count": 2, "width": 300, "height": 200, "tiled": True}
    with rasterio.open(src_path, "w", **profile, blockxsize=128, blockysize=128) as dst:
        dst.write(np.random.default_rng(0).random((2, 200, 300), dtype=np.float32))
    path = src_path
    if driver == "COG":
        path = tmp_path / "cog.tif"
        rasterio.shutil.copy(src_path, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=128)
    check_complete(path)  # complete: passes
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 1000)
    with pytest.raises(OSError, match="is truncated") as info:
        check_complete(path)
    assert info.value.errno == errno.ENOSPC
