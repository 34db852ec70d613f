"""Shared pieces of the benchmark suite: result rows, the table, timing and the machine's matmul rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socmap.config import SocmapConfig


@dataclass
class Row:
    """One measured figure; ``target``/``met`` say what we aim for and whether this run reached it."""

    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (seconds): the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def print_table(rows: list[Row]) -> None:
    header = f"{'benchmark':<46} {'value':>14} {'unit':<12} {'target':<14} {'met':<4} note"
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        print(f"{r.name:<46} {r.value:>14.4g} {r.unit:<12} {r.target:<14} {met:<4} {r.note}")


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """This machine's torch fp32 matrix-multiply rate (GFLOP/s), best of ``repeat``: the roofline we compare to."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    seconds = best_of(lambda: torch.mm(a, b), repeat)
    return 2 * n**3 / seconds / 1e9


def synth_config(data: Path, overrides: dict[str, object]) -> SocmapConfig:
    """The config of a training run on a synthetic data folder (``socmap synth``) with ``overrides``."""
    from socmap.config import load_config

    return load_config(
        None,
        {
            "samples.path": str(data / "samples.csv"),
            "covariates.root": str(data / "covariates"),
            "filters.region": str(data / "region.geojson"),
            "train.wandb_mode": "disabled",
            **overrides,
        },
    )


SEED_WIDTH = {"train.lstm_input_size": 128, "train.lstm_hidden_size": 128}  # the seed project's CNN-LSTM


def quick_run(data: Path, run_dir: Path, prepared: Path, overrides: dict[str, object] | None = None) -> Path:
    """A one-epoch training run on a synthetic data folder (reused when finished); torch threads restored.

    The benchmarks that map or time models need a trained run, not a good one. The CNN-LSTM keeps the seed
    project's width 128 whatever the data size (socmap's default width follows the training size, and these
    runs have about 6,000 samples, below its threshold), so map-speed rows stay comparable between sessions;
    ``overrides`` (e.g. ``bench_models.py --set``) can still set another width.
    """
    import torch

    from socmap.train import train

    if not (run_dir / "metrics.json").exists():
        fixed = {"train.epochs": 1, "train.num_runs": 1, "train.lr": 0.002, **SEED_WIDTH}
        config = synth_config(data, {**fixed, **(overrides or {})})
        threads = torch.get_num_threads()
        train(config, run_dir, prepared=prepared, overwrite=True)
        torch.set_num_threads(threads)
    return run_dir
