"""Any region, any target, through the CLI: two generated non-Bavaria data sets (pH on a UTM zone 55 South grid
with projected sample coordinates; OC in % on the Dutch national grid with lat/lon), static covariates only.

Defaults follow the data: no temporal section, no --year and no --region are needed; the map covers the
covariate grid's footprint in the data's CRS, a year is refused for static stacks, colour scales and labels
come from the target, kNNDM draws its prediction points from the covariates, and nothing says SOC or Bavaria.
Only exit codes and files are asserted for `socmap train` (its wording is not this module's business). The
pH set runs every step as separate commands (prepare, train, map, cv, report); the OC set lets train prepare
its own windows, and checks the year refusal and the report through the library, to keep the module fast.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from socmap.config import MapConfig
from socmap.errors import InputError
from socmap.examples import ExampleResult
from socmap.mapping import map_soc
from socmap.mapping.previews import color_limits, map_title
from socmap.region import GRID_FOOTPRINT
from socmap.report import build_report

from tests.conftest import run_cli
from tests.data.examples.data import KINDS, PLAUSIBLE, make

RF = (
    *("--model", "rf", "--num-runs", "1", "--set", "models.rf.n_estimators=30", "--set", "train.threads=1"),
    *("--set", "uncertainty.calibration_folds=0"),
)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass(frozen=True)
class Workflow:
    """One example prepared, trained (rf) and mapped through the CLI without --year or --region."""

    example: ExampleResult
    prepare_out: str  # output of `socmap prepare` (empty when train prepared the windows itself)
    prepared: Path
    run: Path
    map: Path

    @property
    def kind(self) -> str:
        return self.example.kind


def _workflow(root: Path, kind: str, separate_prepare: bool) -> Workflow:
    example = make(root / "data", kind)
    config, run, tif = str(example.config), root / "run", root / "map.tif"
    prepared, printed = run / "prepared", ""  # train's own prepared folder
    if separate_prepare:
        prepared = root / "prepared"
        proc = _ok(run_cli("prepare", "--config", config, "--out", str(prepared)))
        printed = proc.stdout + proc.stderr
    where = ("--prepared", str(prepared)) if separate_prepare else ()
    _ok(run_cli("train", "--config", config, "--out", str(run), *where, *RF))
    assert (run / "metrics.json").is_file()
    _ok(run_cli("map", "--run", str(run), "--out", str(tif)))
    return Workflow(example, printed, prepared, run, tif)


@pytest.fixture(scope="module")
def workflows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Workflow]:
    return {kind: _workflow(tmp_path_factory.mktemp(kind), kind, kind == "nsw-ph") for kind in KINDS}


def _headings(page: str) -> list[str]:
    return re.findall(r"<h[1-3][^>]*>(.*?)</h[1-3]>", page)


def _text(page: str) -> str:
    """The page without its embedded images."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


@pytest.mark.parametrize("kind", KINDS)
def test_example_config_needs_no_boilerplate(workflows: dict[str, Workflow], kind: str) -> None:
    """The example config lists only static bands: no temporal section, no time_steps; every sample kept and
    no OC-in-% warning for pH or OC in %."""
    flow = workflows[kind]
    config = yaml.safe_load(flow.example.config.read_text())
    assert set(config) == {"name", "samples", "covariates"} and "temporal" not in config["covariates"]
    meta = json.loads((flow.prepared / "meta.json").read_text())
    assert meta["shape"] == [150, 4, 5, 5, 1] and meta["temporal_bands"] == [] and meta["time_steps"] == 1
    assert meta["drops"] == {} and meta["warnings"] == []
    if flow.prepare_out:
        assert "kept 150 of 150 rows" in flow.prepare_out and "warning" not in flow.prepare_out.lower()


@pytest.mark.parametrize("kind", KINDS)
def test_map_without_year_or_region_covers_the_grid(workflows: dict[str, Workflow], kind: str) -> None:
    flow = workflows[kind]
    example = flow.example
    with rasterio.open(example.covariates[0]) as grid:
        grid_bounds, grid_shape = grid.bounds, grid.shape
    with rasterio.open(flow.map) as src:
        assert src.crs.to_string() == example.crs
        assert tuple(src.bounds) == pytest.approx(tuple(grid_bounds)) and src.shape == grid_shape
        pred = src.read(1, masked=True)
        tags, description = src.tags(), src.descriptions[0]
    assert pred.count() > 0.95 * pred.size  # the grid's valid footprint (corners and no-data pixels left)
    low, high = PLAUSIBLE[kind]
    assert low < float(pred.min()) and float(pred.max()) < high
    assert tags["region"] == GRID_FOOTPRINT and tags["year"] == "none (static covariates)"
    assert tags["target"] == example.target and tags["unit"] == example.unit and tags["depth"] == "unknown"
    assert description.startswith(f"mean: prediction of {example.target} ({example.unit}): mean of 1 model's")
    assert "SOC" not in description


