"""Training: validation split, normalisation and target transform fitted on training data only, an
Accelerate loop with early stopping that restores the best weights (a real copy), per-epoch checkpoints
for ``--resume``, several runs with different seeds, and tracking (local files always, W&B offline by default).

The same code runs with plain ``python`` on a CPU and under ``accelerate launch`` on GPUs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Sampler, TensorDataset

from socmap._atomic import atomic_file, check_output_dir, write_json, write_text
from socmap.config import SocmapConfig, dump_config, load_config
from socmap.errors import InputError, OutputError
from socmap.losses import SocLoss, n_outputs_for, point_prediction
from socmap.metrics import regression_metrics
from socmap.models import build_model, count_parameters, model_config
from socmap.normalize import Normalizer
from socmap.predictor import Predictor, load_predictor, save_predictor
from socmap.sampling import BalancedSampler, balance_report
from socmap.split import make_splitter
from socmap.transforms import TargetTransform
from socmap.windows import PreparedData, prepare

EVAL_BATCH = 4096
MIN_SAMPLES = 20
AGGREGATED = ("r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc")


class EpochSampler(Sampler[int]):
    """A random permutation per epoch, seeded by (seed, epoch): resuming at any epoch gives the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class SplitPlan:
    """Training and validation sample indices of one run."""

    train: NDArray[np.int64]
    val: NDArray[np.int64]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """One training run: its metrics, history and where its model lies."""

    run: int
    seed: int
    folder: Path
    metrics: dict[str, Any]
    history: pd.DataFrame


@dataclass
class TrainResult:
    """All runs, the aggregated metrics and the best run (kept as the run folder's model)."""

    out: Path
    runs: list[RunResult]
    best_run: int
    summary: dict[str, Any]


def make_split(config: SocmapConfig, data: PreparedData, seed: int) -> SplitPlan:
    """The validation split of the config's method (k-fold methods: the first fold is validation)."""
    n = len(data.samples)
    if not config.train.use_validation:
        return SplitPlan(
            np.arange(n), np.empty(0, np.int64), {"note": "no validation (use_validation false)"}
        )
    scfg = config.split
    coords = data.samples[["lon", "lat"]]
    kwargs: dict[str, Any] = {"seed": seed}
    if scfg.method == "distance-split":
        kwargs |= {"val_ratio": scfg.val_ratio, "min_distance_km": scfg.distance_km}
    elif scfg.method == "spatial-block":
        kwargs |= {"n_splits": scfg.folds, "block_size_km": scfg.block_size_km}
    elif scfg.method == "random":
        kwargs |= {"n_splits": scfg.folds}
    else:
        raise InputError(
            f"split.method {scfg.method!r} cannot give one validation set for training; "
            "use distance-split, spatial-block or random (buffered is for `socmap cv`)"
        )
    splitter = make_splitter(scfg.method, **kwargs)
    train_idx, val_idx = next(iter(splitter.split(coords, data.target)))
    if len(val_idx) < 5 or len(train_idx) < 10:
        raise InputError(
            f"split {scfg.method} gave {len(train_idx)} training and {len(val_idx)} validation samples: too few; "
            "use more samples, a larger split.val_ratio, or --no_validation"
        )
    from socmap.split import split_report

    report = split_report(coords, data.target, train_idx, val_idx, unit=str(data.meta["target"]["unit"]))
    report["method"] = scfg.method
    return SplitPlan(np.asarray(train_idx, np.int64), np.asarray(val_idx, np.int64), report)


def r2_ceiling_for(config: SocmapConfig, data: PreparedData, val_idx: NDArray[np.int64]) -> float | None:
    """Best possible validation R² when the samples come with a known truth (synthetic data)."""
    truth_path = config.resolve(config.samples.path).parent / "truth.csv"
    if not truth_path.is_file() or val_idx.size < 2:
        return None
    truth = pd.read_csv(truth_path, dtype={"POINTID": str})
    val = data.samples.iloc[val_idx]
    merged = val.merge(
        truth, left_on=["sample_id", "year"], right_on=["POINTID", "year"], how="left", validate="one_to_one"
    )
    if merged["OC_truth"].isna().any():
        return None
    return float(regression_metrics(merged["target"], merged["OC_truth"])["r2"])


