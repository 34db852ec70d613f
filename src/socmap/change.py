"""Change between two mapped years: the difference of the means and an interval that accounts for the
correlation of the two predictions' errors, calibrated on repeat visits.

Method (see docs/uncertainty.md). With the calibrated half-widths ``h_a``, ``h_b`` of the two years' intervals
(``(Q0.95 - Q0.05) / 2``) the change interval is::

    d = mean_b - mean_a,        H = k * sqrt(h_a^2 + h_b^2 - 2 rho h_a h_b),        [d - H, d + H]

The errors of two predictions at one place are positively correlated (the same covariates that do not change,
the same model bias), which shrinks the variance of their difference; ``rho`` is the correlation of the
scaled out-of-fold residuals ``e / h`` of repeat visits (the same sample id observed in two years) in the run's
calibration CV (``calibration_oof.csv``: both visits of a place fall in the same spatial fold, so both are
predicted without the place, as on a map). ``k`` is then the split-conformal quantile of
``|observed change - predicted change| / sqrt(h_a^2 + h_b^2 - 2 rho h_a h_b)`` over those pairs, so the interval
covers the nominal share of observed changes. Observed changes include the measurement noise of both visits,
so the interval is one for a re-measured change; it over-covers the (unobservable) true change by the share of
the noise in the residual variance.

Without a calibration or with fewer than :data:`MIN_PAIRS` repeat-visit pairs, ``rho = 0`` and ``k = 1`` are
assumed, with a warning: for positively correlated errors this overstates the variance of the difference, i.e.
the interval is conservative (too wide), never too narrow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.windows import Window

from socmap._atomic import atomic_file
from socmap.errors import InputError, OutputError
from socmap.stocks import band_index, interval_bands

__all__ = [
    "CHANGE_BANDS",
    "MIN_PAIRS",
    "ChangeCalibration",
    "ChangeResult",
    "calibrate_change",
    "change_map",
    "fit_change",
    "repeat_pairs",
    "validate_change",
]

CHANGE_BANDS = ("change", "Q0.05", "Q0.95", "PI90_width", "direction")  # for the default 90 % interval
MIN_PAIRS = 30
NODATA = -9999.0
STRIP = 512
FloatArray = NDArray[np.float64]


@dataclass
class ChangeCalibration:
    """``rho``, ``k`` and where they came from.

    Args:
        rho: correlation of the two predictions' scaled errors.
        k: the conformal factor of the combined half-width.
        n_pairs: repeat-visit pairs used (0: assumed values).
        nominal: the nominal coverage of the intervals.
        source: how rho and k were obtained, for tags and reports.
        warnings: notes for the user (e.g. no repeat visits: conservative assumption).
        pairs: the repeat-visit pairs (empty without calibration).
    """

    rho: float
    k: float
    n_pairs: int
    nominal: float
    source: str
    warnings: list[str] = field(default_factory=list)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_json(self) -> dict[str, Any]:
        """rho, k, n_pairs, nominal, source."""
        return {
            "rho": self.rho,
            "k": self.k,
            "n_pairs": self.n_pairs,
            "nominal": self.nominal,
            "source": self.source,
        }


def repeat_pairs(run_dir: str | Path) -> tuple[pd.DataFrame, float] | None:
    """Repeat-visit pairs of a run's calibration CV and the nominal coverage; None without a calibration.

    Columns: sample_id, time_a, time_b, observed_a/b, predicted_a/b, h_a/h_b (half-widths of the calibrated
    nominal intervals), index_a/index_b (rows of the prepared data).

    Args:
        run_dir: a ``socmap train`` run folder (``calibration.json``, ``calibration_oof.csv``, ``split.csv``).
    """
    from socmap.uncertainty.conformal import Calibration
    from socmap.uncertainty.runcal import CALIBRATION_FILE, CALIBRATION_OOF_FILE

    folder = Path(run_dir)
    files = [folder / CALIBRATION_FILE, folder / CALIBRATION_OOF_FILE, folder / "split.csv"]
    if not all(f.is_file() for f in files):
        return None
    info = json.loads(files[0].read_text())
    calib = Calibration.from_json(info)
    oof = pd.read_csv(files[1])
    times = pd.read_csv(files[2], usecols=["time"])["time"].astype(str).to_numpy()
    oof["time"] = times[oof["index"].to_numpy()]
    width = oof["own_width"].to_numpy() if info.get("uses_width") else None
    di = oof["di"].to_numpy() if oof["di"].notna().all() else None
    lo, hi = calib.interval(oof["predicted"].to_numpy(), calib.nominal, width, di)
    oof["h"] = (hi - lo) / 2.0
    oof["sample_id"] = oof["sample_id"].astype(str)
    oof = oof.sort_values(["sample_id", "time"])
    cols = ["sample_id", "time", "observed", "predicted", "h", "index"]
    merged = oof[cols].merge(oof[cols], on="sample_id", suffixes=("_a", "_b"))
    merged = merged[merged["time_a"] < merged["time_b"]].reset_index(drop=True)
    return merged, calib.nominal


def _combined(h_a: FloatArray, h_b: FloatArray, rho: float) -> FloatArray:
    """sqrt(h_a^2 + h_b^2 - 2 rho h_a h_b) (>= |h_a - h_b| for rho <= 1)."""
    return np.sqrt(np.maximum(h_a**2 + h_b**2 - 2.0 * rho * h_a * h_b, 1e-12))


def fit_change(pairs: pd.DataFrame, nominal: float) -> tuple[float, float]:
    """(rho, k) from repeat-visit pairs (see the module docstring).

    Args:
        pairs: from :func:`repeat_pairs`.
        nominal: the nominal coverage.
    """
    za = (pairs["observed_a"] - pairs["predicted_a"]).to_numpy() / pairs["h_a"].to_numpy()
    zb = (pairs["observed_b"] - pairs["predicted_b"]).to_numpy() / pairs["h_b"].to_numpy()
    both_a, both_b = np.concatenate([za, zb]), np.concatenate([zb, za])  # symmetric in the two visits
    rho = float(np.clip(np.corrcoef(both_a, both_b)[0, 1], -0.99, 0.99))
    d_obs = (pairs["observed_b"] - pairs["observed_a"]).to_numpy()
    d_hat = (pairs["predicted_b"] - pairs["predicted_a"]).to_numpy()
    score = np.abs(d_obs - d_hat) / _combined(pairs["h_a"].to_numpy(), pairs["h_b"].to_numpy(), rho)
    n = score.size
    level = min(1.0, math.ceil((n + 1) * nominal) / n)
    return rho, float(np.quantile(score, level, method="higher"))


def calibrate_change(run_dir: str | Path | None) -> ChangeCalibration:
    """rho and k of a run from its repeat visits, else the conservative assumption rho = 0, k = 1 (warned).

    Args:
        run_dir: a ``socmap train`` run folder with a calibration (None: assume).
    """
    found = repeat_pairs(run_dir) if run_dir is not None else None
    if found is None:
        note = (
            "no calibrated run (calibration.json, calibration_oof.csv): the change interval assumes rho = 0 "
            "between the two years' errors and k = 1, which overstates the difference's variance when errors "
            "are positively correlated (conservative: too wide)"
        )
        return ChangeCalibration(0.0, 1.0, 0, 0.9, "assumed rho = 0, k = 1 (no calibration)", [note])
    pairs, nominal = found
    if len(pairs) < MIN_PAIRS:
        note = (
            f"only {len(pairs)} repeat-visit pairs (same sample id in two years) in the run's calibration, "
            f"fewer than {MIN_PAIRS}: the change interval assumes rho = 0 and k = 1 (conservative: too wide "
            "when the two years' errors are positively correlated)"
        )
        source = f"assumed rho = 0, k = 1 ({len(pairs)} repeat-visit pairs)"
        return ChangeCalibration(0.0, 1.0, len(pairs), nominal, source, [note], pairs)
    rho, k = fit_change(pairs, nominal)
    source = f"rho and k from {len(pairs)} repeat-visit pairs of the run's calibration CV (out-of-fold predictions)"
    return ChangeCalibration(rho, k, len(pairs), nominal, source, [], pairs)


def validate_change(
    pairs: pd.DataFrame, nominal: float, folds: int = 5, truth: pd.DataFrame | None = None, seed: int = 0
) -> dict[str, float]:
    """Cross-fitted coverage of change intervals on repeat visits: rho and k are fitted on the other folds'
    places (grouped by sample id) and the held-out pairs' intervals are scored.

    Returns n_pairs, rho, k (all pairs), picp_observed (of observed changes), mean half-width, r (predicted vs
    observed change) and, with ``truth`` (columns sample_id, time, truth), picp_true and r_true.

    Args:
        pairs: from :func:`repeat_pairs`.
        nominal: the nominal coverage.
        folds: folds of places.
        truth: noise-free values per sample id and time (synthetic data only).
        seed: the fold assignment's seed.
    """
    ids = pairs["sample_id"].unique()
    fold_of = dict(zip(ids, np.random.default_rng(seed).permutation(len(ids)) % folds, strict=True))
    fold = pairs["sample_id"].map(fold_of).to_numpy()
    half = np.full(len(pairs), np.nan)
    for f in range(folds):
        rho, k = fit_change(pairs[fold != f], nominal)
        held = pairs[fold == f]
        half[fold == f] = k * _combined(held["h_a"].to_numpy(), held["h_b"].to_numpy(), rho)
    d_hat = (pairs["predicted_b"] - pairs["predicted_a"]).to_numpy()
    d_obs = (pairs["observed_b"] - pairs["observed_a"]).to_numpy()
    rho_all, k_all = fit_change(pairs, nominal)
    out = {
        "n_pairs": float(len(pairs)),
        "rho": rho_all,
        "k": k_all,
        "picp_observed": float(np.mean(np.abs(d_obs - d_hat) <= half)),
        "mean_half_width": float(np.mean(half)),
        "r_observed": float(np.corrcoef(d_hat, d_obs)[0, 1]),
    }
    if truth is not None:
        key = truth.assign(sample_id=truth["sample_id"].astype(str), time=truth["time"].astype(str))
        lookup = key.set_index(["sample_id", "time"])["truth"]
        ta = lookup.reindex(
            list(zip(pairs["sample_id"], pairs["time_a"].astype(str), strict=True))
        ).to_numpy()
        tb = lookup.reindex(
            list(zip(pairs["sample_id"], pairs["time_b"].astype(str), strict=True))
        ).to_numpy()
        d_true = tb - ta
        out["picp_true"] = float(np.mean(np.abs(d_true - d_hat) <= half))
        out["r_true"] = float(np.corrcoef(d_hat, d_true)[0, 1])
    return out


@dataclass
class ChangeResult:
    """What :func:`change_map` wrote: the COG, the years, the calibration and summary numbers."""

    out: Path
    year_a: str
    year_b: str
    calibration: ChangeCalibration
    n_pixels: int
    mean_change: float
    mean_width: float
    share_increase: float
    share_decrease: float
    unit: str


def _open_pair(a: Path, b: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Tags of two maps after checking they share a grid and a unit."""
    for path in (a, b):
        if not path.is_file():
            raise InputError(f"map {path} does not exist")
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        if (sa.crs, sa.transform, sa.shape) != (sb.crs, sb.transform, sb.shape):
            raise InputError(f"maps {a} and {b} are on different grids; map both years in one run (--years)")
        ta, tb = sa.tags(), sb.tags()
    if ta.get("unit") != tb.get("unit"):
        raise InputError(f"maps {a} ({ta.get('unit')}) and {b} ({tb.get('unit')}) have different units")
    return ta, tb


