"""Deep models on synthetic Bavaria against the data's known R² ceiling (issue 14).

``python benchmarks/run.py --only ceiling`` (or ``python benchmarks/bench_ceiling.py WORK [--kinds K,..]
[--runs N] [--set key=value ...]``): synthesizes the default data set (1000 m, 16,451 samples), trains each deep
kind with socmap's defaults through ``socmap train`` (its 8 % test set, early stopping on an inner split,
``uncertainty.calibration_folds: 0``) and prints, per kind, the test R² of the selected run and of the mean of
all runs (what ``map`` and ``predict`` use) as a share of the ceiling: the R² of the generator's noise-free
truth on the same test rows, the best any model can score. Target: >= 97 % for the best deep kind.
One network of the CNN-LSTM takes 1-3 minutes on a quiet 2-core machine (8-15 with other jobs beside it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, print_table, synth_config

KINDS = ["cnn_lstm"]
DEFAULT_LOCATIONS = 5000  # synthesize's default: 16,451 samples
TARGET_SHARE = 0.97


def _train(
    data: Path, run_dir: Path, kind: str, runs: int, extra: dict[str, object]
) -> tuple[float, float, float]:
    """(R² of the selected run, R² of the mean of the runs, ceiling) on the test rows of one ``socmap train``."""
    from socmap.train import train

    config = synth_config(
        data, {"train.model": kind, "train.num_runs": runs, "uncertainty.calibration_folds": 0, **extra}
    )
    result = train(config, run_dir, prepared=data.parent / "prepared", overwrite=True)
    summary = result.summary
    best = summary.runs[summary.best_run].metrics
    mean = summary.mean_of_runs.metrics if summary.mean_of_runs is not None else best
    if summary.r2_ceiling is None:
        raise RuntimeError(f"{data} has no known ceiling (truth.json)")
    return float(best["r2"]), float(mean["r2"]), float(summary.r2_ceiling)


def run(
    work: Path,
    kinds: list[str] | None = None,
    runs: int = 1,
    extra: dict[str, object] | None = None,
    locations: int = DEFAULT_LOCATIONS,
) -> list[Row]:
    """Synthesize (once), train every kind, return the rows; ``locations`` other than the default synthesize
    a smaller or larger data set in a folder of its own (``WORK/locations-N``)."""
    from socmap.synth import synthesize

    if locations != DEFAULT_LOCATIONS:
        work = work / f"locations-{locations}"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "synth"
    if not (data / "truth.json").is_file():
        synthesize(data, n_locations=locations, overwrite=True)
    rows: list[Row] = []
    tag = "".join(
        f"-{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in (extra or {}).items()
    )
    for kind in kinds or KINDS:
        started = time.perf_counter()
        best, mean, ceiling = _train(data, work / f"run-{kind}{tag}", kind, runs, extra or {})
        note = f"{runs} run(s), {time.perf_counter() - started:.0f} s; ceiling {ceiling:.3f}{tag}"
        rows.append(Row(f"ceiling: {kind} selected run, share", best / ceiling, "", note=note))
        share = mean / ceiling
        rows.append(
            Row(
                f"ceiling: {kind} mean of runs, share",
                share,
                "",
                f">= {TARGET_SHARE}",
                share >= TARGET_SHARE,
                note,
            )
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("work", type=Path)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--locations",
        type=int,
        default=DEFAULT_LOCATIONS,
        help="synthetic sampling locations (2500: 8,124 samples)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = parser.parse_args()
    from socmap.config import parse_override

    overrides = dict(parse_override(item) for item in args.set)  # values read as YAML, as `socmap --set`
    print_table(run(args.work, args.kinds.split(","), args.runs, overrides, args.locations))
