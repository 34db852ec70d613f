"""cv's unit of work: one (model kind, fold) fit, run as a task and kept on disk for ``--resume``.

A fit is independent of every other: a fresh model of its kind, fitted with seed ``train.seed`` on its fold's
training rows, predicts its test rows. :func:`run_fit` is the task; it writes ``oof.npz`` (the out-of-fold
predictions) and then ``result.json`` (a fingerprint of everything the numbers depend on) atomically into the
fit's work folder, so a killed run leaves only finished fits behind. :func:`load_fit` reads one back when its
fingerprint still matches. :func:`run_fits` runs the tasks in this process, on Dask's local threads or
processes, or on a dask.distributed cluster; whatever ran them, the caller assembles them in a fixed order.
On Dask, a fit whose model is a set of independent members (:class:`~socmap.models.MemberFit`: a deep model's
seed ensemble) is split further: each network is a task (:func:`run_member`), and the fit's task joins them,
so five 60-second fits on two workers no longer end after three rounds; the joined fit equals the whole fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from socmap import __version__
from socmap._allocator import undo_dask_malloc_trim
from socmap._atomic import atomic_file, write_json
from socmap.config import SocmapConfig
from socmap.errors import InputError, OutputError
from socmap.models import FitInfo, MemberFit, create_model, model_entry, predict_located, read_rows
from socmap.models.checks import degenerate_warning
from socmap.windows import PreparedData, PreparedMeta

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "CHECKPOINT",
    "INTERVAL_LEVELS",
    "FitTask",
    "FoldFit",
    "Shared",
    "fit_fingerprint",
    "load_fit",
    "run_fit",
    "run_fits",
    "task_threads",
]

INTERVAL_LEVELS = (0.05, 0.5, 0.95)  # q05..q95: the nominal 90 % interval
CHECKPOINT = "checkpoint.pt"  # an iterative model's resume file, not needed once the fold's model is fitted
RESULT = "result.json"  # written last: marks a finished fit
PREDICTIONS = "oof.npz"
THREAD_SAFE_FAMILIES = {"tree", "linear"}
SELF_CONTAINED_FAMILIES = {
    "deep",
    "tree",
    "linear",
}  # fits that read only their own models.<kind> options  # fits that never draw from torch's process-wide random generator
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
DoneCallback = Callable[[int, "FoldFit"], None]

_TORCH_RNG = threading.Lock()  # threads scheduler: one torch-seeded fit at a time (torch's RNG is global)


@dataclass(frozen=True)
class FitTask:
    """One (model kind, fold) fit: its fold's rows, its work folder and the fingerprint of its inputs."""

    kind: str
    fold: int
    train: IntArray
    test: IntArray
    workdir: Path
    fingerprint: str


@dataclass
class FoldFit:
    """A fit's out-of-fold predictions and report."""

    predicted: FloatArray
    quantiles: NDArray[np.floating[Any]] | None  # [n, 3] at INTERVAL_LEVELS
    seconds: float
    info: FitInfo
    resumed: bool = False


def _reopen(path: str, samples: pd.DataFrame, meta: PreparedMeta, folder: Path) -> PreparedData:
    windows = np.load(path, mmap_mode="r", allow_pickle=False)
    return PreparedData(folder, windows, samples, meta)


class Shared:
    """The prepared data as a task argument: memory-mapped windows travel to worker processes as their file
    name (reopened read-only there), not as a copy of every window."""

    def __init__(self, data: PreparedData) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        windows = self.data.windows
        name = getattr(windows, "filename", None)
        if isinstance(windows, np.memmap) and name and _is_whole_file(windows, name):
            data = self.data
            return (_shared_from_file, (str(name), data.samples, data.meta, data.path))
        return (Shared, (self.data,))


