"""Synthetic data generation time at 1000 m (target <= 30 s) and at 250 m."""

from __future__ import annotations

import json
from pathlib import Path

from socmap.synth import synthesize

from common import Row


def run(work: Path) -> list[Row]:
    rows: list[Row] = []
    for resolution, target in ((1000.0, 30.0), (250.0, None)):
        result = synthesize(work / f"synth-{resolution:g}", resolution=resolution, overwrite=True)
        info = json.loads((result.out / "truth.json").read_text())
        assert info["n_samples"] == result.n_samples and result.n_rasters == 109
        rows.append(
            Row(
                f"synth {resolution:g} m ({result.width}x{result.height} px, 109 rasters)",
                result.seconds,
                "s",
                target=f"<= {target:g} s" if target else "",
                met=(result.seconds <= target) if target else None,
                note=f"{result.width * result.height * 109 / result.seconds / 1e6:.1f} M px/s written, "
                f"R² ceiling {result.r2_ceiling:.3f}",
            )
        )
    return rows
