"""The demo pipeline (the same code as `make demo`, with one short epoch)."""

from __future__ import annotations

import json
from pathlib import Path

from socmap.demo import run_demo


def test_demo_runs_every_stage(tmp_path: Path) -> None:
    messages: list[str] = []
    result = run_demo(
        tmp_path / "demo",
        # every stage with its real code, lighter: one epoch, one run, no train calibration, two cv models
        overrides={
            "train.epochs": 1,
            "train.num_runs": 1,
            "uncertainty.calibration_folds": 0,
            "cv.models": ["cnn_lstm", "linear"],
        },
        say=messages.append,
    )
    assert (result.data / "truth.json").is_file()
    assert (tmp_path / "demo" / "prepared" / "windows.npy").is_file()
    summary = json.loads((result.run / "metrics.json").read_text())
    assert summary["n_samples"] > 15_000
    assert summary["r2_ceiling"] is not None
    assert summary["drops"] == {"above_max_target": summary["drops"]["above_max_target"]}
    assert any("synthesizing" in m for m in messages)
    assert result.report is not None and result.report.is_file()
