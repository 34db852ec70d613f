"""`socmap cv` with its (model, fold) fits as Dask tasks (issue 17): wall time one after another in this process
(every core per fit) vs two local worker processes (one core per fit), on Edgeroi carbon density 0-5 cm when
../shared/data is present (else the small synthetic set), five kinds x 5 spatial-block folds, every kind at
socmap's defaults (the CNN-LSTM: the step schedule with early stopping and its default seed ensemble), i.e. the
cv a user runs. On processes, each network of a seed ensemble is a task of its own (five networks x five folds
= 25 CNN-LSTM tasks of about 12 s instead of five 60-second fits, of which two workers need three rounds).
A much smaller workload (one network of 15 epochs per fit, about 25 s in all) is dominated by
the two worker processes' start-up (each imports socmap, torch and the tree libraries: about 5 s) and showed
1.0-1.5x on a quiet machine.

Printed: both wall times, the speed-up (target >= 1.6x on 2 cores) and the largest difference between the two
runs' out-of-fold predictions per model (tree and linear models: 0; torch models may differ in the last
float32 digits, as any torch run with another thread count does; identical with the same ``--n-jobs``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from socmap.config import SocmapConfig, load_config
from socmap.evaluate import CVResult, cross_validate
from socmap.windows import prepare

from common import Row

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODELS = ["cnn_lstm", "rf", "qrf", "xgb", "linear"]
FOLDS = 5


def _config(work: Path) -> tuple[SocmapConfig, str]:
    """Edgeroi when present, else a small synthetic set (written into ``work``)."""
    settings: dict[str, object] = {
        "train.wandb_mode": "disabled",
        "cv.models": MODELS,
        "cv.folds": FOLDS,
        "cv.design": "spatial-block",
    }
    if (SHARED / "edgeroi").is_dir():
        return load_config(ROOT / "configs" / "edgeroi.yaml", settings), "Edgeroi 0-5 cm"
    from socmap.synth import synthesize

    root = work / "synth"
    if not (root / "samples.csv").is_file():
        synthesize(root, resolution=2000.0, n_locations=600, seed=3)
    settings |= {"samples.path": str(root / "samples.csv"), "covariates.root": str(root / "covariates")}
    return load_config(None, settings), "synthetic 600 locations"


def _timed(config: SocmapConfig, scheduler: str | None, work: Path) -> tuple[CVResult, float]:
    cfg = config.model_copy(update={"cv": config.cv.model_copy(update={"scheduler": scheduler})})
    data, _ = prepare(cfg, work / "prepared")
    started = time.perf_counter()
    result = cross_validate(cfg, data, work / f"cv-{scheduler or 'sequential'}", overwrite=True)
    return result, time.perf_counter() - started


def run(work: Path) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    config, name = _config(work)
    sequential, t_seq = _timed(config, None, work)
    parallel, t_par = _timed(config, "processes", work)
    a, b = sequential.predictions, parallel.predictions
    diffs = {
        m: float(
            np.max(
                np.abs(
                    a["predicted"][a["model"] == m].to_numpy() - b["predicted"][b["model"] == m].to_numpy()
                )
            )
        )
        for m in MODELS
    }
    note = ", ".join(f"{m} {d:.2g}" for m, d in diffs.items())
    ratio = t_seq / t_par
    what = f"cv {name}, {len(MODELS)} kinds x {FOLDS} folds"
    return [
        Row(f"{what}: sequential", t_seq, "s", note="every core per fit"),
        Row(f"{what}: 2 processes", t_par, "s", note="--scheduler processes, one core per fit"),
        Row(f"{what}: speed-up", ratio, "x", target=">= 1.6", met=ratio >= 1.6),
        Row(f"{what}: largest OOF difference", max(diffs.values()), "target unit", note=note),
    ]
