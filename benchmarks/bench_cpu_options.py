"""What helps model inference on this CPU: the same batches through eager fp32, frozen TorchScript fp32 (the
mapping default), channels-last, torch.compile and bf16 autocast; speed ratios vs eager and the largest change
of the predictions (g/kg-scale outputs of a model trained on the synthetic data)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from socmap.demo import demo_config
from socmap.models import load_model
from socmap.models.deep import DeepModel
from socmap.synth import synthesize
from socmap.train import train
from socmap.windows import load_prepared

from common import Row

BATCH = 1024
N_BATCHES = 8


def _rate(
    fn: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor]
) -> tuple[float, torch.Tensor]:
    """Windows per second (best of 3 passes) and the outputs of the last pass."""
    with torch.inference_mode():
        fn(batches[0])  # warm-up / compile
        best, outputs = float("inf"), []
        for _ in range(3):
            started = time.perf_counter()
            outputs = [fn(b) for b in batches]
            best = min(best, time.perf_counter() - started)
    return sum(len(b) for b in batches) / best, torch.cat(outputs).float()


def run(work: Path) -> list[Row]:
    data = work / "synth"
    if not (data / "samples.csv").exists():
        synthesize(data, overwrite=True)
    cfg = demo_config(data, {"train.epochs": 2, "train.num_runs": 1, "train.wandb_mode": "disabled"})
    run_dir = train(cfg, work / "run", prepared=work / "prepared", overwrite=True).out
    predictor = load_model(run_dir)
    assert isinstance(predictor, DeepModel) and predictor.net is not None and predictor.normalizer is not None
    model = predictor.net.eval()
    windows = np.asarray(load_prepared(work / "prepared").windows[: BATCH * N_BATCHES])
    x = predictor.normalizer.transform_torch(torch.from_numpy(windows))
    batches = list(x.split(BATCH))
    probe = batches[0]

    def back(z: torch.Tensor) -> np.ndarray:
        return predictor.transform.inverse(z[:, 0].double().numpy())

    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    variants["eager fp32"] = model
    frozen = torch.jit.freeze(torch.jit.trace(model, probe, check_trace=False))
    variants["frozen TorchScript fp32 (default)"] = frozen
    cl_model = model.to(memory_format=torch.channels_last)

    def channels_last(
        b: torch.Tensor,
    ) -> torch.Tensor:  # the CNN sees [B*T, C, H, W]: make that channels-last
        return cl_model(b)

    variants["channels-last"] = channels_last
    try:
        compiled = torch.compile(model, dynamic=False)
        variants["torch.compile"] = compiled
    except Exception as exc:  # no compiler toolchain: report and go on
        print(f"torch.compile unavailable: {exc}")

    def bf16(b: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(b)

    variants["bf16 autocast"] = bf16

    rows: list[Row] = []
    base_rate, base_out = _rate(variants["eager fp32"], batches)
    reference = back(base_out)
    for name, fn in variants.items():
        try:
            rate, out = _rate(fn, batches)
        except Exception as exc:
            rows.append(Row(f"CPU option: {name}", float("nan"), "x", note=f"failed: {type(exc).__name__}"))
            continue
        diff = float(np.max(np.abs(back(out) - reference)))
        rows.append(
            Row(
                f"CPU option: {name}",
                rate / base_rate,
                "x eager",
                note=f"{rate:,.0f} windows/s; max |change| {diff:.3g} g/kg",
            )
        )
    return rows