class _Tracker:
    """Weights & Biases run (offline by default, never online unless asked); a no-op when disabled."""

    def __init__(self, mode: str, project: str, folder: Path, name: str, config: dict[str, Any]) -> None:
        self.run: Any = None
        if mode == "disabled":
            return
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            settings=wandb.Settings(silent=True),
            mode=mode,  # type: ignore[arg-type]
            dir=str(folder),
            name=name,
            config=config,
            reinit="create_new",
        )

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


def _wandb_mode(config: SocmapConfig) -> str:
    mode = config.train.wandb_mode or os.environ.get("WANDB_MODE", "offline")
    if mode not in {"online", "offline", "disabled", "dryrun"}:
        raise InputError(f"wandb mode {mode!r}: expected online, offline or disabled")
    return "offline" if mode == "dryrun" else mode


def _evaluate(
    model: torch.nn.Module,
    loss_fn: SocLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: torch.Tensor | None,
    device: torch.device,
) -> tuple[float, torch.Tensor]:
    """Mean loss and raw outputs over a whole tensor set, in eval mode."""
    model.eval()
    outputs, total = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(x), EVAL_BATCH):
            xb = x[start : start + EVAL_BATCH].to(device)
            yb = y[start : start + EVAL_BATCH].to(device)
            sb = sigma[start : start + EVAL_BATCH].to(device) if sigma is not None else None
            out = model(xb)
            total += float(loss_fn(out, yb, sb)) * len(xb)
            outputs.append(out.float().cpu())
    return total / max(len(x), 1), torch.cat(outputs)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def fit_run(
    config: SocmapConfig,
    data: PreparedData,
    plan: SplitPlan,
    run: int,
    folder: Path,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_epoch: int | None = None,
) -> RunResult:
    """Train one run (resuming from ``folder/checkpoint.pt`` if present) and save its model and metrics.

    ``stop_after_epoch`` interrupts the run after that epoch (as a crash would): used to test resuming.
    """
    tcfg = config.train
    seed = tcfg.seed + run
    folder.mkdir(parents=True, exist_ok=True)
    bands, static = list(data.meta["bands"]), list(data.meta["static_bands"])
    normalizer = Normalizer.fit(data.windows, plan.train, bands, static)
    transform = TargetTransform(tcfg.target_transform).fit(data.target[plan.train])
    y_all = data.target

    def tensors(idx: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = torch.from_numpy(normalizer.transform(np.asarray(data.windows[np.sort(idx)])))
        order = np.argsort(np.argsort(idx))  # windows were read in sorted order
        x = x[torch.from_numpy(order)]
        y = torch.from_numpy(transform.forward(y_all[idx]).astype(np.float32))
        sigma = None
        if tcfg.loss_type.startswith("composite"):
            if "uncertainty" in data.samples.columns:
                raw = data.samples["uncertainty"].to_numpy(np.float64)[idx]
                raw = np.where(np.isfinite(raw) & (raw > 0), raw, tcfg.loss_sigma)
            else:
                raw = np.full(idx.size, tcfg.loss_sigma)
            sigma = torch.from_numpy(transform.scale_sigma(raw, y_all[idx]).astype(np.float32))
        return x, y, sigma

    x_tr, y_tr, s_tr = tensors(plan.train)
    has_val = plan.val.size > 0
    x_va, y_va, s_va = tensors(plan.val) if has_val else (x_tr[:0], y_tr[:0], None)

    torch.manual_seed(seed)
    quantiles = tuple(tcfg.quantiles)
    spec_model = model_config(
        tcfg.model,
        num_channels=len(bands),
        lstm_input_size=tcfg.lstm_input_size,
        lstm_hidden_size=tcfg.lstm_hidden_size,
        num_layers=tcfg.num_layers,
        dropout=tcfg.dropout,
        window_size=int(data.meta["window_size"]),
        n_outputs=n_outputs_for(tcfg.loss_type, quantiles),
    )
    model = build_model(spec_model["name"], **spec_model["kwargs"])
    loss_fn = SocLoss(tcfg.loss_type, tcfg.loss_alpha, tcfg.loss_sigma, quantiles)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler: Any = None
    if tcfg.lr_schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, tcfg.patience // 3)
        )
    elif tcfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tcfg.epochs)

    sampler: EpochSampler | BalancedSampler
    if config.sampling.balanced:
        sampler = BalancedSampler(
            y_all[plan.train],
            n_bins=config.sampling.n_bins,
            min_fraction=config.sampling.min_fraction,
            binning=config.sampling.binning,
            seed=seed,
        )
    else:
        sampler = EpochSampler(len(plan.train), seed)
    dataset = TensorDataset(x_tr, y_tr, s_tr if s_tr is not None else torch.zeros_like(y_tr))
    loader = DataLoader(dataset, batch_size=tcfg.batch_size, sampler=sampler, drop_last=False)
    accelerator = Accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    device = accelerator.device

    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_loss, best_epoch, bad_epochs, start_epoch = float("inf"), -1, 0, 0
    ckpt_path = folder / "checkpoint.pt"
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                f"checkpoint {ckpt_path} is corrupt ({type(exc).__name__}); delete it to restart"
            ) from None
        accelerator.unwrap_model(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        best_state, best_loss = ckpt["best_state"], float(ckpt["best_loss"])
        best_epoch, bad_epochs = int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
        history = [dict(zip(ckpt["history_keys"], row, strict=True)) for row in ckpt["history"].tolist()]
        start_epoch = int(ckpt["epoch"]) + 1
        torch.set_rng_state(ckpt["torch_rng"])

    tracker = _Tracker(
        _wandb_mode(config),
        tcfg.wandb_project,
        folder,
        f"{config.name}-run{run}",
        {"run": run, "seed": seed, **config.model_dump(mode="json", exclude={"base_dir"})},
    )
    if start_epoch == 0:
        tracker.log({"parameters": count_parameters(model)}, step=0)
    stopped_early = bool(history) and bad_epochs >= tcfg.patience
    for epoch in range(start_epoch, tcfg.epochs if not stopped_early else start_epoch):
        sampler.set_epoch(epoch)
        loader.set_epoch(epoch)  # Accelerate's loader re-sets the sampler's epoch from its own counter
        model.train()
        started = time.perf_counter()
        data_time, total, count = 0.0, 0.0, 0
        fetch_start = time.perf_counter()
        for xb, yb, sb in loader:
            data_time += time.perf_counter() - fetch_start
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb, sb if s_tr is not None else None)
            accelerator.backward(loss)
            if tcfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * len(xb)
            count += len(xb)
            fetch_start = time.perf_counter()
        train_loss = total / max(count, 1)
        row: dict[str, float] = {"epoch": float(epoch), "train_loss": train_loss}
        monitored = train_loss
        if has_val:
            val_loss, out_va = _evaluate(model, loss_fn, x_va, y_va, s_va, device)
            pred = transform.inverse(point_prediction(out_va, tcfg.loss_type, quantiles).double().numpy())
            m = regression_metrics(y_all[plan.val], pred)
            row |= {"val_loss": val_loss, "val_r2": m["r2"], "val_rmse": m["rmse"], "val_mae": m["mae"]}
            monitored = val_loss
        row |= {
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - started,
            "data_seconds": data_time,
            "samples": float(count),
        }
        history.append(row)
        if monitored < best_loss - tcfg.min_delta:
            best_loss, best_epoch, bad_epochs = monitored, epoch, 0
            best_state = {
                k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()
            }
        else:
            bad_epochs += 1
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(monitored)
            else:
                scheduler.step()
        tracker.log(row, step=epoch)
        if progress is not None:
            progress(epoch, row)
        keys = list(history[0])
        _save_checkpoint(
            ckpt_path,
            {
                "model": {
                    k: v.detach().cpu().clone()
                    for k, v in accelerator.unwrap_model(model).state_dict().items()
                },
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "best_state": best_state,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "epoch": epoch,
                "history_keys": keys,
                "history": torch.tensor(
                    [[r.get(k, float("nan")) for k in keys] for r in history], dtype=torch.float64
                ),
                "torch_rng": torch.get_rng_state(),
            },
        )
        if has_val and bad_epochs >= tcfg.patience:
            stopped_early = True
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (test interruption)")

    final = accelerator.unwrap_model(model)
    if best_state is not None:
        final.load_state_dict(best_state)  # the best epoch's weights, not the last epoch's
    final = final.cpu().eval()
    spec = {
        "model": spec_model,
        "loss_type": tcfg.loss_type,
        "quantiles": list(quantiles),
        "bands": bands,
        "static_bands": static,
        "window_size": int(data.meta["window_size"]),
        "time_steps": int(data.meta["time_steps"]),
        "time_labels": list(data.meta["time_labels"]),
        "grid": data.meta["grid"],
        "target": data.meta["target"],
        "run": run,
        "seed": seed,
        "best_epoch": best_epoch,
        "model_id": f"{config.name}-{tcfg.model}-run{run}-seed{seed}",
        "parameters": count_parameters(final),
    }
    predictor = Predictor(final, spec, normalizer, transform)
    save_predictor(folder, predictor)
    hist = pd.DataFrame(history)
    with atomic_file(folder / "history.csv") as tmp:
        hist.to_csv(tmp, index=False)
    metrics: dict[str, Any] = {
        "run": run,
        "seed": seed,
        "best_epoch": best_epoch,
        "epochs_trained": len(history),
        "stopped_early": stopped_early,
        "parameters": count_parameters(final),
    }
    eval_idx = plan.val if has_val else plan.train
    pred = predictor.predict(data.windows[np.sort(eval_idx)])
    order = np.argsort(np.argsort(eval_idx))
    pred = pred[order]
    role = "validation" if has_val else "training (no validation held out)"
    metrics["evaluated_on"] = role
    metrics["metrics"] = regression_metrics(y_all[eval_idx], pred)
    intervals = predictor.predict_intervals(data.windows[np.sort(eval_idx)])
    table = pd.DataFrame(
        {
            "sample_id": data.samples["sample_id"].to_numpy()[eval_idx],
            "time": data.samples["time"].to_numpy()[eval_idx],
            "observed": y_all[eval_idx],
            "predicted": pred,
        }
    )
    if intervals is not None:
        from socmap.metrics import interval_metrics

        for name, values in intervals.items():
            table[name] = values[order]
        if "q05" in table and "q95" in table:
            metrics["intervals"] = interval_metrics(table["observed"], table["q05"], table["q95"], 0.9)
    with atomic_file(folder / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json(folder / "metrics.json", metrics)
    ckpt_path.unlink(missing_ok=True)
    tracker.finish({f"final/{k}": v for k, v in metrics["metrics"].items()})
    return RunResult(run, seed, folder, metrics, hist)


def _aggregate(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in AGGREGATED:
        values = np.array([r.metrics["metrics"][key] for r in runs], dtype=np.float64)
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def _load_run(folder: Path, run: int) -> RunResult:
    import json

    metrics = json.loads((folder / "metrics.json").read_text())
    return RunResult(run, int(metrics["seed"]), folder, metrics, pd.read_csv(folder / "history.csv"))


def train(
    config: SocmapConfig,
    out: str | Path,
    prepared: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = False,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config.train.num_runs`` runs into ``out`` and keep the best (by validation R²) as its model.

    ``out`` gets: config.yaml, split.csv, split_report.json, runs/run_<i>/ (model.pt, model.json, history.csv,
    metrics.json, predictions.csv), the best run's model.pt/model.json, metrics.json and scatter.png.
    """
    out = Path(out)
    if (out / "metrics.json").is_file() and not overwrite:
        raise OutputError(
            f"run folder {out} already holds a finished run; pass --overwrite or choose another --out"
        )
    if resume:
        if not (out / "config.yaml").is_file():
            raise InputError(f"--resume: {out} holds no config.yaml of an interrupted run")
        config = load_config(out / "config.yaml")
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(
                f"run folder {out} exists and is not empty; pass --resume to continue it or --overwrite"
            )
        if not (out / "config.yaml").is_file():
            raise OutputError(
                f"run folder {out} is not empty and is not a socmap run folder (no config.yaml); refusing to "
                "delete it: choose a new or empty --out"
            )
        import shutil

        shutil.rmtree(out)
    check_output_dir(out, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    write_text(out / "config.yaml", dump_config(config))
    prepared_dir = Path(prepared) if prepared is not None else out / "prepared"
    data, _ = prepare(config, prepared_dir, overwrite=True)
    n = len(data.samples)
    if n < MIN_SAMPLES:
        raise InputError(f"only {n} samples after filters: too few to train (need at least {MIN_SAMPLES})")

    tcfg = config.train
    plans = [
        make_split(config, data, config.split.seed + (i if tcfg.vary_split else 0))
        for i in range(tcfg.num_runs)
    ]
    split_table = data.samples[["sample_id", "time", "lon", "lat", "target"]].copy()
    for i, plan in enumerate(plans if tcfg.vary_split else plans[:1]):
        role = np.full(n, "unused", dtype=object)
        role[plan.train], role[plan.val] = "train", "validation"
        split_table["role" if not tcfg.vary_split else f"role_run{i}"] = role
    with atomic_file(out / "split.csv") as tmp:
        split_table.to_csv(tmp, index=False)
    reports = {f"run{i}": p.report for i, p in enumerate(plans)} if tcfg.vary_split else plans[0].report
    write_json(out / "split_report.json", reports)
    if config.sampling.balanced:
        sampler = BalancedSampler(
            data.target[plans[0].train],
            n_bins=config.sampling.n_bins,
            min_fraction=config.sampling.min_fraction,
            binning=config.sampling.binning,
            seed=tcfg.seed,
        )
        write_json(
            out / "balance_report.json", balance_report(data.target[plans[0].train], sampler.indices(0))
        )

    runs: list[RunResult] = []
    for i in range(tcfg.num_runs):
        folder = out / "runs" / f"run_{i}"
        if (folder / "metrics.json").is_file() and (folder / "model.pt").is_file():
            runs.append(_load_run(folder, i))  # finished before an interruption: untouched
            continue
        callback = (lambda e, row, i=i: on_epoch(i, e, row)) if on_epoch is not None else None
        runs.append(fit_run(config, data, plans[i], i, folder, progress=callback))

    best = max(
        runs, key=lambda r: r.metrics["metrics"]["r2"] if np.isfinite(r.metrics["metrics"]["r2"]) else -np.inf
    )
    best_predictor = load_predictor(best.folder)
    save_predictor(out, best_predictor)
    ceiling = r2_ceiling_for(config, data, plans[best.run].val) if tcfg.use_validation else None
    summary: dict[str, Any] = {
        "name": config.name,
        "n_samples": n,
        "n_train": int(plans[best.run].train.size),
        "n_validation": int(plans[best.run].val.size),
        "evaluated_on": best.metrics["evaluated_on"],
        "target": data.meta["target"],
        "best_run": best.run,
        "best": best.metrics,
        "runs": [r.metrics for r in runs],
        "aggregate": _aggregate(runs),
        "r2_ceiling_validation": ceiling,
        "split_warning": plans[best.run].report.get("warning"),
        "drops": data.meta["drops"],
        "prepared_dir": str(prepared_dir.resolve()),
    }
    _scatter(out / "scatter.png", best, config, ceiling)
    write_json(out / "metrics.json", summary)  # written last: its presence marks a finished run folder
    return TrainResult(out, runs, best.run, summary)


def _scatter(path: Path, run: RunResult, config: SocmapConfig, ceiling: float | None) -> None:
    """Predicted vs observed (original scale) of the best run, with its metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.read_csv(run.folder / "predictions.csv")
    m = run.metrics["metrics"]
    unit = config.samples.target_unit
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.scatter(table["observed"], table["predicted"], s=6, alpha=0.5, edgecolors="none")
    hi = float(max(table["observed"].max(), table["predicted"].max()))
    lo = float(min(table["observed"].min(), table["predicted"].min(), 0))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="1:1")
    ax.set_xlabel(f"observed {config.samples.target} ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    text = f"R² {m['r2']:.3f}  RMSE {m['rmse']:.3g}\nME {m['me']:+.3g}  CCC {m['ccc']:.3f}  n {int(m['n'])}"
    if ceiling is not None:
        text += f"\nceiling R² {ceiling:.3f}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_title(f"{config.name}: run {run.run}, {run.metrics['evaluated_on']}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