def test_a_year_is_refused_for_static_stacks(workflows: dict[str, Workflow], tmp_path: Path) -> None:
    """One line naming the key (and the flag), exit 2, nothing written; the library names only the key."""
    run = workflows["nsw-ph"].run
    proc = run_cli("map", "--run", str(run), "--out", str(tmp_path / "y.tif"), "--year", "2020")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: map.year 2020: the covariates are static (no temporal bands): a map of them has no year; "
        "leave map.year unset (flag --year)"
    ]
    with pytest.raises(
        InputError, match=r"^map\.year 2021: the covariates are static .* leave map\.year unset$"
    ):
        map_soc(MapConfig(year="2021"), workflows["nl-oc-percent"].run, tmp_path / "y.tif")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_png_colour_scale_and_title_follow_the_target(workflows: dict[str, Workflow], kind: str) -> None:
    flow = workflows[kind]
    with rasterio.open(flow.map) as src:
        values = src.read(1, masked=True)
    lo, hi = color_limits(values)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(values.compressed(), [2, 98])))
    low, high = PLAUSIBLE[kind]
    assert low < lo < hi < high  # not 0..150 g/kg
    assert flow.map.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert (
        map_title(flow.example.target, None, flow.example.unit)
        == f"{flow.example.target} ({flow.example.unit})"
    )


def test_color_limits_edge_cases() -> None:
    assert color_limits(np.full(10, 6.5)) == (6.0, 7.0)
    assert color_limits(np.array([np.nan, np.nan])) == (0.0, 1.0)
    masked = np.ma.masked_array([1.0, 2.0, 1000.0], mask=[False, False, True])
    assert color_limits(masked)[1] < 3
    assert map_title("OC", "2023", "g/kg") == "OC 2023 (g/kg)"


def test_report_for_oc_percent_draws_the_grid_not_bavaria(workflows: dict[str, Workflow]) -> None:
    flow = workflows["nl-oc-percent"]
    page = build_report(flow.run, flow.run / "report.html", map_path=flow.map).read_text()
    text = _text(page)
    assert "<h2>Map</h2>" in page and "bavaria" not in text.lower()
    assert GRID_FOOTPRINT in text and "OC (%)" in text  # the map's region and target rows


def test_knndm_without_region_and_the_ph_report(workflows: dict[str, Workflow]) -> None:
    """kNNDM on an example without any region draws its points from the covariates' valid pixels and says so;
    the pH report (with that cv) has no SOC heading, no Bavaria and the comparison as an HTML table."""
    flow = workflows["nsw-ph"]
    cv = flow.run.parent / "cv"
    config = str(flow.example.config)
    args = (
        "--cv",
        "knndm",
        "--models",
        "linear",
        "--folds",
        "3",
        "--prepared",
        str(flow.run.parent / "prepared"),
    )
    _ok(run_cli("cv", "--config", config, *args, "--out", str(cv)))
    design = json.loads((cv / "cv.json").read_text())["fold_design"]
    assert design["design"] == "knndm" and design["folds"] == 3
    assert design["parameters"]["n_prediction_points"] == 2000
    where = design["parameters"]["prediction_region"]
    assert (
        where.startswith("covariate grid valid pixels (elevation")
        and "no map.region / filters.region" in where
    )

    _ok(run_cli("report", str(flow.run), "--map", str(flow.map), "--cv", str(cv)))
    page = (flow.run / "report.html").read_text()
    text = _text(page)
    assert not any("SOC" in h for h in _headings(page)) and "bavaria" not in text.lower()
    assert "<pre>| model" not in page and "<th>model</th><th>R²</th>" in page
    assert "prediction points from covariate grid valid pixels" in text
    assert f"{flow.example.target} ({flow.example.unit})" in text
