"""Where the blocks run: a loop in this process, Dask's local threads or processes, or a dask.distributed
cluster. Blocks are independent tasks that write their own files, so every scheduler gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from socmap.mapping.blocks import job_members, run_block
from socmap.mapping.plan import Block, MapJob

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "PixelProgress",
    "ProgressCallback",
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
    for block in todo:
        counted = 0

        def on_pixels(n: int) -> None:
            nonlocal counted
            counted += n
            progress.report(counted)

        run_block(loop_job, block, members, on_pixels)
        progress.block_done(block)


def run_dask_local(job: MapJob, todo: list[Block], scheduler: str, progress: PixelProgress) -> None:
    """The blocks as Dask tasks on the local threaded or multiprocessing scheduler.

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
    tasks = [delayed(run_block, pure=False)(job, b, dask_key_name=k) for k, b in by_key.items()]

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in by_key:
            progress.block_done(by_key[key])

    with Callback(posttask=posttask):
        compute(*tasks, scheduler=scheduler)


def run_distributed(job: MapJob, todo: list[Block], scheduler: str | Client, progress: PixelProgress) -> None:
    """The blocks as tasks on a dask.distributed cluster; every worker writes its own block files.

    Args:
        job: the map's job.
        todo: the blocks to compute.
        scheduler: a scheduler address (``tcp://host:8786``) or a connected ``distributed.Client``.
        progress: updated after every block.
    """
    from distributed import Client, as_completed

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
