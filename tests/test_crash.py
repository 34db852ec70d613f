"""Crash safety: SIGKILL a training run mid-way, resume it, and get exactly the uninterrupted result;
a killed run never leaves a file that looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml


def _cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "socmap.cli", "train", "--config", str(config), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "200"}


def _epoch_of(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def test_sigkill_during_training_then_resume_gives_identical_models(
    small_synth_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "samples": {"path": str(small_synth_dir / "samples.csv")},
                "covariates": {"root": str(small_synth_dir / "covariates")},
                "train": {
                    "epochs": 8,
                    "seed_models": 1,
                    "num_runs": 2,
                    "patience": 50,
                    "batch_size": 128,
                    "lr": 0.001,
                    "lstm_input_size": 32,  # a small LSTM: the resume logic does not depend on its size
                    "lstm_hidden_size": 32,
                    "checkpoint_seconds": 0,  # after every epoch: the kill below waits for epoch 2's
                },
                "uncertainty": {"calibration_folds": 0},
            }
        )
    )
    full = subprocess.run(
        _cmd(config, tmp_path / "full"), capture_output=True, text=True, env=_env(), check=False
    )
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    ckpt = out / "runs" / "run_1" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while _epoch_of(ckpt) < 2:
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # nothing looks complete that is not: no top-level metrics, run 1 has no model; every file present parses
    assert not (out / "metrics.json").exists()
    assert not (out / "runs" / "run_1" / "model.pt").exists()
    assert (out / "runs" / "run_0" / "model.pt").is_file()  # run 0 finished before the kill
    finished_run0 = (out / "runs" / "run_0" / "model.pt").read_bytes()
    for path in out.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
        assert ".tmp-" not in path.name

    resumed = subprocess.run(
        _cmd(config, out, "--resume"), capture_output=True, text=True, env=_env(), check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "runs" / "run_0" / "model.pt").read_bytes() == finished_run0  # finished run untouched
    for rel in ("model.pt", "runs/run_0/model.pt", "runs/run_1/model.pt"):
        a = torch.load(tmp_path / "full" / rel, weights_only=True)
        b = torch.load(out / rel, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    metrics_a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    metrics_b = json.loads((out / "metrics.json").read_text())
    assert metrics_a["aggregate"] == metrics_b["aggregate"]


@pytest.mark.parametrize("name", ["metrics.json", "model.pt"])
def test_interrupted_atomic_write_leaves_no_file(tmp_path: Path, name: str) -> None:
    from socmap._atomic import atomic_file

    target = tmp_path / name
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_mapping_then_resume_gives_identical_cog(
    small_synth_dir: Path, tmp_path: Path
) -> None:
    import numpy as np
    import rasterio

    from socmap.config import MapConfig, load_config
    from socmap.mapping import map_soc
    from socmap.train import train

    overrides: dict[str, object] = {
        "samples.path": str(small_synth_dir / "samples.csv"),
        "covariates.root": str(small_synth_dir / "covariates"),
        "train.epochs": 1,
        "train.seed_models": 1,
        "train.num_runs": 2,
        "train.lstm_input_size": 16,
        "train.lstm_hidden_size": 16,
        "train.wandb_mode": "disabled",
        "uncertainty.calibration_folds": 0,  # resume identity does not depend on the interval bands
    }
    threads = torch.get_num_threads()
    try:
        run = train(load_config(None, overrides), tmp_path / "run").out
    finally:
        torch.set_num_threads(threads)
    reference = map_soc(MapConfig(year="2023", block_size=16), run, tmp_path / "ref.tif").out

    out = tmp_path / "killed.tif"
    blocks = out.with_name(out.name + ".blocks")
    args = [sys.executable, "-m", "socmap.cli", "map", "--run", str(run), "--year", "2023", "--out", str(out)]
    proc = subprocess.Popen(
        [*args, "--block-size", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    deadline = time.monotonic() + 240
    while len(list(blocks.glob("r*.npy"))) < 5:
        assert proc.poll() is None, "mapping finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # no COG that looks complete
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in blocks.glob("r*.npy")}
    for path in finished:
        np.load(blocks / path)  # every finished block is whole

    resumed = subprocess.run(
        [*args, "--block-size", "16", "--resume"], capture_output=True, text=True, env=_env(), check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "blocks resumed" in resumed.stdout
    with rasterio.open(reference) as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read(), equal_nan=True)
        assert a.profile == b.profile
