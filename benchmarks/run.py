"""socmap benchmark suite (``make bench``): every figure measured in this run, printed next to its target.

Outside the test suite on purpose: timings are noisy, so the tests assert correctness of the fast paths and
this suite reports speed as ratios (ours vs a naive reference, ours vs the machine's own measured limit).
Results and the commands that produced them are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backtransform
import bench_ceiling
import bench_cpu_options
import bench_cv
import bench_extraction
import bench_mapping
import bench_models
import bench_realdata
import bench_scaling
import bench_synth
import bench_training
import bench_years

from common import Row, print_table

SUITES = {
    "synth": bench_synth.run,
    "extraction": bench_extraction.run,
    "training": bench_training.run,
    "mapping": bench_mapping.run,
    "models": bench_models.run,
    "scaling": bench_scaling.run,
    "cpu-options": bench_cpu_options.run,
    "realdata": bench_realdata.run,
    "years": bench_years.run,
    "cv": bench_cv.run,
    "ceiling": bench_ceiling.run,
    "backtransform": bench_backtransform.suite,
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        nargs="*",
        choices=sorted(SUITES),
        help="run only these suites (default: all but realdata, models, ceiling and backtransform)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(f"machine: {os.cpu_count()} cores, {_cpu_model()}, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="socmap-bench-") as tmp:
        work = args.workdir or Path(tmp)
        for name in args.only or [
            s for s in SUITES if s not in {"realdata", "models", "ceiling", "backtransform"}
        ]:
            started = time.perf_counter()
            rows.extend(SUITES[name](work / name))
            print(f"[{name}] done in {time.perf_counter() - started:.1f} s", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
