"""Shared fixtures: the synthetic data set is generated once per session into a temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``socmap ARGS`` in a subprocess (a wide terminal, W&B disabled) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "socmap.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "COLUMNS": "250", "TERM": "dumb", "WANDB_MODE": "disabled"},
    )


def shared_data(name: str) -> Path:
    """Path of a real third-party data folder, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the repo; CI has it)")
    return path


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic Bavaria set (1000 m, seed 0, 5000 locations)."""
    from socmap.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "bavaria"
    synthesize(out)
    return out


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, coarse synthetic set (2000 m, 300 locations) for fast end-to-end tests."""
    from socmap.synth import synthesize

    out = tmp_path_factory.mktemp("synth-small") / "bavaria"
    synthesize(out, resolution=2000.0, n_locations=300, seed=7)
    return out
