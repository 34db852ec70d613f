"""Bad-input catalogue, run through the CLI: each case fails with one line naming the file/column/value and
what was expected (exit 2, no traceback), or, where dropping or warning is right, succeeds and reports it."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from tests.conftest import run_cli
from tests.data.tiny import data as tiny


@pytest.fixture(scope="module")
def tiny_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make(tmp_path_factory.mktemp("tiny-master") / "data")


@dataclass
class Env:
    """A private copy of the tiny data set and its config for one case."""

    root: Path
    config: Path
    out: Path

    def samples(self) -> pd.DataFrame:
        return pd.read_csv(self.root / "samples.csv")

    def write_samples(self, frame: pd.DataFrame, name: str = "samples.csv") -> None:
        frame.to_csv(self.root / name, index=False)

    def set(self, **values: object) -> None:
        cfg = yaml.safe_load(self.config.read_text())
        for key, value in values.items():
            section, name = key.split("__")
            cfg.setdefault(section, {})[name] = value
        self.config.write_text(yaml.safe_dump(cfg))

    def raster(self, rel: str) -> Path:
        return self.root / "covariates" / rel


def make_env(master: Path, tmp: Path) -> Env:
    root = tmp / "data"
    shutil.copytree(master, root)
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "samples": {"path": "data/samples.csv"},
                "covariates": {
                    "root": "data/covariates",
                    "static": ["Elevation"],
                    "temporal": ["NDVI", "LST"],
                },
                "windows": {"time_steps": 3},
            }
        )
    )
    return Env(root, config, tmp / "out")


def rewrite_raster(path: Path, transform: Callable[[np.ndarray, dict], tuple[np.ndarray, dict]]) -> None:
    with rasterio.open(path) as src:
        data, profile = src.read(1), dict(src.profile)
    data, profile = transform(data, profile)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@dataclass
class Case:
    name: str
    setup: Callable[[Env], list[str]]  # returns the CLI arguments
    expect: str  # "error", "ok"
    text: str  # substring of the one-line error, or of the output for "ok"


def prepare_args(env: Env, *extra: str) -> list[str]:
    return ["prepare", "--config", str(env.config), "--out", str(env.out), *extra]


def edit_samples(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        env.write_samples(change(env.samples()))
        return prepare_args(env)

    return setup


def set_cfg(**values: object) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        env.set(**values)
        return prepare_args(env)

    return setup


def _swap(f: pd.DataFrame) -> pd.DataFrame:
    return f.rename(columns={"GPS_LAT": "GPS_LONG", "GPS_LONG": "GPS_LAT"})


def _percent(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(OC=f["OC"] / 10)


def _first_good(f: pd.DataFrame, **values: object) -> pd.DataFrame:
    f = f.astype({k: object for k in values})
    for k, v in values.items():
        f.loc[0, k] = v
    return f


def _duplicate(f: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([f, f.iloc[[0]].assign(OC=99.0)], ignore_index=True)


def _dates(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(columns="year").assign(SURVEY_DATE="31/31/31")


def _no_crs(env: Env) -> list[str]:
    def strip(data: np.ndarray, profile: dict) -> tuple[np.ndarray, dict]:
        profile["crs"] = None
        return data, profile

    rewrite_raster(env.raster("static/Elevation.tif"), strip)
    return prepare_args(env)


def _truncate(env: Env) -> list[str]:
    path = env.raster("yearly/NDVI/2021.tif")
    path.write_bytes(path.read_bytes()[:300])
    return prepare_args(env)


def _garbage(env: Env) -> list[str]:
    env.raster("static/Elevation.tif").write_bytes(b"this is not a GeoTIFF" * 20)
    return prepare_args(env)


def _all_nodata(env: Env) -> list[str]:
    def blank(data: np.ndarray, profile: dict) -> tuple[np.ndarray, dict]:
        return np.full_like(data, tiny.NODATA), profile

    for path in [env.raster("static/Elevation.tif"), *env.raster("yearly/NDVI").glob("*.tif")]:
        rewrite_raster(path, blank)
    env.set(covariates__temporal=["NDVI"])
    return prepare_args(env)


def _missing_year(env: Env) -> list[str]:
    env.raster("yearly/NDVI/2019.tif").unlink()
    return prepare_args(env)


def _missing_static(env: Env) -> list[str]:
    env.raster("static/Elevation.tif").unlink()
    return prepare_args(env)


def _int16(env: Env) -> list[str]:
    def to_int(data: np.ndarray, profile: dict) -> tuple[np.ndarray, dict]:
        profile.update(dtype="int16", nodata=-32768)
        return np.where(data == tiny.NODATA, -32768, np.round(data)).astype(np.int16), profile

    rewrite_raster(env.raster("static/Elevation.tif"), to_int)
    return prepare_args(env)


def _region(geometry: dict) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        import json

        (env.root / "region.geojson").write_text(
            json.dumps({"type": "Feature", "properties": {}, "geometry": geometry})
        )
        env.set(filters__region="data/region.geojson")
        return prepare_args(env)

    return setup


BOWTIE = {"type": "Polygon", "coordinates": [[[10, 48], [11, 49], [11, 48], [10, 49], [10, 48]]]}
AFRICA = {"type": "Polygon", "coordinates": [[[20, 0], [21, 0], [21, 1], [20, 1], [20, 0]]]}


def _unwritable(env: Env) -> list[str]:
    return ["prepare", "--config", str(env.config), "--out", "/proc/socmap-denied/out"]


def _exists(env: Env) -> list[str]:
    env.out.mkdir()
    (env.out / "notes.txt").write_text("user file")
    return prepare_args(env)


def _bad_yaml(env: Env) -> list[str]:
    env.config.write_text("samples:\n  path: [unclosed\n")
    return prepare_args(env)


def _unknown_key(env: Env) -> list[str]:
    env.set(samples__pathh="x.csv")
    return prepare_args(env)


def _missing_samples(env: Env) -> list[str]:
    (env.root / "samples.csv").unlink()
    return prepare_args(env)


def _json_samples(env: Env) -> list[str]:
    env.samples().to_json(env.root / "samples.json")
    env.set(samples__path="data/samples.json")
    return prepare_args(env)


def _bad_set(env: Env) -> list[str]:
    return prepare_args(env, "--set", "windows.size")


def _too_few_to_train(env: Env) -> list[str]:
    return ["train", "--config", str(env.config), "--out", str(env.out), "--epochs", "1"]


def _bad_loss(env: Env) -> list[str]:
    return ["train", "--config", str(env.config), "--out", str(env.out), "--loss_type", "huber"]


def _resume_nothing(env: Env) -> list[str]:
    return ["train", "--config", str(env.config), "--out", str(env.out), "--resume"]


def _missing_config(env: Env) -> list[str]:
    return ["prepare", "--config", str(env.root / "nope.yaml"), "--out", str(env.out)]


def _truncated_cache(env: Env) -> list[str]:
    """A prepared folder whose windows.npy lost its tail (an interrupted copy): refused, never used."""
    from socmap.config import load_config
    from socmap.windows import prepare

    prepare(load_config(env.config), env.out)
    with open(env.out / "windows.npy", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 64)
    return prepare_args(env)


def _report_nothing(env: Env) -> list[str]:
    return ["report", str(env.root)]


CASES = [
    Case(
        "missing target column",
        edit_samples(lambda f: f.drop(columns="OC")),
        "error",
        "no target column (looked for OC); columns are: POINTID, GPS_LAT, GPS_LONG, year; set samples.target",
    ),
    Case(
        "renamed coordinate column",
        edit_samples(lambda f: f.rename(columns={"GPS_LAT": "LATITUDE"})),
        "error",
        "no latitude column (looked for GPS_LAT, TH_LAT)",
    ),
    Case("lat/lon swapped", edit_samples(_swap), "error", "Are latitude and longitude swapped"),
    Case("OC in percent", edit_samples(_percent), "ok", "if they are in %, set samples.target_scale: 10"),
    Case("negative OC", edit_samples(lambda f: _first_good(f, OC=-5.0)), "ok", "below_min_target 2"),
    Case("NaN OC", edit_samples(lambda f: _first_good(f, OC=np.nan)), "ok", "missing_target 2"),
    Case("absurd OC", edit_samples(lambda f: _first_good(f, OC=1e6)), "ok", "above_max_target 2"),
    Case("non-numeric OC", edit_samples(lambda f: _first_good(f, OC="n.d.")), "ok", "invalid_target 1"),
    Case(
        "latitude out of range",
        edit_samples(lambda f: _first_good(f, GPS_LAT=95.0)),
        "ok",
        "invalid_coordinates 2",
    ),
    Case(
        "duplicate POINTID+year with different OC",
        edit_samples(_duplicate),
        "error",
        "appears 2 times with different targets [10.0, 99.0]; set samples.duplicates to mean, first or drop",
    ),
    Case(
        "empty table after filters",
        set_cfg(filters__year_min=2030),
        "error",
        "no samples left after filters (invalid_coordinates: 1, missing_target: 1, below_min_target: 1, above_max_target: 1, outside_year_range: 14)",
    ),
    Case("dates unparsable", edit_samples(_dates), "error", "invalid_time: 14)"),
    Case(
        "years outside the covariate range",
        edit_samples(lambda f: f.assign(year=2010)),
        "error",
        "no sample's time lies within the covariates' time labels 2018..2021",
    ),
    Case("raster without CRS", _no_crs, "error", "Elevation.tif has no CRS; set covariates.assume_crs"),
    Case(
        "rasters on different grids (warping off)",
        set_cfg(grid__allow_warp=False),
        "error",
        "is not on the working grid (CRS EPSG:4326 instead of EPSG:32632); set grid.allow_warp: true",
    ),
    Case("truncated GeoTIFF", _truncate, "error", "2021.tif"),
    Case("corrupt GeoTIFF", _garbage, "error", "Elevation.tif could not be opened"),
    Case("all-nodata windows", _all_nodata, "error", "every sample's window is less than 50% valid"),
    Case(
        "a missing year file", _missing_year, "ok", "NDVI: no file for 2019, 2020 (read as nodata and filled)"
    ),
    Case("a missing static file", _missing_static, "error", "static band Elevation: file"),
    Case("a band with another dtype (int16)", _int16, "ok", "windows [10, 3, 5, 5, 3]"),
    Case("region polygon invalid", _region(BOWTIE), "error", "invalid polygon (Self-intersection"),
    Case("region not overlapping", _region(AFRICA), "error", "no samples left after filters"),
    Case(
        "window size too small",
        set_cfg(windows__size=2),
        "error",
        "windows.size = 2: Input should be greater than or equal to 3",
    ),
    Case("zero time steps", set_cfg(windows__time_steps=0), "error", "windows.time_steps = 0"),
    Case("output folder unwritable", _unwritable, "error", "cannot write in /proc/socmap-denied"),
    Case("output exists", _exists, "error", "exists and is not empty; pass --overwrite"),
    Case("invalid YAML", _bad_yaml, "error", "invalid YAML at line"),
    Case(
        "unknown config key", _unknown_key, "error", "unknown key 'samples.pathh'; valid keys here: path, id"
    ),
    Case("missing config file", _missing_config, "error", "nope.yaml does not exist"),
    Case("missing samples file", _missing_samples, "error", "samples.csv does not exist"),
    Case("unsupported samples format", _json_samples, "error", "unsupported type '.json'; expected .csv"),
    Case("malformed --set", _bad_set, "error", "expected key.path=value"),
    Case("unknown loss", _bad_loss, "error", "train.loss_type = 'huber': Input should be 'l1', 'mse'"),
    Case(
        "too few samples to train",
        _too_few_to_train,
        "error",
        "only 10 samples after filters: too few to train (need at least 20)",
    ),
    Case(
        "resume without an interrupted run",
        _resume_nothing,
        "error",
        "holds no config.yaml of an interrupted run",
    ),
    Case("report of an unfinished run", _report_nothing, "error", "is not a finished run folder"),
    Case(
        "truncated prepared windows",
        _truncated_cache,
        "error",
        "is damaged: windows.npy is ",
    ),
]


def check(result: subprocess.CompletedProcess[str], case: Case) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case.expect == "error":
        assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
        lines = [
            line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")
        ]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        assert case.text in lines[0], lines[0]
    else:
        assert result.returncode == 0, result.stderr
        assert case.text in result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, tiny_master: Path, tmp_path: Path) -> None:
    env = make_env(tiny_master, tmp_path)
    check(run_cli(*case.setup(env)), case)


def test_catalogue_is_long_enough() -> None:
    assert len(CASES) + len(MODEL_CASES) >= 25


# ------------------------------------------------------------------------------------- model checkpoints
@pytest.fixture(scope="module")
def small_run(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch model on the small synthetic set, and a config for its samples."""
    folder = tmp_path_factory.mktemp("small-run")
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "samples": {"path": str(small_synth_dir / "samples.csv")},
                "covariates": {"root": str(small_synth_dir / "covariates")},
                "train": {"epochs": 1, "seed_models": 1, "num_runs": 1, "wandb_mode": "disabled"},
                "uncertainty": {"calibration_folds": 0},
            }
        )
    )
    result = run_cli("train", "--config", str(config), "--out", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return folder / "run", config


def _copy_run(run: Path, tmp: Path) -> Path:
    target = tmp / "model"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("prepared", "runs"))
    return target


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


