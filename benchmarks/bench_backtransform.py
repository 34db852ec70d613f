"""The mean back-transform of a log target (issue 14 item 2): does the mean prediction on new windows match
the population mean, with socmap's factor (Snowdon's ratio on level-centred residuals, a seed ensemble's
networks averaged on the original scale) and with the estimate it replaced (Duan's smearing on pooled
residuals, networks averaged on the log scale)?

``python benchmarks/bench_backtransform.py [--seeds 5,7,11,13,17] [--networks 1,5]``: for each seed, 400
windows whose target is ``exp(1.5 + 0.6 s + 0.7 e)`` (s: the centre pixel of band a at the newest step; e:
noise), a CNN-LSTM fitted with ``target_transform: log`` at socmap's defaults for that size (width 32) and a
short schedule; the relative error of the mean prediction over 4,000 new windows against the population mean
``exp(1.5 + 0.6²/2 + 0.7²/2)``. Both estimates are computed from the same fitted networks and early-stopping
rows. About 3 minutes on 2 quiet cores (``benchmarks/run.py --only backtransform`` runs the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from socmap.config import SamplingConfig, SplitConfig, TrainConfig
from socmap.losses import point_prediction
from socmap.models.base import FitData, InputSpec, TargetInfo
from socmap.models.deep import MEMBER_SEED_STRIDE, CnnLstmModel, SeedEnsemble, read_rows

from common import Row, print_table

SPEC = InputSpec(("a", "b"), (), 5, 3, ("1", "2", "3"), {}, TargetInfo("soc", "g/kg"))
POPULATION = math.exp(1.5 + 0.6**2 / 2 + 0.7**2 / 2)
SCHEDULE = {"max_steps": 600, "min_steps": 200, "patience_steps": 200, "lr": 3e-3}


def windows(n: int, seed: int) -> FitData:
    """Windows whose centre pixel of band a at the newest step drives a log-normal target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 5, 5, 3)).astype(np.float32)
    y = np.exp(1.5 + 0.6 * x[:, 0, 2, 2, -1].astype(np.float64) + 0.7 * rng.normal(size=n))
    coords = np.column_stack([rng.uniform(10, 11, n), rng.uniform(48, 49, n)])
    return FitData(x, y, np.arange(n), np.empty(0, np.int64), SPEC, coords, None, seed, None)


def duan_copy(model: CnnLstmModel, data: FitData) -> CnnLstmModel:
    """The same networks with the replaced estimate: log-scale average, Duan's factor on pooled residuals."""
    members = list(model.net.members) if isinstance(model.net, SeedEnsemble) else [model.net]
    residuals = []
    for i, net in enumerate(members):
        rows = model.early_stopping_rows(dataclasses.replace(data, seed=data.seed + i * MEMBER_SEED_STRIDE))
        copy = model._shallow_copy()
        copy.net = net
        out = copy.raw_output(read_rows(data.windows, rows.monitor))
        z_pred = point_prediction(out, copy.loss_type, copy.quantiles).double().numpy()
        residuals.append(model.transform.forward(data.target[rows.monitor]) - z_pred)
    residual = model.transform.log_scale * np.concatenate(residuals)
    duan = model._shallow_copy()
    duan.transform = dataclasses.replace(model.transform, params=dict(model.transform.params))
    duan.transform.params["smearing"] = float(np.mean(np.exp(residual - residual.mean())))
    duan.net = SeedEnsemble(members) if len(members) > 1 else members[0]
    return duan


def run(seeds: list[int], networks: list[int]) -> list[Row]:
    rows: list[Row] = []
    for count in networks:
        errors: dict[str, list[float]] = {"ratio": [], "duan": []}
        for seed in seeds:
            data = windows(400, seed)
            tcfg = TrainConfig(target_transform="log", seed_models=count, **SCHEDULE)  # type: ignore[arg-type]
            model = CnnLstmModel(tcfg, SamplingConfig(), None, SplitConfig(method="random"))
            torch.manual_seed(seed)
            model.fit(data)
            new = windows(4000, seed + 1).windows
            for name, fitted in (("ratio", model), ("duan", duan_copy(model, data))):
                errors[name].append(float(np.mean(fitted.predict(new))) / POPULATION - 1)
            print(
                f"[backtransform] {count} network(s), seed {seed}: ratio {errors['ratio'][-1]:+.3f}, "
                f"Duan {errors['duan'][-1]:+.3f}",
                flush=True,
            )
        for name, values in errors.items():
            note = f"seeds {','.join(map(str, seeds))}; max |error| {max(abs(v) for v in values):.3f}"
            rows.append(
                Row(
                    f"backtransform: {name}, {count} network(s), mean error",
                    float(np.mean(values)),
                    "",
                    note=note,
                )
            )
    return rows


def suite(work: Path) -> list[Row]:
    """``benchmarks/run.py --only backtransform`` (``work`` unused: nothing is written)."""
    return run([5, 7, 11, 13, 17], [1, 5])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="5,7,11,13,17")
    parser.add_argument("--networks", default="1,5")
    args = parser.parse_args()
    print_table(run([int(s) for s in args.seeds.split(",")], [int(n) for n in args.networks.split(",")]))
