"""Change on synthetic Bavaria: predicted vs true change at repeat visits and the change intervals' coverage.

``python benchmarks/bench_change.py WORKDIR [--model xgb]``: synthesizes the default data set (1000 m; every
LUCAS-grid point and agency plot is revisited, and the generator's truth changes between visits through the
yearly covariates, see docs/synthetic-data.md), trains a calibrated run (5-fold calibration CV), and scores the
change intervals on the repeat-visit pairs of the calibration CV, cross-fitted (rho and k fitted on the other
places' pairs): PICP for observed and for true (noise-free) change, and the correlation of predicted with true
change. Writes ``WORKDIR/change_pairs.png`` (the figure in docs/benchmarks.md) and prints rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, print_table, synth_config


def _train(data: Path, run_dir: Path, model: str) -> Path:
    """A calibrated run of ``model`` (reused when finished)."""
    from socmap.train import train

    if not (run_dir / "metrics.json").is_file():
        config = synth_config(
            data, {"train.model": model, "train.num_runs": 1, "uncertainty.calibration_folds": 5}
        )
        train(config, run_dir, overwrite=True)
    return run_dir


def _figure(pairs: pd.DataFrame, d_true: np.ndarray, path: Path, stats: dict[str, float]) -> None:
    """Predicted vs true and observed change at repeat visits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d_hat = (pairs["predicted_b"] - pairs["predicted_a"]).to_numpy()
    d_obs = (pairs["observed_b"] - pairs["observed_a"]).to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, y, name, r in (
        (axes[0], d_true, "true change (noise-free)", stats["r_true"]),
        (axes[1], d_obs, "observed change (with noise)", stats["r_observed"]),
    ):
        ax.scatter(d_hat, y, s=3, alpha=0.3)
        lim = np.nanpercentile(np.abs(np.concatenate([d_hat, y])), 99)
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="predicted change (g/kg)", ylabel=f"{name} (g/kg)")
        ax.set_title(f"{name}: r = {r:.2f}")
    fig.suptitle(
        f"synthetic Bavaria, {int(stats['n_pairs'])} repeat-visit pairs (calibration CV, out of fold); "
        f"PICP90 observed {stats['picp_observed']:.3f}, true {stats['picp_true']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(work: Path, model: str = "xgb") -> list[Row]:
    """Synthesize, train, score the change intervals; returns the rows."""
    from socmap.change import repeat_pairs, validate_change
    from socmap.synth import synthesize

    work.mkdir(parents=True, exist_ok=True)
    data = work / "synth"
    if not (data / "truth.json").is_file():
        synthesize(data, overwrite=True)
    started = time.perf_counter()
    run_dir = _train(data, work / f"run-{model}", model)
    train_seconds = time.perf_counter() - started
    found = repeat_pairs(run_dir)
    assert found is not None
    pairs, nominal = found
    truth = pd.read_csv(data / "truth.csv", usecols=["POINTID", "year", "OC_truth"])
    truth = truth.rename(columns={"POINTID": "sample_id", "year": "time", "OC_truth": "truth"})
    stats = validate_change(pairs, nominal, truth=truth)
    lookup = truth.assign(sample_id=truth["sample_id"].astype(str), time=truth["time"].astype(str))
    lookup = lookup.set_index(["sample_id", "time"])["truth"]
    ta = lookup.reindex(list(zip(pairs["sample_id"], pairs["time_a"].astype(str), strict=True))).to_numpy()
    tb = lookup.reindex(list(zip(pairs["sample_id"], pairs["time_b"].astype(str), strict=True))).to_numpy()
    _figure(pairs, tb - ta, work / "change_pairs.png", stats)
    note = f"{model}, cross-fitted over places"
    return [
        Row("change: repeat-visit pairs", stats["n_pairs"], "pairs", note=f"train {train_seconds:.0f} s"),
        Row("change: rho (scaled OOF residuals)", stats["rho"], ""),
        Row("change: k (conformal factor)", stats["k"], ""),
        Row(
            "change: PICP90 of observed change",
            stats["picp_observed"],
            "",
            "0.88-0.92",
            0.88 <= stats["picp_observed"] <= 0.92,
            note,
        ),
        Row("change: PICP90 of true change", stats["picp_true"], "", note="noise-free truth; see docs"),
        Row("change: r(predicted, true change)", stats["r_true"], ""),
        Row("change: r(predicted, observed change)", stats["r_observed"], ""),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", default="xgb")
    args = parser.parse_args()
    print_table(run(args.work, args.model))