MODEL_CASES = [
    ("checkpoint from another band set", "other-bands", "trained on bands ['Elevation', 'LAI'"),
    ("corrupt checkpoint", "truncate", "is truncated or corrupt"),
    (
        "checkpoint carrying code",
        "pickle",
        "holds more than weights (e.g. pickled code) and was refused (weights_only=True)",
    ),
    ("model.json unreadable", "json", "is not valid JSON"),
]


@pytest.mark.parametrize(("name", "kind", "text"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_catalogue(
    name: str, kind: str, text: str, small_run: tuple[Path, Path], tiny_master: Path, tmp_path: Path
) -> None:
    run, config = small_run
    model = _copy_run(run, tmp_path)
    if kind == "other-bands":
        env = make_env(tiny_master, tmp_path / "env")
        config = env.config
    elif kind == "truncate":
        (model / "model.pt").write_bytes((model / "model.pt").read_bytes()[:100])
    elif kind == "pickle":
        with open(model / "model.pt", "wb") as fh:
            pickle.dump({"weights": _Evil()}, fh)
    else:
        (model / "model.json").write_text("{not json")
    result = run_cli(
        "predict", "--run", str(model), "--config", str(config), "--out", str(tmp_path / "p.csv")
    )
    check(result, Case(name, lambda e: [], "error", text))
    assert "code ran" not in result.stdout


@pytest.mark.parametrize("command", ["synth", "prepare", "train"])
def test_overwrite_never_deletes_an_unrelated_folder(command: str, tiny_master: Path, tmp_path: Path) -> None:
    env = make_env(tiny_master, tmp_path)
    env.out.mkdir()
    (env.out / "thesis.docx").write_text("precious")
    if command == "synth":
        args = ["synth", "--out", str(env.out), "--resolution", "4000", "--n-locations", "60", "--overwrite"]
    else:
        args = [command, "--config", str(env.config), "--out", str(env.out), "--overwrite"]
    result = run_cli(*args)
    check(result, Case("unrelated folder", lambda e: [], "error", "refusing to"))
    assert (env.out / "thesis.docx").read_text() == "precious"
