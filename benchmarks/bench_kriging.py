"""Issue 15 real-data figures: kriging (ok, rk of any kind) and coordinate covariates (need ../shared/data).

- ``macedonia``: models compared by 5-fold random CV inside dat_train only; the CV choice (and, for the
  table, every model) fitted on dat_train and scored ONCE on dat_test (cookbook Table 7.3: RK 0.538 / 0.377).
- ``macedonia-block`` / ``edgeroi``: spatial-block CV on all profiles (5 folds, 20 km / 10 folds, 5 km).

Usage: ``python benchmarks/bench_kriging.py macedonia --models xgb rk ok --set covariates.coordinates=xy``
(``--set key=value`` are config overrides, e.g. ``models.rk.base=rf``). Results go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from socmap.config import SocmapConfig, load_config
from socmap.evaluate import cross_validate, select_model
from socmap.metrics import regression_metrics
from socmap.predict import load_members, predict_table
from socmap.train import train
from socmap.windows import PreparedData, prepare

ROOT = Path(__file__).resolve().parents[1]
SOIL = "../../shared/data/macedonia/soil"
MACEDONIA = {"windows.size": 5, "train.target_transform": "log", "train.num_runs": 1}


def _cv(config: SocmapConfig, design: str, folds: int, models: list[str]) -> SocmapConfig:
    update = {"design": design, "folds": folds, "models": models}
    return config.model_copy(update={"cv": config.cv.model_copy(update=update)})


def _fit_test(
    name: str, cfg: SocmapConfig, train_data: PreparedData, test: PreparedData, work: Path
) -> dict[str, float]:
    """Fit ``name`` on all of dat_train and score it once on dat_test."""
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"model": name, "use_validation": False})}
    )
    result = train(cfg, work / name, prepared=train_data.path, overwrite=True)
    members = load_members(result.out, test.bands)
    pred = predict_table(members, np.asarray(test.windows), test.xy)["predicted"]
    return regression_metrics(test.target, pred)


def macedonia(work: Path, models: list[str], overrides: dict[str, Any]) -> str:
    """CV inside dat_train, choice, every model scored once on dat_test."""
    base = {**MACEDONIA, **overrides}
    cfg_train = load_config(
        ROOT / "configs" / "macedonia.yaml", {**base, "samples.path": f"{SOIL}/dat_train.csv"}
    )
    cfg_test = load_config(
        ROOT / "configs" / "macedonia.yaml", {**base, "samples.path": f"{SOIL}/dat_test.csv"}
    )
    train_data, _ = prepare(cfg_train, work / "prep-train", overwrite=True)
    test_data, _ = prepare(cfg_test, work / "prep-test", overwrite=True)
    inner = cross_validate(_cv(cfg_train, "random", 5, models), train_data, work / "cv-train", overwrite=True)
    pooled = inner.summary[inner.summary["metric"] == "r2"].set_index("model")["pooled"]
    chosen = select_model(work / "cv-train").kind
    rows = []
    for name in models:
        m = _fit_test(name, cfg_train, train_data, test_data, work / "final")
        rows.append(
            {
                "model": name + (" (CV choice)" if name == chosen else ""),
                "CV R2 (dat_train)": float(pooled[name]),
                "ME": m["me"],
                "RMSE": m["rmse"],
                "R2": m["r2"],
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")


def block_cv(work: Path, which: str, models: list[str], overrides: dict[str, Any]) -> str:
    """Spatial-block CV on all profiles: pooled R² / RMSE per model."""
    if which == "edgeroi":
        cfg = load_config(ROOT / "configs" / "edgeroi.yaml", {"train.num_runs": 1, **overrides})
        folds = 10
    else:
        cfg = load_config(ROOT / "configs" / "macedonia.yaml", {**MACEDONIA, **overrides})
        folds = 5
    data, _ = prepare(cfg, work / "prep", overwrite=True)
    result = cross_validate(_cv(cfg, "spatial-block", folds, models), data, work / "cv", overwrite=True)
    s = result.summary
    table = s[s["metric"].isin(["r2", "rmse"])].pivot(index="model", columns="metric", values="pooled")
    return table.loc[models].to_markdown(floatfmt=".3f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["macedonia", "macedonia-block", "edgeroi"])
    parser.add_argument("--models", nargs="+", default=["xgb", "rk", "ok"])
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value (YAML values)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/socmap-bench-kriging"))
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    work = args.work / args.suite
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.suite == "macedonia":
        text = macedonia(work, args.models, overrides)
    else:
        text = block_cv(work, args.suite.removesuffix("-block"), args.models, overrides)
    print(f"{args.suite} {json.dumps(overrides)} ({time.perf_counter() - started:.0f} s)\n\n{text}")


if __name__ == "__main__":
    main()
