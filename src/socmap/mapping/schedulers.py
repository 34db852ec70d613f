"""Where the blocks run: a loop in this process, Dask's local threads or processes, or a dask.distributed
cluster. Blocks are independent tasks that write their own files, so every scheduler gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from socmap.errors import OutputError
from socmap.mapping.blocks import job_members, run_block
from socmap.mapping.plan import Block, MapJob

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "PixelProgress",
    "ProgressCallback",
    "dead_worker",
    "run_blocks",
    "run_dask_local",
    "run_distributed",
    "run_in_process",
]

ProgressCallback = Callable[[int, int], None]


@dataclass
class PixelProgress:
    """Region pixels done of the total, reported to ``callback(done, total)`` (never decreasing)."""

    total: int
    done: int = 0
    callback: ProgressCallback | None = None

    def report(self, extra: int = 0) -> None:
        """Report ``done + extra`` (``extra``: pixels of the running block so far)."""
        if self.callback is not None:
            self.callback(self.done + extra, self.total)

    def block_done(self, block: Block) -> None:
        """Count a finished block's region pixels and report."""
        self.done += block.n_region
        self.report()


def run_in_process(job: MapJob, todo: list[Block], progress: PixelProgress) -> None:
    """The blocks in a loop in this process; each block predicts ``torch.get_num_threads()`` batches at once.

    Args:
        job: the map's job.
        todo: the blocks to compute.
        progress: updated after every batch.
    """
    loop_job = dataclasses.replace(job, batch_threads=torch.get_num_threads())
    members = job_members(job)
    loop_blocks(
        todo, lambda b, on_pixels: run_block(loop_job, b, members, on_pixels), progress, progress.block_done
    )


def loop_blocks(
    todo: list[Block],
    run_one: Callable[[Block, Callable[[int], None]], object],
    progress: PixelProgress,
    done: Callable[[Block], None],
) -> None:
    """Run ``run_one(block, on_pixels)`` for every block in this process, reporting the pixels of the block in
    progress as they are predicted and calling ``done(block)`` after each (single- and multi-year maps)."""
    for block in todo:
        counted = 0

        def on_pixels(n: int) -> None:
            nonlocal counted
            counted += n
            progress.report(counted)

        run_one(block, on_pixels)
        done(block)


def dead_worker(how: str, kept: str) -> OutputError:
    """The one line for a Dask worker process that died mid-block: what may have killed it, what is kept
    (``kept``), and that ``--resume`` continues.

    Args:
        how: e.g. ``twice`` (or empty).
        kept: e.g. ``3 of 9 blocks are finished and kept in X.blocks``.
    """
    return OutputError(
        f"map: a Dask worker process died{' ' + how if how else ''} (killed, or out of memory: try a smaller "
        f"--block-size or --batch-size); {kept}: run the same command again with --resume"
    )


def _dead_worker(job: MapJob, todo: list[Block], how: str) -> OutputError:
    blocks_dir = Path(job.blocks_dir)
    done = sum((blocks_dir / b.name).is_file() for b in todo)
    return dead_worker(how, f"{done} of {len(todo)} blocks are finished and kept in {blocks_dir}")


def run_dask_local(job: MapJob, todo: list[Block], scheduler: str, progress: PixelProgress) -> None:
    """The blocks as Dask tasks on the local threaded or multiprocessing scheduler.

    A worker process that dies (killed, out of memory) breaks Dask's process pool: the blocks without a file
    run once more in a fresh pool; a second death stops with one line (the finished blocks stay for
    ``--resume``, and blocks are written atomically, so the resumed COG is identical).

    Args:
        job: the map's job.
        todo: the blocks to compute.
        scheduler: ``threads`` or ``processes``.
        progress: updated after every block.
    """
    from dask.base import compute
    from dask.callbacks import Callback
    from dask.delayed import delayed

    by_key = {f"socmap-block-{b.name}": b for b in todo}
    reported: set[str] = set()

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in by_key:
            reported.add(key)
            progress.block_done(by_key[key])

    for attempt in (1, 2):
        keys = [k for k in by_key if k not in reported]
        tasks = [delayed(run_block, pure=False)(job, by_key[k], dask_key_name=k) for k in keys]
        try:
            with Callback(posttask=posttask):
                compute(*tasks, scheduler=scheduler)
            return
        except BrokenProcessPool:
            for key in keys:  # blocks the dead pool wrote but did not report
                if key not in reported and (Path(job.blocks_dir) / by_key[key].name).is_file():
                    posttask(key, None, None, None, None)
            if attempt == 2:
                raise _dead_worker(job, todo, "twice") from None


def run_distributed(job: MapJob, todo: list[Block], scheduler: str | Client, progress: PixelProgress) -> None:
    """The blocks as tasks on a dask.distributed cluster; every worker writes its own block files.

    The cluster reruns the blocks of a worker that dies; a block that kills workers
    ``distributed.scheduler.allowed-failures`` times, or the death of every worker that held the scattered
    job, stops the map with one line (finished blocks are kept for ``--resume``).

    Args:
        job: the map's job.
        todo: the blocks to compute.
        scheduler: a scheduler address (``tcp://host:8786``) or a connected ``distributed.Client``.
        progress: updated after every block.
    """
    from distributed import Client, KilledWorker, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        [job_future] = client.scatter([job], broadcast=True)
        futures = {
            client.submit(run_block, job_future, b, key=f"socmap-{job.key}-{b.name}", pure=False): b
            for b in todo
        }
        try:
            for future in as_completed(futures):
                future.result()
                progress.block_done(futures[future])
        except KilledWorker:  # the cluster reschedules a dead worker's blocks, up to distributed's limit
            client.cancel(list(futures))
            raise _dead_worker(job, todo, "on the same block repeatedly") from None
        except CancelledError:  # every worker that held the scattered job died: its blocks cannot run
            client.cancel(list(futures))
            raise _dead_worker(job, todo, "with the cluster's last copy of the map's job") from None
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        if client is not scheduler:
            client.close()


def run_blocks(
    job: MapJob, todo: list[Block], scheduler: str | None, client: Client | None, progress: PixelProgress
) -> None:
    """Run ``todo`` on the chosen scheduler; this process's torch thread count is restored afterwards.

    Args:
        job: the map's job.
        todo: the blocks to compute.
        scheduler: ``map.scheduler``: None (this process), ``threads``, ``processes`` or an address.
        client: a dask.distributed client (takes precedence over ``scheduler``).
        progress: the pixel counter.
    """
    if not todo:
        return
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    blas = threadpool_limits(1, user_api="blas")  # run_block's setting, undone on exit (this process)
    try:
        if client is not None:
            run_distributed(job, todo, client, progress)
        elif scheduler is None:
            run_in_process(job, todo, progress)
        elif scheduler in {"threads", "processes"}:
            run_dask_local(job, todo, scheduler, progress)
        else:
            run_distributed(job, todo, scheduler, progress)
    finally:
        torch.set_num_threads(threads)  # run_block set 1 in this process
        blas.restore_original_limits()
