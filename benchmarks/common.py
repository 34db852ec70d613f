"""Shared pieces of the benchmark suite: result rows, the table, timing and the machine's matmul rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


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
