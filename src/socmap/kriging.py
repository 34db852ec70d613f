"""Geostatistics: variogram fitting (gstools) and local ordinary kriging with a bounded neighbourhood.

Why gstools: it is actively maintained (GeoStat-Framework), estimates binned empirical variograms in compiled
code (with pair sub-sampling for large sets), fits every classic covariance model (spherical, exponential,
gaussian, Matérn with its smoothness, stable) with a nugget by robust least squares, and generates random
fields with a known variogram (the tests use it). Its model objects evaluate the variogram vectorised, which
the local kriging below needs. pykrige's moving-neighbourhood kriging is a Python loop per point and its
variogram fit has no automatic model choice, so the kriging system itself is solved here: for every target
point the ``n`` nearest data points (scipy KD-tree) give one small ordinary-kriging system, solved in batches
with ``numpy.linalg.solve`` — memory bounded by the batch, independent of the number of data points, so a map
block of any size is kriged in constant memory and blocks run in parallel like any other model prediction.

Distances are in kilometres: :class:`LocationFrame` turns working-grid coordinates into km (projected grids
by their linear unit; geographic grids through an azimuthal equidistant projection centred on the data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from socmap.errors import InputError

__all__ = [
    "VARIOGRAM_MODELS",
    "LocalKriging",
    "LocationFrame",
    "Variogram",
    "fit_variogram",
    "merge_duplicates",
]

FloatArray = NDArray[np.float64]
VARIOGRAM_MODELS = ("spherical", "exponential", "gaussian", "matern")
_GS_NAMES = {
    "spherical": "Spherical",
    "exponential": "Exponential",
    "gaussian": "Gaussian",
    "matern": "Matern",
    "stable": "Stable",
}
KRIGE_BATCH = 2048
MIN_NUGGET = 0.01  # share of the empirical variogram's maximum


@dataclass(frozen=True)
class LocationFrame:
    """Working-grid coordinates -> kilometres (``kind``: ``linear`` scale or ``aeqd`` centred projection)."""

    crs_wkt: str
    kind: str
    scale_km: float = 1.0
    lon0: float = 0.0
    lat0: float = 0.0

    @classmethod
    def for_grid(cls, grid: dict[str, Any], xy: FloatArray) -> LocationFrame:
        """The frame of ``grid`` (an :class:`~socmap.models.InputSpec` grid), centred on ``xy`` if geographic."""
        from pyproj import CRS

        wkt = str(grid.get("crs_wkt") or grid.get("crs") or "")
        if not wkt:
            return cls("", "linear", 1.0)  # no CRS known: coordinates taken as km
        crs = CRS.from_user_input(wkt)
        if crs.is_geographic:
            lon0, lat0 = (float(v) for v in np.nanmean(xy, axis=0))
            return cls(wkt, "aeqd", 1.0, lon0, lat0)
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return cls(wkt, "linear", float(factor) / 1000.0)

    def to_km(self, xy: FloatArray) -> FloatArray:
        """[n, 2] kilometres of [n, 2] grid coordinates."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if self.kind == "linear":
            return xy * self.scale_km
        from pyproj import CRS, Transformer

        aeqd = CRS.from_proj4(f"+proj=aeqd +lat_0={self.lat0} +lon_0={self.lon0} +units=km +datum=WGS84")
        to = Transformer.from_crs(CRS.from_user_input(self.crs_wkt), aeqd, always_xy=True)
        x, y = to.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y]).astype(np.float64)

    def to_json(self) -> dict[str, Any]:
        """JSON form (model state)."""
        return {
            "crs_wkt": self.crs_wkt,
            "kind": self.kind,
            "scale_km": self.scale_km,
            "lon0": self.lon0,
            "lat0": self.lat0,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocationFrame:
        """Inverse of :meth:`to_json`."""
        kind = str(data["kind"])
        if kind not in ("linear", "aeqd"):
            raise InputError(f"location frame kind {kind!r}: expected linear or aeqd")
        return cls(
            str(data["crs_wkt"]),
            kind,
            float(data["scale_km"]),
            float(data["lon0"]),
            float(data["lat0"]),
        )


@dataclass
class Variogram:
    """A fitted variogram: ``model`` (gstools name), partial sill ``var``, ``len_scale`` (km), ``nugget``,
    extra shape parameters (Matérn ``nu``) and the empirical bins it was fitted to (for the report's plot)."""

    model: str
    var: float
    len_scale: float
    nugget: float
    extra: dict[str, float] = field(default_factory=dict)
    bins: list[float] = field(default_factory=list)
    gamma: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def covmodel(self) -> Any:
        """The gstools covariance model."""
        import gstools as gs

        if self.model not in _GS_NAMES:
            raise InputError(f"variogram model {self.model!r}: expected one of {', '.join(_GS_NAMES)}")
        cls = getattr(gs, _GS_NAMES[self.model])
        return cls(dim=2, var=self.var, len_scale=self.len_scale, nugget=self.nugget, **self.extra)

    @property
    def sill(self) -> float:
        """Total sill (partial sill + nugget)."""
        return self.var + self.nugget

    @property
    def effective_range(self) -> float:
        """Distance (km) where the variogram reaches 95 % of the partial sill above the nugget."""
        if self.var <= 0:
            return 0.0
        return float(self.covmodel().percentile_scale(0.95))

    def __call__(self, h: FloatArray) -> FloatArray:
        """γ(h) with γ(0) = 0 (the nugget is a jump at h > 0)."""
        h = np.asarray(h, np.float64)
        if self.var <= 0:
            return np.where(h > 0, self.nugget, 0.0)
        gamma = np.asarray(self.covmodel().variogram(h), np.float64).reshape(h.shape)
        return np.where(h > 0, gamma, 0.0)  # gstools gives the nugget at 0: C(0) must hold it instead

    def to_json(self) -> dict[str, Any]:
        """JSON form (model state)."""
        return {
            "model": self.model,
            "var": self.var,
            "len_scale": self.len_scale,
            "nugget": self.nugget,
            "extra": self.extra,
            "effective_range_km": self.effective_range,
            "bins": self.bins,
            "gamma": self.gamma,
            "counts": self.counts,
            "scores": self.scores,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Variogram:
        """Inverse of :meth:`to_json`."""
        out = cls(
            str(data["model"]),
            float(data["var"]),
            float(data["len_scale"]),
            float(data["nugget"]),
            {str(k): float(v) for k, v in data.get("extra", {}).items()},
            [float(v) for v in data.get("bins", [])],
            [float(v) for v in data.get("gamma", [])],
            [int(v) for v in data.get("counts", [])],
            {str(k): float(v) for k, v in data.get("scores", {}).items()},
        )
        out.covmodel()  # refuses unknown model names
        if min(out.var, out.len_scale, out.nugget) < 0:
            raise InputError("variogram: var, len_scale and nugget must be non-negative")
        return out


def merge_duplicates(xy: FloatArray, values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """One point per distinct location (values averaged): repeated samples at one place (several years)
    would make the kriging system singular."""
    xy = np.asarray(xy, np.float64)
    unique, inverse = np.unique(np.round(xy, 6), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    return unique, sums / counts


def empirical_variogram(
    xy_km: FloatArray, values: FloatArray, n_bins: int = 20, max_lag_km: float | None = None, seed: int = 0
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """Binned Matheron variogram (gstools): bin centres (km), γ, pair counts; lags up to a third of the
    extent's diagonal by default, pairs sub-sampled above 3,000 points."""
    import gstools as gs

    extent = np.ptp(xy_km, axis=0)
    diag = float(np.hypot(*extent)) or 1.0
    max_lag = max_lag_km or diag / 3.0
    edges = np.linspace(0.0, max_lag, n_bins + 1)
    sampling = 3000 if len(values) > 3000 else None
    centre, gamma, counts = gs.vario_estimate(
        (xy_km[:, 0], xy_km[:, 1]),
        values,
        edges,
        sampling_size=sampling,
        sampling_seed=seed + 1 if sampling else None,
        return_counts=True,
    )
    keep = np.asarray(counts) > 0
    return (
        np.asarray(centre, np.float64)[keep],
        np.asarray(gamma, np.float64)[keep],
        np.asarray(counts, np.int64)[keep],
    )


def _weights(centre: FloatArray, counts: NDArray[np.int64]) -> FloatArray:
    """gstat's default fit weights N_j / h_j² (fit.method 7): many pairs and short lags count most, where
    the kriging weights are decided."""
    return counts / np.maximum(centre, 1e-9 * float(centre.max())) ** 2


def _fit_one(name: str, centre: FloatArray, gamma: FloatArray, counts: NDArray[np.int64]) -> Variogram | None:
    """Fit one gstools model with a nugget (weights :func:`_weights`); None when the fit fails."""
    import gstools as gs

    max_lag = float(centre.max())
    top = float(gamma.max()) or 1.0
    reach = centre[np.argmax(gamma >= 0.9 * top)]  # first lag near the sill: an initial range
    model = getattr(gs, _GS_NAMES[name])(dim=2, var=top - 0.5 * float(gamma[0]), len_scale=reach / 2.0)
    model.nugget = 0.5 * float(gamma[0])
    bounds: dict[str, Any] = {"var": [0.0, 4.0 * top], "len_scale": [max_lag * 1e-3, 4.0 * max_lag]}
    if "nu" in model.opt_arg:
        bounds["nu"] = [0.5, 5.0]
    # a nugget of at least 1 % of the sill keeps every kriging system well conditioned (a smooth model without
    # nugget and close samples otherwise give wild weights)
    model.nugget = max(model.nugget, MIN_NUGGET * top)
    model.set_arg_bounds(nugget=[MIN_NUGGET * top, 2.0 * top], **bounds)
    try:
        model.fit_variogram(
            centre, gamma, nugget=True, weights=_weights(centre, counts), loss="linear", init_guess="current"
        )
    except (RuntimeError, ValueError):
        return None
    extra = {k: float(getattr(model, k)) for k in model.opt_arg}
    fitted = Variogram(name, float(model.var), float(model.len_scale), float(model.nugget), extra)
    reached = float(fitted(centre[:1])[0]) - fitted.nugget
    if (
        reached >= 0.9 * fitted.var
    ):  # the structure lies below the shortest lag seen: indistinguishable from nugget
        return Variogram(name, 0.0, fitted.len_scale, fitted.sill, extra)
    return fitted


def fit_variogram(
    xy_km: FloatArray,
    values: FloatArray,
    models: Sequence[str] = VARIOGRAM_MODELS,
    n_bins: int = 20,
    max_lag_km: float | None = None,
    seed: int = 0,
) -> Variogram:
    """The empirical variogram of ``values`` at ``xy_km`` and, among ``models``, the one fitted (with a
    nugget) with the least count-weighted squared error; a pure nugget if none fits."""
    bad = [m for m in models if m not in _GS_NAMES]
    if bad or not models:
        raise InputError(f"variogram models {list(models)}: expected among {', '.join(_GS_NAMES)}")
    values = np.asarray(values, np.float64)
    if values.size < 10:
        raise InputError(f"kriging needs at least 10 distinct locations, got {values.size}")
    centre, gamma, counts = empirical_variogram(xy_km, values, n_bins, max_lag_km, seed)
    best: Variogram | None = None
    scores: dict[str, float] = {}
    for name in models:
        fitted = _fit_one(name, centre, gamma, counts)
        if fitted is None:
            continue
        w = _weights(centre, counts)
        sse = float(np.sum(w * (fitted(centre) - gamma) ** 2) / w.sum())
        scores[name] = sse
        if best is None or sse < scores[best.model]:
            best = fitted
    if best is None:
        best = Variogram(models[0], 0.0, float(centre.max()), float(np.var(values)))
    best.bins, best.gamma, best.counts = centre.tolist(), gamma.tolist(), counts.tolist()
    best.scores = scores
    return best


class LocalKriging:
    """Ordinary kriging of ``values`` at ``xy_km`` with the ``neighbours`` nearest points of each target."""

    def __init__(self, xy_km: FloatArray, values: FloatArray, variogram: Variogram, neighbours: int = 32):
        from scipy.spatial import cKDTree

        self.xy = np.asarray(xy_km, np.float64)
        self.values = np.asarray(values, np.float64)
        self.variogram = variogram
        self.k = int(min(max(neighbours, 1), len(self.values)))
        self.tree = cKDTree(self.xy)

    def predict(self, targets_km: FloatArray, batch: int = KRIGE_BATCH) -> tuple[FloatArray, FloatArray]:
        """Kriged mean and kriging variance ``[n]`` at ``targets_km`` [n, 2] (variance of a new observation's
        error, nugget included, away from data points)."""
        targets_km = np.asarray(targets_km, np.float64).reshape(-1, 2)
        mean = np.empty(len(targets_km))
        var = np.empty(len(targets_km))
        for start in range(0, len(targets_km), batch):
            sel = slice(start, start + batch)
            mean[sel], var[sel] = self._solve(targets_km[sel])
        return mean, var

    def _solve(self, targets: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One batch: the [b, k+1, k+1] variogram systems with the unbiasedness row, solved at once."""
        n, k = len(targets), self.k
        if n == 0:
            return np.empty(0), np.empty(0)
        dist, idx = self.tree.query(targets, k=k)
        dist, idx = dist.reshape(n, k), idx.reshape(n, k)
        pts = self.xy[idx]  # [n, k, 2]
        between = np.linalg.norm(pts[:, :, None, :] - pts[:, None, :, :], axis=-1)
        lhs = np.ones((n, k + 1, k + 1))
        lhs[:, :k, :k] = self.variogram(between)
        lhs[:, k, k] = 0.0
        rhs = np.ones((n, k + 1))
        rhs[:, :k] = self.variogram(dist)
        # a tiny ridge keeps systems with coincident points or a zero variogram solvable
        lhs[:, :k, :k] -= 1e-10 * max(self.variogram.sill, 1e-12) * np.eye(k)
        try:
            weights = np.linalg.solve(lhs, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            weights = np.einsum("nij,nj->ni", np.linalg.pinv(lhs), rhs)
        mean = np.einsum("nk,nk->n", weights[:, :k], self.values[idx])
        variance = np.einsum("nk,nk->n", weights, rhs)
        return mean, np.maximum(variance, 0.0)
