"""cv's (model, fold) fits as Dask tasks and ``cv --resume``: the tables of a run on Dask threads or processes,
and of a run interrupted (an exception, a SIGKILL) and resumed, equal an uninterrupted sequential run's."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import socmap.evaluate.tasks as tasks
from socmap.config import SocmapConfig, load_config
from socmap.errors import OutputError
from socmap.evaluate import CVResult, cross_validate
from socmap.windows import PreparedData, prepare

MODELS = ["linear", "qrf", "cnn_lstm"]  # a point model, a quantile model, a torch-seeded deep model
FOLDS = 3
TABLES = ("predictions.csv", "metrics_per_fold.csv", "metrics_summary.csv", "intervals.csv", "aoa_errors.csv")


def overrides(root: Path) -> dict[str, Any]:
    return {
        "samples.path": str(root / "samples.csv"),
        "covariates.root": str(root / "covariates"),
        "train.epochs": 1,
        "train.seed_models": 2,  # on Dask, each network of the seed ensemble is a task of its own
        "train.batch_size": 128,
        "train.lstm_input_size": 16,
        "train.lstm_hidden_size": 16,
        "train.loss_type": "quantile",
        "train.wandb_mode": "disabled",
        "train.threads": 1,  # a fit's floats depend on its torch thread count: the same in every run here
        "models": {"qrf": {"n_estimators": 40}},
        "cv.models": MODELS,
        "cv.folds": FOLDS,
        "cv.seed": 3,
    }


def config(root: Path, **extra: Any) -> SocmapConfig:
    return load_config(None, overrides(root) | extra)


def tables(out: Path) -> dict[str, pd.DataFrame]:
    """The cv's tables without wall times (the only numbers that differ between runs)."""
    found = {name: pd.read_csv(out / name) for name in TABLES}
    found["metrics_per_fold.csv"] = found["metrics_per_fold.csv"].drop(columns="seconds")
    return found


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in TABLES:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    ja, jb = (json.loads((d / "cv.json").read_text()) for d in (a, b))
    for j in (ja, jb):
        j.pop("seconds")
    assert ja == jb


