"""Dask workers' MALLOC_TRIM_THRESHOLD_: map blocks and cv fits restore glibc's reuse of freed memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from socmap.config import SocmapConfig
from socmap.evaluate import tasks

PROBE = textwrap.dedent(
    """
    import resource, numpy as np
    from socmap._allocator import undo_dask_malloc_trim

    def faults():
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(40):
            np.ones(1 << 20)  # 8 MB allocated, touched and freed: a training step's activations
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults()
    before = faults()
    done = undo_dask_malloc_trim()
    faults()
    print(before, faults(), done)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_arrays_are_reused_again_in_a_dask_worker_environment() -> None:
    """With dask.distributed's MALLOC_TRIM_THRESHOLD_=65536 every 8 MB array is a fresh mmap whose 2,048 pages
    fault in again (about 20,000 faults for 40 arrays here); after undo_dask_malloc_trim the heap keeps them
    (almost none). Without the variable the function does nothing."""
    env = {"MALLOC_TRIM_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    before, after, done = out.stdout.split()
    assert done == "True"
    assert int(before) > 40 * 100  # each array faulted in again, page by page (or huge page)
    assert int(after) < int(before) / 20
    plain = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout.split()[2] == "False"


def test_every_cv_task_restores_the_allocator_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_fit and run_member set up their process through _with_threads, which calls it."""
    calls: list[int] = []
    monkeypatch.setattr(tasks, "undo_dask_malloc_trim", lambda: calls.append(1) or True)
    tasks._with_threads(SocmapConfig(), 1)
    assert calls == [1]
