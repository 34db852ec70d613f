"""Configuration: defaults, YAML loading, one-line errors naming keys and allowed values, overrides, paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from socmap.config import dump_config, load_config, parse_override
from socmap.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_follow_lucas_and_the_seed_project() -> None:
    cfg = load_config()
    assert cfg.samples.lat == ["GPS_LAT", "TH_LAT"] and cfg.samples.target == "OC"
    assert cfg.filters.max_target == 150 and (cfg.filters.year_min, cfg.filters.year_max) == (2007, 2023)
    assert cfg.windows.size == 5 and cfg.windows.time_steps == 5
    assert cfg.split.val_ratio == 0.08 and cfg.split.distance_km == 1.2
    assert cfg.sampling.n_bins == 128 and cfg.sampling.min_fraction == 0.75


@pytest.mark.parametrize("name", ["bavaria-synthetic.yaml", "edgeroi.yaml", "macedonia.yaml"])
def test_repo_configs_are_valid(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.base_dir == CONFIGS
    assert cfg.resolve(cfg.samples.path).is_absolute()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_config(write(tmp_path, "windows:\n  sise: 7\n"))
    assert "unknown key 'windows.sise'; valid keys here: size, time_steps" in str(err.value)
    with pytest.raises(InputError, match=r"unknown key .sampels.; valid keys here: name, samples"):
        load_config(write(tmp_path, "sampels: {}\n"))


def test_invalid_values_name_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"split.method = 'kfold'.*'distance-split', 'spatial-block'"):
        load_config(write(tmp_path, "split:\n  method: kfold\n"))
    with pytest.raises(
        InputError, match=r"windows.time_steps = 0: Input should be greater than or equal to 1"
    ):
        load_config(write(tmp_path, "windows:\n  time_steps: 0\n"))
    with pytest.raises(
        InputError, match=re.escape("temporal_pattern 'x.tif': expected '{band}' and '{time}'")
    ):
        load_config(write(tmp_path, "covariates:\n  temporal_pattern: x.tif\n"))


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"invalid YAML at line 3, column 1 \(expected ',' or ']'"):
        load_config(write(tmp_path, "windows:\n  size: [5\n"))
    with pytest.raises(InputError, match="expected a mapping of sections, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "cfgs"
    sub.mkdir()
    cfg = load_config(write(sub, "samples:\n  path: ../data/s.csv\n"))
    monkeypatch.chdir("/")
    assert cfg.resolve(cfg.samples.path) == sub / ".." / "data" / "s.csv"
    assert f"path: {(tmp_path / 'data' / 's.csv').resolve()}" in dump_config(cfg)


def test_overrides() -> None:
    assert parse_override("windows.size=7") == ("windows.size", 7)
    assert parse_override("covariates.temporal=[A, B]") == ("covariates.temporal", ["A", "B"])
    assert parse_override("filters.max_target=null") == ("filters.max_target", None)
    cfg = load_config(CONFIGS / "bavaria-synthetic.yaml", {"windows.size": 7, "filters.max_target": None})
    assert cfg.windows.size == 7 and cfg.filters.max_target is None
    with pytest.raises(InputError, match=r"expected key\.path=value"):
        parse_override("windows.size")


def test_data_hash_ignores_training_options() -> None:
    a = load_config(None, {"split.seed": 1})
    b = load_config(None, {"split.seed": 2})
    c = load_config(None, {"windows.size": 7})
    assert a.data_hash() == b.data_hash() != c.data_hash()
