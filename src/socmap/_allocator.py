"""glibc's allocator in Dask workers: keep freed array memory for reuse instead of unmapping it.

dask.distributed's nanny (and Dask's process pools, through inherited environments) start workers with
``MALLOC_TRIM_THRESHOLD_=65536``. Setting it also switches off glibc's dynamic mmap threshold (fixed at
128 KiB), so every multi-MB array or tensor is a fresh mmap when allocated and unmapped when freed, and its
pages fault in and are zeroed again at the next batch or training step: it halved a map worker's throughput
(benchmarks/bench_mapping.py) and a Macedonia CNN-LSTM fit took 29-32 s instead of 16.8 s
(docs/benchmarks.md). Every map block and cv fit task calls :func:`undo_dask_malloc_trim` first.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["undo_dask_malloc_trim"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def undo_dask_malloc_trim() -> bool:
    """Where ``MALLOC_TRIM_THRESHOLD_`` is set (a Dask worker) on glibc: restore glibc's own upper limits,
    mmap threshold 32 MB and trim threshold 64 MB, once per process. Returns whether it set them; elsewhere a
    no-op (False)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
        )
    except (OSError, AttributeError):  # not glibc
        return False