def _bands(src: Any, window: Window) -> FloatArray:
    """[3, rows, cols] mean and the interval's lower and upper bands of a socmap map (NaN = nodata)."""
    lower, upper, _ = interval_bands(src)
    idx = [band_index(src, n) for n in ("mean", lower, upper)]
    return np.stack([src.read(i, window=window, masked=True).astype(np.float64).filled(np.nan) for i in idx])


def change_map(
    map_a: str | Path,
    map_b: str | Path,
    out: str | Path,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
) -> ChangeResult:
    """The change COG from ``map_a`` (earlier year) to ``map_b``: bands change, Q0.05, Q0.95, PI90_width and
    direction (+1 increase, -1 decrease: the interval excludes 0; 0: no detectable change).

    Args:
        map_a, map_b: two ``socmap map`` COGs on the same grid (e.g. from ``socmap map --years``).
        out: the change COG (``.tif``).
        run_dir: the run that made them (its repeat visits calibrate rho and k; None: rho = 0, k = 1).
        overwrite: replace an existing output.
    """
    a, b, out = Path(map_a), Path(map_b), Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass --overwrite to replace it")
    if out.suffix.lower() not in {".tif", ".tiff"}:
        raise OutputError(f"out {out}: expected a GeoTIFF file name ending in .tif")
    ta, tb = _open_pair(a, b)
    cal = calibrate_change(run_dir)
    with rasterio.open(a) as src:
        lower, upper, level = interval_bands(src)
    if cal.n_pairs < MIN_PAIRS:  # assumed rho and k: the interval has the maps' nominal coverage
        cal.nominal = round(1 - 2 * level, 6)
    names = ("change", lower, upper, f"PI{cal.nominal * 100:g}_width", "direction")
    sums = np.zeros(5)  # n, sum change, sum width, n increase, n decrease
    mosaic = out.with_name(f".{out.name}.strips.tif")
    try:
        with rasterio.open(a) as sa, rasterio.open(b) as sb:
            profile = {**sa.profile, "count": len(CHANGE_BANDS), "nodata": NODATA, "dtype": "float32"}
            profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
            with rasterio.open(mosaic, "w", **profile) as dst:
                for row0 in range(0, sa.height, STRIP):
                    window = Window(0, row0, sa.width, min(STRIP, sa.height - row0))
                    values = _change_strip(_bands(sa, window), _bands(sb, window), cal)
                    ok = np.isfinite(values[0])
                    sums += [
                        ok.sum(),
                        values[0][ok].sum(),
                        values[3][ok].sum(),
                        (values[4] == 1).sum(),
                        (values[4] == -1).sum(),
                    ]
                    dst.write(np.where(np.isfinite(values), values, NODATA).astype(np.float32), window=window)
                _describe(dst, ta, tb, cal, names)
        with atomic_file(out, "change COG") as tmp:
            tmp.unlink()
            rasterio.shutil.copy(mosaic, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES")
    finally:
        mosaic.unlink(missing_ok=True)
    n = max(sums[0], 1.0)
    return ChangeResult(
        out=out,
        year_a=ta.get("year", str(a)),
        year_b=tb.get("year", str(b)),
        calibration=cal,
        n_pixels=int(sums[0]),
        mean_change=sums[1] / n,
        mean_width=sums[2] / n,
        share_increase=sums[3] / n,
        share_decrease=sums[4] / n,
        unit=ta.get("unit", ""),
    )


def _change_strip(va: FloatArray, vb: FloatArray, cal: ChangeCalibration) -> FloatArray:
    """[5, rows, cols] change bands of one strip."""
    d = vb[0] - va[0]
    half = cal.k * _combined((va[2] - va[1]) / 2.0, (vb[2] - vb[1]) / 2.0, cal.rho)
    lo, hi = d - half, d + half
    direction = np.where(lo > 0, 1.0, np.where(hi < 0, -1.0, 0.0))
    out = np.stack([d, lo, hi, 2.0 * half, direction])
    out[:, ~np.isfinite(d + half)] = np.nan
    return out


def _describe(
    dst: Any, ta: dict[str, str], tb: dict[str, str], cal: ChangeCalibration, names: tuple[str, ...]
) -> None:
    """Band descriptions, units and tags of the change COG (``names``: the bands' names)."""
    unit = ta.get("unit", "")
    years = f"{ta.get('year', '?')} -> {tb.get('year', '?')}"
    dst.descriptions = (
        f"change: mean prediction {years} ({unit})",
        f"{names[1]}: lower bound of the change's {cal.nominal:.0%} interval ({unit})",
        f"{names[2]}: upper bound of the change's {cal.nominal:.0%} interval ({unit})",
        f"{names[3]}: width of the change interval ({unit})",
        "direction: +1 increase, -1 decrease (interval excludes 0), 0 no detectable change",
    )
    dst.units = (unit,) * 4 + ("1",)
    for i, name in enumerate(names, start=1):
        dst.update_tags(i, name=name)
    dst.update_tags(
        quantity=f"change of {ta.get('target', 'target')}",
        unit=unit,
        year_a=ta.get("year", ""),
        year_b=tb.get("year", ""),
        target=ta.get("target", ""),
        method="H = k sqrt(h_a^2 + h_b^2 - 2 rho h_a h_b), h = (Q0.95 - Q0.05) / 2 of each year",
        rho=f"{cal.rho:.4f}",
        k=f"{cal.k:.4f}",
        calibration=cal.source,
    )