def _is_whole_file(windows: NDArray[np.float32], name: str) -> bool:
    """Whether ``windows`` is the whole ``.npy`` array of file ``name`` (not a slice or view of it)."""
    try:
        whole = np.load(name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return bool(whole.shape == windows.shape and whole.dtype == windows.dtype and windows.flags.c_contiguous)


def _shared_from_file(path: str, samples: pd.DataFrame, meta: PreparedMeta, folder: Path) -> Shared:
    return Shared(_reopen(path, samples, meta, folder))


def _digest(*arrays: NDArray[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fit_fingerprint(
    config: SocmapConfig, data: PreparedData, kind: str, train: IntArray, test: IntArray
) -> str:
    """A hash of what a fit's numbers depend on: the config (without the sections that do not change a fit:
    ``map``, ``cv``, ``uncertainty``, the name, thread counts, checkpoint interval and tracking; of ``models`` only the kind's own
    options, except for blends and kriging, which build other kinds), the prepared data (its input
    fingerprint, sample ids and targets), the kind, the fold's rows and socmap's version.

    Args:
        config: the configuration.
        data: the prepared windows.
        kind: the model kind.
        train, test: the fold's row indices.
    """
    dumped = config.model_dump(mode="json", exclude={"map", "cv", "uncertainty", "name", "base_dir"})
    for key in ("threads", "wandb_mode", "wandb_project", "checkpoint_seconds"):
        dumped["train"].pop(key, None)
    if model_entry(kind).family in SELF_CONTAINED_FAMILIES:  # blends and kriging read other kinds' options
        dumped["models"] = {kind: dumped["models"].get(kind, {})}
    payload = {
        "config": dumped,
        "data": data.meta.fingerprint,
        "samples": _digest(data.samples["sample_id"].astype(str).to_numpy().astype("U"), data.target),
        "kind": kind,
        "rows": _digest(np.asarray(train, np.int64), np.asarray(test, np.int64)),
        "socmap": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def task_threads(config: SocmapConfig, scheduler: str | None) -> int | None:
    """Threads of each fit: ``train.threads``; else, when fits run side by side on this machine's cores,
    cores // workers (Dask's local schedulers run one worker per core, so 1), so they do not oversubscribe;
    None: the default (every core; a cluster worker decides in :func:`run_fit`)."""
    if config.train.threads or scheduler is None:
        return config.train.threads
    if scheduler in {"threads", "processes"}:
        return 1
    return None


def _fit(task: FitTask, config: SocmapConfig, data: PreparedData, joined: bool = False) -> FoldFit:
    """Fit a fresh model of the task's kind on its fold's training rows only and predict its test rows
    (``joined``: join the members :func:`run_member` fitted instead of fitting)."""
    train, test = task.train, task.test
    started = time.perf_counter()
    model = create_model(task.kind, config)
    model.model_id = f"{config.name}-{task.kind}-cv-fold{task.fold}"
    fit_data = data.fit_data(train, config.train.seed, task.workdir)
    info = (
        model.fit_from_members(fit_data) if joined and isinstance(model, MemberFit) else model.fit(fit_data)
    )
    point, quantiles = predict_located(model, read_rows(data.windows, test), data.xy[test], INTERVAL_LEVELS)
    if quantiles is not None and np.shape(quantiles) != (test.size, len(INTERVAL_LEVELS)):
        raise InputError(
            f"model {task.kind!r} gave quantiles of shape {np.shape(quantiles)}, expected ({test.size}, 3)"
        )
    seconds = time.perf_counter() - started
    warning = degenerate_warning(data.target[test], point, "its test fold")
    info.warnings.extend([warning] if warning else [])
    q = None if quantiles is None else np.asarray(quantiles)  # its own dtype, as the tables always had it
    return FoldFit(np.asarray(point, np.float64), q, seconds, info)


def member_counts(tasks: list[FitTask], config: SocmapConfig) -> list[int]:
    """Per task, the members its fit splits into (:class:`~socmap.models.MemberFit`: a deep model's seed
    ensemble), each then a task of its own; 1: the fit is one task."""
    counts = []
    for task in tasks:
        model = create_model(task.kind, config)
        counts.append(model.member_count(int(task.train.size)) if isinstance(model, MemberFit) else 1)
    return counts


@contextlib.contextmanager
def _rng_guard(kind: str) -> Iterator[None]:
    """Fits that may seed torch's process-wide generator run one at a time in a process (the threads
    scheduler, a multi-threaded dask.distributed worker); tree and linear fits run beside them."""
    if model_entry(kind).family not in THREAD_SAFE_FAMILIES:
        with _TORCH_RNG:
            yield
    else:
        yield


def _with_threads(config: SocmapConfig, threads: int | None) -> SocmapConfig:
    """``config`` for a task on ``threads`` torch and tree threads (set in this process too; in a Dask worker
    also glibc's allocator limits, see :mod:`socmap._allocator`)."""
    undo_dask_malloc_trim()
    threads = threads or config.train.threads or _worker_threads()
    if not threads:
        return config
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return config.model_copy(update={"train": config.train.model_copy(update={"threads": threads})})


def run_fit(
    task: FitTask, config: SocmapConfig, shared: Shared, threads: int | None, *members: float
) -> FoldFit:
    """The task: fit, then write ``fit.json``, ``history.csv``, ``oof.npz`` and last ``result.json``.

    Args:
        task: the fit.
        config: the configuration.
        shared: the prepared data.
        threads: torch and tree threads of this fit (None: ``train.threads`` or, on a dask.distributed worker,
            the machine's cores // the worker's threads).
        members: the seconds of the members :func:`run_member` fitted for this fit: join them instead of
            fitting (their time is added to the fit's); none: fit here.
    """
    config = _with_threads(config, threads)
    task.workdir.mkdir(parents=True, exist_ok=True)
    kept = {f"seed_{i}" for i in range(len(members))}  # the networks to join; nothing else is kept
    for stale in [p for p in task.workdir.iterdir() if p.name not in kept]:  # a stale checkpoint would resume
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    with _rng_guard(task.kind):
        fit = _fit(task, config, shared.data, joined=bool(members))
    fit.seconds += sum(members)
    (task.workdir / CHECKPOINT).unlink(missing_ok=True)
    info = fit.info
    write_json(
        task.workdir / "fit.json",
        {"kind": task.kind, "fold": task.fold, "n_train": int(task.train.size), **info.to_json()},
    )
    if info.history:
        with atomic_file(task.workdir / "history.csv") as tmp:
            pd.DataFrame(info.history).to_csv(tmp, index=False)
    _save_fit(task, fit)
    return fit


def run_member(task: FitTask, index: int, config: SocmapConfig, shared: Shared, threads: int | None) -> float:
    """The task of one member of a fit (a network of a seed ensemble): fit it into ``seed_<index>`` of the
    fit's work folder; returns its seconds. :func:`run_fit` with every member's seconds joins them."""
    config = _with_threads(config, threads)
    folder = task.workdir / f"seed_{index}"
    if folder.exists():
        shutil.rmtree(folder)  # a stale checkpoint would be resumed
    folder.mkdir(parents=True)
    started = time.perf_counter()
    model = create_model(task.kind, config)
    if not isinstance(model, MemberFit):
        raise TypeError(f"model kind {task.kind!r} does not fit in members")
    with _rng_guard(task.kind):
        model.fit_member(shared.data.fit_data(task.train, config.train.seed, task.workdir), index)
    return time.perf_counter() - started


def _worker_threads() -> int | None:
    """On a dask.distributed worker: the machine's cores // the task threads of every worker on its host, so
    that workers sharing a machine do not oversubscribe it (two one-thread workers on 2 cores: 1 each, not 2;
    oversubscribed, a CNN-LSTM fit ran several times slower); elsewhere None."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return max(1, (os.cpu_count() or 1) // _host_threads(worker))


def _host_threads(worker: Any) -> int:
    """The task threads of all workers on ``worker``'s host, as its scheduler lists them (the worker's own when
    the scheduler cannot be asked)."""
    own = max(1, int(worker.state.nthreads))
    try:
        from distributed import get_client

        listed = get_client().scheduler_info(n_workers=-1)["workers"]
        host = listed[worker.address]["host"]
    except (OSError, ValueError, KeyError, TimeoutError):
        return own
    return max(own, sum(int(w.get("nthreads", 0)) for w in listed.values() if w.get("host") == host))


def _save_fit(task: FitTask, fit: FoldFit) -> None:
    arrays = {"predicted": fit.predicted} | (
        {"quantiles": fit.quantiles} if fit.quantiles is not None else {}
    )
    what = f"cv fit {task.kind} fold {task.fold}"
    with atomic_file(task.workdir / PREDICTIONS, what) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # a file object: no .npz appended to the temp name
    record = {"fingerprint": task.fingerprint, "seconds": fit.seconds, "info": fit.info.to_json()}
    write_json(task.workdir / RESULT, record)


def load_fit(task: FitTask) -> FoldFit | None:
    """The finished fit of ``task`` from its work folder; None when absent, unreadable or of other inputs
    (fingerprint differs: the caller recomputes it)."""
    try:
        record = json.loads((task.workdir / RESULT).read_text())
        if record.get("fingerprint") != task.fingerprint:
            return None
        with np.load(task.workdir / PREDICTIONS, allow_pickle=False) as npz:
            predicted = np.asarray(npz["predicted"], np.float64)
            quantiles = np.asarray(npz["quantiles"]) if "quantiles" in npz else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if predicted.shape != (task.test.size,):
        return None
    info = FitInfo(**{k: v for k, v in record["info"].items() if k in FitInfo.__dataclass_fields__})
    return FoldFit(predicted, quantiles, float(record["seconds"]), info, resumed=True)


def has_fit(task: FitTask) -> bool:
    """Whether ``task``'s finished fit is on disk with a matching fingerprint (cheap: the json only)."""
    try:
        return bool(json.loads((task.workdir / RESULT).read_text()).get("fingerprint") == task.fingerprint)
    except (OSError, ValueError, AttributeError):
        return False


def _dead_worker_message(n_done: int, n_all: int, out: Path, how: str = "twice") -> str:
    """The one line for worker processes that died: what may have killed them, what is kept, what to do."""
    return (
        f"cv: a Dask worker process died {how} (killed, or out of memory: run without --scheduler to fit one "
        "model at a time; from a Python script, guard its code with `if __name__ == '__main__':`); "
        f"{n_done} of {n_all} fits are finished and kept in {out}: run the same command again with --resume"
    )


def run_fits(
    tasks: list[FitTask],
    config: SocmapConfig,
    data: PreparedData,
    scheduler: str | None,
    on_done: DoneCallback,
    out: Path,
    before: Callable[[int], None] | None = None,
) -> None:
    """Run ``tasks``, calling ``on_done(index in tasks, fit)`` as each finishes (in this thread); this
    process's torch thread count is restored afterwards.

    Args:
        tasks: the fits to compute.
        config: the configuration.
        data: the prepared data.
        scheduler: ``cv.scheduler``: None (in this process, in order), ``threads``, ``processes`` (Dask's local
            schedulers; a worker process that dies is replaced once: the unfinished fits run again in a
            fresh pool, then a second death stops with one line) or a dask.distributed address (the cluster
            reschedules the fits of a dead worker; a fit that kills workers repeatedly stops with one line).
        on_done: called after each fit.
        out: the cross-validation folder (named in errors).
        before: called with a task's index before it starts (in this process only).
    """
    import torch

    if not tasks:
        return
    threads, shared, restore = task_threads(config, scheduler), Shared(data), torch.get_num_threads()
    try:
        if scheduler is None:
            for i, task in enumerate(tasks):
                if before is not None:
                    before(i)
                on_done(i, run_fit(task, config, shared, threads))
            return
        work = _Work(tasks, member_counts(tasks, config), config, shared, threads)
        if scheduler in {"threads", "processes"}:
            _run_local(work, scheduler, on_done, out)
        else:
            _run_distributed(work, scheduler, on_done, out)
    finally:
        torch.set_num_threads(restore)


@dataclass(frozen=True)
class _Work:
    """The tasks of a Dask run: each fit, and the members it splits into (see :func:`member_counts`)."""

    tasks: list[FitTask]
    members: list[int]
    config: SocmapConfig
    shared: Shared
    threads: int | None


def _run_local(work: _Work, scheduler: str, on_done: DoneCallback, out: Path) -> None:
    """The fits as Dask tasks on local threads or processes (one task per dispatch: tasks differ in cost); a
    seed ensemble's networks are tasks of their own, and the fit that joins them depends on them."""
    from dask.base import compute
    from dask.callbacks import Callback
    from dask.delayed import Delayed, delayed

    reported: set[int] = set()
    tasks, config, shared, threads = work.tasks, work.config, work.shared, work.threads

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith("socmap-cv-"):
            i = int(key.rsplit("-", 1)[1])
            reported.add(i)
            on_done(i, result)

    def fit(i: int) -> Delayed:
        members = [
            delayed(run_member, pure=False)(
                tasks[i], m, config, shared, threads, dask_key_name=f"socmap-cvm-{i}-{m}"
            )
            for m in range(work.members[i] if work.members[i] > 1 else 0)
        ]
        return delayed(run_fit, pure=False)(
            tasks[i], config, shared, threads, *members, dask_key_name=f"socmap-cv-{i}"
        )

    for attempt in (1, 2):
        graph = [fit(i) for i in range(len(tasks)) if i not in reported]
        try:
            with Callback(posttask=posttask):
                compute(*graph, scheduler=scheduler, chunksize=1)
            return
        except BrokenProcessPool:
            for i in range(len(tasks)):  # fits a dead pool finished but did not report
                fit_done = load_fit(tasks[i]) if i not in reported else None
                if fit_done is not None:
                    reported.add(i)
                    on_done(i, fit_done)
            if attempt == 2:
                raise OutputError(_dead_worker_message(len(reported), len(tasks), out)) from None


def _run_distributed(work: _Work, address: str | Client, on_done: DoneCallback, out: Path) -> None:
    """The fits as tasks on a dask.distributed cluster (its workers must see ``out`` and the prepared data); a
    seed ensemble's networks are tasks of their own, and the fit that joins them depends on them."""
    from distributed import Client, KilledWorker, as_completed

    client = address if isinstance(address, Client) else Client(address)
    run, tasks, threads = uuid.uuid4().hex[:8], work.tasks, work.threads
    try:
        [config_future, shared_future] = client.scatter([work.config, work.shared], broadcast=True)
        futures: dict[Any, int] = {}
        for i, t in enumerate(tasks):
            members = [
                client.submit(
                    run_member, t, m, config_future, shared_future, threads, key=f"socmap-cvm-{run}-{i}-{m}"
                )
                for m in range(work.members[i] if work.members[i] > 1 else 0)
            ]
            fit = client.submit(
                run_fit, t, config_future, shared_future, threads, *members, key=f"socmap-cv-{run}-{i}"
            )
            futures[fit] = i
        try:
            for future in as_completed(list(futures)):
                on_done(futures[future], future.result())
        except (KilledWorker, CancelledError) as exc:  # a fit killed workers, or every copy of the data died
            client.cancel(list(futures))
            n_done = sum(has_fit(t) for t in tasks)
            how = (
                "repeatedly" if isinstance(exc, KilledWorker) else "with the cluster's last copy of the data"
            )
            raise OutputError(_dead_worker_message(n_done, len(tasks), out, how)) from None
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        if client is not address:
            client.close()