@pytest.fixture(scope="module")
def prepared(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    data, _ = prepare(config(small_synth_dir), tmp_path_factory.mktemp("prep-tasks") / "p")
    return data


@pytest.fixture(scope="module")
def sequential(
    small_synth_dir: Path, prepared: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> CVResult:
    """The reference: every fit in this process, one after another."""
    return cross_validate(config(small_synth_dir), prepared, tmp_path_factory.mktemp("cv-seq") / "cv")


def test_reference_run_is_a_real_comparison(sequential: CVResult) -> None:
    """The reference has every (model, fold) row and distinct models, so equality below means something."""
    per_fold = sequential.per_fold
    assert [(m, k) for m, k in zip(per_fold["model"], per_fold["fold"], strict=True)] == [
        (m, k) for m in MODELS for k in range(FOLDS)
    ]
    p = sequential.predictions.pivot_table(index="index", columns="model", values="predicted")
    assert p["linear"].ne(p["qrf"]).all() and p["qrf"].ne(p["cnn_lstm"]).all()
    assert sequential.interval_models == ["qrf", "cnn_lstm"] and sequential.n_resumed == 0


def kill_once(marker: Path) -> Any:
    """A ``run_fit`` that SIGKILLs its worker process in the first fit of fold 1 (once: ``marker`` records it).
    A nested function: Dask ships it to the workers by value; it calls the worker's own ``run_fit``."""

    def run(task: tasks.FitTask, *args: Any) -> tasks.FoldFit:
        if task.fold == 1 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return importlib.import_module("socmap.evaluate.tasks").run_fit(task, *args)

    return run


@pytest.mark.parametrize("scheduler", ["threads", "processes", "distributed"])
def test_dask_schedulers_equal_the_sequential_run_bit_for_bit(
    small_synth_dir: Path,
    prepared: PreparedData,
    sequential: CVResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
) -> None:
    """Also on processes, where one worker is SIGKILLed mid-fit: the unfinished fits run again in a fresh
    pool and the numbers do not change. The CNN-LSTM's two networks per fit run as tasks of their own."""
    seen: list[tuple[str, int]] = []
    members: list[tuple[str, int, int]] = []
    real_member = tasks.run_member

    def member(task: tasks.FitTask, index: int, *args: Any) -> float:
        members.append((task.kind, task.fold, index))
        return real_member(task, index, *args)

    if scheduler == "threads":  # in this process, not shipped: the calls can be counted
        monkeypatch.setattr(tasks, "run_member", member)

    def run(name: str) -> CVResult:
        return cross_validate(
            config(small_synth_dir, **{"cv.scheduler": name}),
            prepared,
            tmp_path / "cv",
            on_fold=lambda kind, k, n, s: seen.append((kind, k)),
        )

    if scheduler == "distributed":  # one in-process worker with two threads: two fits share a process
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster:
            result = run(cluster.scheduler_address)
    elif scheduler == "processes":
        monkeypatch.setattr(tasks, "run_fit", kill_once(tmp_path / "killed"))
        result = run(scheduler)
        assert (tmp_path / "killed").exists()  # a worker died, and the cv still finished
    else:
        result = run(scheduler)
    assert sorted(seen) == sorted((m, k) for m in MODELS for k in range(FOLDS))  # each fit reported once
    if scheduler == "threads":
        assert sorted(members) == [("cnn_lstm", k, i) for k in range(FOLDS) for i in range(2)]
    assert not list(result.out.glob("models/*/fold_*/seed_*/*.pt"))  # member files and checkpoints removed
    assert_same_tables(sequential.out, result.out)


def test_networks_fitted_apart_join_to_the_same_model(
    small_synth_dir: Path, prepared: PreparedData, tmp_path: Path
) -> None:
    """A seed ensemble fitted network by network (each possibly in another process) and joined equals the
    one fit, weights and predictions bit for bit, and the member files are removed once joined."""
    from socmap.models import MemberFit, create_model
    from socmap.models.deep import DeepModel

    cfg = config(small_synth_dir, **{"train.target_transform": "log", "train.back_transform": "mean"})
    rows, test = np.arange(0, 300, dtype=np.int64), np.arange(300, 360, dtype=np.int64)
    whole = create_model("cnn_lstm", cfg)
    whole_info = whole.fit(prepared.fit_data(rows, 5, tmp_path / "whole"))
    apart = create_model("cnn_lstm", cfg)
    assert isinstance(apart, MemberFit) and apart.member_count(rows.size) == 2
    assert isinstance(apart, DeepModel) and isinstance(whole, DeepModel)
    data = prepared.fit_data(rows, 5, tmp_path / "apart")
    files = [apart.fit_member(data, 1)]  # any order
    with pytest.raises(
        OutputError, match=r"network 0 of a cnn_lstm seed ensemble: .*seed_0/member.pt is missing"
    ):
        apart.fit_from_members(data)  # a network not fitted (or on another file system): one line
    files.append(apart.fit_member(data, 0))
    assert [f.relative_to(tmp_path) for f in files] == [
        Path("apart/seed_1/member.pt"),
        Path("apart/seed_0/member.pt"),
    ]
    info = apart.fit_from_members(data)
    assert not any(f.exists() for f in files)

    def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]

    assert info.to_json() == whole_info.to_json()
    assert untimed(info.history) == untimed(whole_info.history) and len(info.history) > 0
    assert apart.transform.to_dict() == whole.transform.to_dict()  # the smearing factor too
    for (k, a), (_, b) in zip(apart.net.state_dict().items(), whole.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    windows = prepared.windows[test]
    np.testing.assert_array_equal(apart.predict(windows), whole.predict(windows))
    assert not isinstance(create_model("rf", cfg), MemberFit)  # a tree fit is one task


def test_workers_get_the_windows_by_file_name(prepared: PreparedData) -> None:
    """A memory-mapped windows file travels to worker processes as its name, not as a copy of the array."""
    import pickle

    small = pickle.dumps(tasks.Shared(prepared))
    assert len(small) < prepared.windows.nbytes / 4
    back = pickle.loads(small).data
    assert isinstance(back.windows, np.memmap)
    np.testing.assert_array_equal(back.windows, prepared.windows)
    in_memory = PreparedData(prepared.path, np.array(prepared.windows), prepared.samples, prepared.meta)
    assert len(pickle.dumps(tasks.Shared(in_memory))) > prepared.windows.nbytes  # no file: sent whole


def test_resume_after_a_failure_reuses_finished_fits(
    small_synth_dir: Path,
    prepared: PreparedData,
    sequential: CVResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, out = config(small_synth_dir), tmp_path / "cv"
    real_fit, fitted, stop = tasks._fit, [], [True]

    def fail_after_four(task: tasks.FitTask, *args: Any, **kwargs: Any) -> tasks.FoldFit:
        if stop[0] and len(fitted) == 4:
            raise RuntimeError("stop hook")
        fitted.append((task.kind, task.fold))
        return real_fit(task, *args, **kwargs)

    monkeypatch.setattr(tasks, "_fit", fail_after_four)
    with pytest.raises(RuntimeError, match="stop hook"):
        cross_validate(cfg, prepared, out)
    assert not (out / "metrics_summary.csv").exists()
    assert sorted(p.parent.name for p in out.glob("models/*/fold_*/result.json")) == [
        "fold_00",
        "fold_00",
        "fold_01",
        "fold_02",
    ]
    fitted.clear()
    stop[0] = False
    lines: list[str] = []
    resumed = cross_validate(cfg, prepared, out, resume=True, progress=lines.append)
    assert resumed.n_resumed == 4 and len(fitted) == 3 * FOLDS - 4  # only the unfinished fits ran
    assert fitted == [("qrf", 1), ("qrf", 2), ("cnn_lstm", 0), ("cnn_lstm", 1), ("cnn_lstm", 2)]
    assert "resuming: 4 of 9 fits finished" in lines
    assert_same_tables(sequential.out, out)


def test_resume_recomputes_fits_of_another_config(
    small_synth_dir: Path, prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fits whose config (here models.qrf) or data changed are not reused: the line says so, numbers follow."""
    out = tmp_path / "cv"
    cfg = config(small_synth_dir, **{"cv.models": ["linear", "qrf"]})
    first = cross_validate(cfg, prepared, out)
    (out / "metrics_summary.csv").unlink()  # as if killed before the tables
    changed = config(
        small_synth_dir, **{"cv.models": ["linear", "qrf"], "models": {"qrf": {"n_estimators": 7}}}
    )
    lines: list[str] = []
    again = cross_validate(changed, prepared, out, resume=True, progress=lines.append)
    assert again.n_resumed == FOLDS  # linear only
    assert (
        f"resuming: {FOLDS} of {2 * FOLDS} fits finished; {FOLDS} made with another config or data are recomputed"
        in lines
    )
    assert again.warnings[0].endswith(
        f"{FOLDS} finished fits in {out} were made with another config or data and were recomputed"
    )
    fresh = cross_validate(changed, prepared, tmp_path / "fresh")
    pd.testing.assert_frame_equal(again.predictions, fresh.predictions, check_exact=True)
    qrf = first.predictions["model"] == "qrf"
    assert not np.array_equal(first.predictions["q95"][qrf], again.predictions["q95"][qrf])


def test_sigkilled_cv_resumes_to_the_same_numbers(
    small_synth_dir: Path, prepared: PreparedData, sequential: CVResult, tmp_path: Path
) -> None:
    """`socmap cv` killed by SIGKILL mid-way, then `socmap cv --resume`: the finished fits are kept, the
    tables equal the uninterrupted run's."""
    nested: dict[str, Any] = {}
    for key, value in overrides(small_synth_dir).items():  # "train.epochs" -> {"train": {"epochs": ...}}
        section, _, name = key.partition(".")
        nested[section] = nested.get(section, {}) | ({name: value} if name else value)
    cfg_path, out = tmp_path / "cv.yaml", tmp_path / "cv"
    cfg_path.write_text(yaml.safe_dump(nested))
    command = [sys.executable, "-m", "socmap.cli", "cv", "--config", str(cfg_path), "--out", str(out)]
    command += ["--prepared", str(prepared.path)]  # the same windows, not prepared again
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("models/*/fold_*/result.json"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "cv did not finish two fits in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics_summary.csv").exists(), "cv finished before it was killed"
    finished = len(list(out.glob("models/*/fold_*/result.json")))
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resumed {finished} of {3 * FOLDS} fits" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert_same_tables(sequential.out, out)


def test_fingerprint_follows_what_changes_a_fit(small_synth_dir: Path, prepared: PreparedData) -> None:
    train, test = np.arange(0, 200), np.arange(200, 250)

    def fp(kind: str = "linear", rows: tuple[np.ndarray, np.ndarray] = (train, test), **extra: Any) -> str:
        return tasks.fit_fingerprint(config(small_synth_dir, **extra), prepared, kind, *rows)

    base = fp()
    same = {
        "train.threads": 2,
        "name": "other",
        "cv.scheduler": "processes",
        "cv.folds": 7,
        "map.year": "2020",
    }
    assert all(fp(**{k: v}) == base for k, v in same.items())
    assert fp(models={"qrf": {"n_estimators": 9}}) == base  # another kind's options
    assert fp("qrf", models={"qrf": {"n_estimators": 9}}) != fp("qrf")
    assert fp(**{"train.seed": 1}) != base and fp(**{"train.target_transform": "log"}) != base
    assert fp("rf") != base and fp(rows=(train[1:], test)) != base and fp(rows=(train, test[:-1])) != base


def test_bad_scheduler_is_one_line_naming_the_flag() -> None:
    from socmap.cli import flag_message
    from socmap.errors import InputError

    with pytest.raises(InputError) as caught:
        load_config(None, {"cv.scheduler": "bogus"})
    assert flag_message(str(caught.value)).endswith(
        "cv.scheduler: scheduler 'bogus': expected threads, processes or a dask.distributed address such as "
        "tcp://host:8786 (flag --scheduler)"
    )


def test_cluster_workers_sharing_a_host_share_its_cores() -> None:
    """A fit on a dask.distributed worker takes the host's cores // the task threads of every worker on that
    host: two one-thread workers on one machine get half the cores each (not all of them each, which
    oversubscribed a 2-core machine), a lone one-thread worker all of them."""
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    for n_workers, expected in ((2, max(1, cores // 2)), (1, cores)):
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            got = [client.submit(tasks._worker_threads, pure=False, workers=[w]).result() for w in workers]
        assert got == [expected] * n_workers
    assert tasks._worker_threads() is None  # not on a worker
