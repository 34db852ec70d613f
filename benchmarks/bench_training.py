"""P3 training: samples/s per epoch, the share of step time spent waiting for data (target <= 10%), and
the time of the demo's default training."""

from __future__ import annotations

import time
from pathlib import Path

from socmap.demo import DEMO_TRAIN, demo_config
from socmap.synth import synthesize
from socmap.train import train

from common import Row


def run(work: Path) -> list[Row]:
    data = work / "synth"
    if not (data / "samples.csv").exists():
        synthesize(data, overwrite=True)
    config = demo_config(data, {"train.epochs": 4, "train.num_runs": 1, "train.wandb_mode": "disabled"})
    result = train(config, work / "run", prepared=work / "prepared", overwrite=True)
    hist = result.runs[0].history.iloc[1:]  # skip the first (warm-up) epoch
    samples_per_s = float((hist["samples"] / hist["seconds"]).mean())
    feed = float((hist["data_seconds"] / hist["seconds"]).mean())
    epoch_s = float(hist["seconds"].mean())

    started = time.perf_counter()
    demo = train(
        demo_config(data, {"train.wandb_mode": "disabled"}),
        work / "demo-run",
        prepared=work / "prepared",
        overwrite=True,
    )
    demo_s = time.perf_counter() - started
    epochs = sum(len(r.history) for r in demo.runs)
    return [
        Row(
            "P3 training throughput (incl. validation)",
            samples_per_s,
            "samples/s",
            note=f"{epoch_s:.2f} s/epoch",
        ),
        Row("P3 data feeding share of epoch time", 100 * feed, "%", target="<= 10 %", met=feed <= 0.10),
        Row(
            f"P3 demo training ({DEMO_TRAIN['train.num_runs']} runs, <= {DEMO_TRAIN['train.epochs']} epochs)",
            demo_s,
            "s",
            note=f"{epochs} epochs in all, validation R² {demo.summary.best.metrics['r2']:.3f}",
        ),
    ]
