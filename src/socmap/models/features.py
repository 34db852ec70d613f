"""Window features for the tree and linear models: a window stack -> one feature vector per sample.

Every model reads the prepared windows ``[N, C, H, W, T]`` (NaN = nodata), so tree, linear and deep models are
compared on identical inputs and identical folds. :class:`WindowFeatures` turns a window into a fixed feature
vector (what a soil scientist would extract by hand for a random forest); its fitted state is plain arrays,
saved as JSON with the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import SimpleImputer

from socmap.errors import InputError

__all__ = ["MAX_CATEGORIES", "UnseenCategoryWarning", "WindowFeatures", "unseen_classes"]

CHUNK = 4096
MAX_CATEGORIES = 64


class UnseenCategoryWarning(UserWarning):
    """A categorical band holds a class code the model never saw in training."""


FloatArray = NDArray[np.float64]
WindowArray = NDArray[np.floating[Any]]  # float64, or float32 windows without nodata


def unseen_classes(centre: FloatArray, codes: Sequence[float], band: str, action: str) -> NDArray[np.bool_]:
    """Rows whose centre value is a class code of categorical ``band`` not among the training ``codes``
    (nodata excluded); warns once with the band, the codes, the count and ``action`` (what is done with them)."""
    unseen = np.isfinite(centre) & ~np.isin(centre, codes)
    if unseen.any():
        what = ", ".join(f"{v:g}" for v in np.unique(centre[unseen])[:10])
        warnings.warn(
            f"categorical band {band}: class code(s) {what} unseen in training at {int(unseen.sum())} "
            f"window(s): {action}",
            UnseenCategoryWarning,
            stacklevel=3,
        )
    return unseen


def _nanmean(x: WindowArray, axis: tuple[int, ...], clean: bool = False) -> FloatArray:
    """Mean over ``axis`` ignoring NaN; NaN where nothing is finite (no RuntimeWarning).

    ``clean``: the caller knows every value is finite; then the masks are skipped and ``x`` may be float32
    (summed in float64 without a float64 copy first): the same reduction over the same values, so the result
    is bit for bit that of the masked path on the float64 copy (tested).
    """
    if clean:
        return x.sum(axis=axis, dtype=np.float64) / float(np.prod([x.shape[a] for a in axis]))
    finite = np.isfinite(x)
    count = finite.sum(axis=axis)
    total = np.where(finite, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _window_mean(w: WindowArray, clean: bool) -> FloatArray:
    """Mean over each window's pixels, ``[n, C, T]`` float64, of windows ``[n, C, H, W, T]``.

    Clean windows with T > 1 add the H x W pixel slices one after another in float64: numpy reduces these
    strided axes in the same order, so the result is bit for bit ``_nanmean(w, (2, 3), True)`` (tested), 2-4x
    faster (its float32 -> float64 reduction over strided axes is slow). T = 1 keeps numpy's reduction
    (the pixels are contiguous there, and numpy is faster).
    """
    n, c, h, wd, t = w.shape
    if not clean or t == 1 or h * wd == 0:
        return _nanmean(w, (2, 3), clean)
    pixels = w.reshape(n, c, h * wd, t)
    total = pixels[:, :, 0, :].astype(np.float64)
    for k in range(1, h * wd):
        total += pixels[:, :, k, :]
    return total / float(h * wd)


def _nanstd(x: WindowArray, axis: tuple[int, ...], clean: bool = False) -> FloatArray:
    """Population standard deviation over ``axis`` ignoring NaN; NaN where nothing is finite."""
    mean = _nanmean(x, axis, clean)
    expanded = np.expand_dims(mean, axis)
    return np.sqrt(_nanmean((x - expanded) ** 2, axis, clean))


def _trend(series: FloatArray, clean: bool = False) -> FloatArray:
    """Least-squares slope per step of ``series`` [n, T] over its finite steps; NaN with < 2 of them.
    ``clean`` (every value finite, T >= 2): the same arithmetic without the masks, bit for bit (tested)."""
    if clean and series.shape[1] >= 2:
        steps = np.arange(series.shape[1], dtype=np.float64)
        dt = steps - steps.sum() / series.shape[1]
        slope: FloatArray = ((series - series.sum(axis=1, keepdims=True) / series.shape[1]) * dt).sum(axis=1)
        return slope / (dt**2).sum()
    t = np.arange(series.shape[1], dtype=np.float64)[None, :]
    finite = np.isfinite(series)
    count = finite.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = np.where(finite, t, 0.0).sum(axis=1, keepdims=True) / count
        y_mean = np.where(finite, series, 0.0).sum(axis=1, keepdims=True) / count
        dt = np.where(finite, t - t_mean, 0.0)
        dy = np.where(finite, series - y_mean, 0.0)
        slope = (dt * dy).sum(axis=1) / (dt**2).sum(axis=1)
    return np.where(count[:, 0] >= 2, slope, np.nan)


class WindowFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Hand-crafted features of ``[N, C, H, W, T]`` windows, with NaN filled by the training mean.

    Input ``X``: the windows as a 5-D array (a memory map works; read in chunks), or flattened to
    ``[N, C*H*W*T]`` (C-order) when ``window_shape=(C, H, W, T)`` is given (so sklearn utilities that need 2-D
    input can be used). Steps are oldest first; the last step is the sample's own time.

    Features per band (``static_channels`` are bands that do not vary in time; their steps are identical):

    - ``{band}_centre_t{k}``: the centre pixel (row H//2, column W//2) at every step k (static: once,
      ``{band}_centre``): the value at the sample itself and its history;
    - ``{band}_wmean``, ``{band}_wstd``: mean and standard deviation over the window at the last step:
      neighbourhood level and heterogeneity (e.g. LAI heterogeneity) that a single pixel misses;
    - ``{band}_centre_minus_wmean``: centre minus window mean at the last step: relative position (for
      elevation: the topographic position index), a difference trees cannot form from two features;
    - temporal bands with T > 1 only: ``{band}_tmean`` (mean over steps of the window mean: long-term
      conditions, temporal memory) and ``{band}_trend`` (least-squares slope per step of the window mean:
      change, e.g. NPP trend).

    Statistics skip nodata pixels and steps; a feature with nothing finite (e.g. a window next to a lake, a
    missing year) is filled with that feature's mean over the rows seen by ``fit`` (the training fold only,
    ``fill_values_``), so test rows never influence the fill. Features all-NaN in training are filled with 0.
    """

    def __init__(
        self,
        static_channels: Sequence[int] = (),
        band_names: Sequence[str] | None = None,
        window_shape: tuple[int, int, int, int] | None = None,
        categorical_channels: Sequence[int] = (),
    ) -> None:
        self.static_channels = static_channels
        self.band_names = band_names
        self.window_shape = window_shape
        self.categorical_channels = categorical_channels
        self.categories_: dict[int, list[float]] = {}
        self.nodata_unseen = False  # mapping: windows of a class unseen in training predict nodata

    # ---------------------------------------------------------------- categorical bands
    def _learn_categories(self, X: Any) -> None:
        """The class codes of every categorical channel at the training windows' centres (one-hot columns)."""
        self.categories_ = {}
        if not self.categorical_channels:
            return
        names = self._names(self._shape(X)[0])
        for ch in self.categorical_channels:
            centre = np.asarray(self._centres(X, int(ch)))
            codes = sorted({float(v) for v in np.unique(centre[np.isfinite(centre)])})
            if len(codes) > MAX_CATEGORIES:
                raise InputError(
                    f"categorical band {names[int(ch)]}: {len(codes)} distinct values in training, expected at "
                    f"most {MAX_CATEGORIES} class codes (remove it from covariates.categorical?)"
                )
            self.categories_[int(ch)] = codes

    def _centres(self, X: Any, ch: int) -> FloatArray:
        """Centre-pixel values of channel ``ch`` at the last step, [N]."""
        c, h, w, t = self._shape(X)
        if len(np.shape(X)) == 5:
            return np.asarray(X[:, ch, h // 2, w // 2, t - 1], np.float64)
        flat = np.ravel_multi_index((ch, h // 2, w // 2, t - 1), (c, h, w, t))
        return np.asarray(np.asarray(X)[:, flat], np.float64)

    def unseen_rows(self, X: Any) -> NDArray[np.bool_]:
        """Windows whose centre holds a class code of a categorical band not seen in training; warns with the
        band, codes and count (the model treats them as of no known class, a map makes them nodata)."""
        n = int(np.shape(X)[0])
        out = np.zeros(n, bool)
        names = self._names(self._shape(X)[0])
        action = "mapped as nodata" if self.nodata_unseen else "no class indicator set"
        for ch, codes in self.categories_.items():
            out |= unseen_classes(self._centres(X, ch), codes, names[ch], action)
        return out

    # ---------------------------------------------------------------- input handling
    def _shape(self, X: Any) -> tuple[int, int, int, int]:
        ndim = len(np.shape(X))
        if ndim == 5:
            c, h, w, t = (int(v) for v in np.shape(X)[1:])
            if self.window_shape is not None and tuple(self.window_shape) != (c, h, w, t):
                raise InputError(f"windows of shape {np.shape(X)}: expected [N, *{tuple(self.window_shape)}]")
            return c, h, w, t
        if ndim == 2:
            if self.window_shape is None:
                raise InputError(
                    "WindowFeatures got 2-D X: pass window_shape=(C, H, W, T) for flattened windows"
                )
            c, h, w, t = (int(v) for v in self.window_shape)
            if np.shape(X)[1] != c * h * w * t:
                raise InputError(
                    f"X has {np.shape(X)[1]} columns: expected C*H*W*T = {c * h * w * t} "
                    f"for window_shape {self.window_shape}"
                )
            return c, h, w, t
        raise InputError(f"X of shape {np.shape(X)}: expected windows [N, C, H, W, T] or [N, C*H*W*T]")

    def _static(self, c: int) -> set[int]:
        static = {int(i) for i in self.static_channels}
        bad = [i for i in static if not 0 <= i < c]
        if bad:
            raise InputError(f"static_channels {sorted(bad)}: expected channel indices in 0..{c - 1}")
        return static

    def _names(self, c: int) -> list[str]:
        if self.band_names is None:
            return [f"band{i}" for i in range(c)]
        names = [str(b) for b in self.band_names]
        if len(names) != c:
            raise InputError(f"band_names has {len(names)} names: expected one per channel ({c})")
        return names

    # ---------------------------------------------------------------- features
    def feature_names(self, shape: tuple[int, int, int, int]) -> list[str]:
        """Feature names for windows of shape (C, H, W, T), in column order."""
        c, _, _, t = shape
        static, names = self._static(c), self._names(c)
        out: list[str] = []
        for ch, band in enumerate(names):
            if ch in self.categories_:
                codes = self.categories_[ch]
                out += [f"{band}={v:g}" for v in codes] + [f"{band}_share={v:g}" for v in codes]
                continue
            if ch in static or t == 1:
                out.append(f"{band}_centre")
            else:
                out += [f"{band}_centre_t{k}" for k in range(t)]
            out += [f"{band}_wmean", f"{band}_wstd", f"{band}_centre_minus_wmean"]
            if ch not in static and t > 1:
                out += [f"{band}_tmean", f"{band}_trend"]
        return out

    def _chunk_features(self, w: WindowArray, static: set[int], clean: bool) -> FloatArray:
        """Raw features (NaN where undefined) of a chunk of windows [n, C, H, W, T] (float64, or, when
        ``clean`` (no nodata), float32 or float64)."""
        n, c, h, wd, t = w.shape
        ci, cj = h // 2, wd // 2
        cols: list[FloatArray] = []
        wmean_all = _window_mean(w, clean)  # [n, C, T]
        for ch in range(c):
            centre = w[:, ch, ci, cj, :].astype(np.float64)  # [n, T]
            last = t - 1
            if ch in self.categories_:  # one-hot of the centre's class, share of each class in the window
                codes = np.asarray(self.categories_[ch])
                at = centre[:, last]
                hot = (at[:, None] == codes[None, :]).astype(np.float64)
                hot[~np.isfinite(at)] = np.nan  # nodata: filled with the training share of each class
                pixels = w[:, ch, :, :, last].reshape(n, -1)
                finite = np.isfinite(pixels).sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    share = (pixels[:, :, None] == codes[None, None, :]).sum(axis=1) / finite[:, None]
                cols += list(hot.T) + list(np.where(finite[:, None] > 0, share, np.nan).T)
                continue
            if ch in static:
                # identical steps: pool them (a step may be missing only through nodata)
                centre_v = _nanmean(centre, (1,), clean)
                wmean, wstd = _nanmean(w[:, ch], (1, 2, 3), clean), _nanstd(w[:, ch], (1, 2, 3), clean)
                cols += [centre_v, wmean, wstd, centre_v - wmean]
                continue
            if t == 1:
                cols.append(centre[:, 0])
            else:
                cols += [centre[:, k] for k in range(t)]
            wmean = wmean_all[:, ch, last]
            wstd = _nanstd(w[:, ch, :, :, last], (1, 2), clean)
            cols += [wmean, wstd, centre[:, last] - wmean]
            if t > 1:
                cols += [_nanmean(wmean_all[:, ch], (1,), clean), _trend(wmean_all[:, ch], clean)]
        return np.column_stack(cols) if n else np.empty((0, len(cols)))

    def raw_features(self, X: Any) -> FloatArray:
        """Features before NaN filling, [N, F] float64 (read in chunks of CHUNK windows)."""
        shape = self._shape(X)
        static = self._static(shape[0])
        n = int(np.shape(X)[0])
        parts = []
        for start in range(0, n, CHUNK):
            chunk = np.asarray(X[start : start + CHUNK]).reshape((-1, *shape))
            # no nodata (most map blocks): float32 windows are read as they are and the masks skipped
            clean = chunk.dtype in (np.float32, np.float64) and bool(np.isfinite(chunk).all())
            chunk = chunk if clean else chunk.astype(np.float64)
            parts.append(self._chunk_features(chunk, static, clean))
        if not parts:
            return np.empty((0, len(self.feature_names(shape))))
        return np.concatenate(parts)

    def fit(self, X: Any, y: ArrayLike | None = None) -> WindowFeatures:
        """Learn the class codes of categorical bands and the fill value (training mean) of every feature."""
        self._learn_categories(X)
        self._fit(self.raw_features(X), self._shape(X))
        return self

    def _fit(self, raw: FloatArray, shape: tuple[int, int, int, int]) -> FloatArray:
        if raw.shape[0] == 0:
            raise InputError("WindowFeatures.fit: expected at least one training window")
        self.window_shape_ = shape
        self.feature_names_ = self.feature_names(shape)
        self.imputer_ = SimpleImputer(strategy="mean", keep_empty_features=True)
        filled: FloatArray = self.imputer_.fit_transform(raw)
        self.fill_values_: FloatArray = np.asarray(self.imputer_.statistics_, dtype=np.float64)
        self.n_features_out_ = raw.shape[1]
        return filled

    def fit_transform(self, X: Any, y: ArrayLike | None = None, **fit_params: Any) -> FloatArray:
        """``fit`` then ``transform`` with one pass over the windows."""
        self._learn_categories(X)
        return self._fit(self.raw_features(X), self._shape(X))

    def transform(self, X: Any) -> FloatArray:
        """Features [N, F] with NaN replaced by the fitted training means."""
        if not hasattr(self, "fill_values_"):
            raise InputError("WindowFeatures.transform: call fit first")
        shape = self._shape(X)
        if shape != self.window_shape_:
            raise InputError(f"windows of shape {shape}: the features were fitted on {self.window_shape_}")
        raw = self.raw_features(X)
        return np.where(np.isfinite(raw), raw, self.fill_values_[None, :])

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.object_]:
        """Names of the output columns (sklearn convention)."""
        if not hasattr(self, "feature_names_"):
            raise InputError("WindowFeatures.get_feature_names_out: call fit first")
        return np.asarray(self.feature_names_, dtype=object)

    # ---------------------------------------------------------------- persistence (no pickle)
    def to_state(self) -> dict[str, Any]:
        """The fitted state as JSON-serialisable data."""
        if not hasattr(self, "fill_values_"):
            raise InputError("WindowFeatures.to_state: call fit first")
        return {
            "static_channels": [int(i) for i in self.static_channels],
            "band_names": list(self.band_names) if self.band_names is not None else None,
            "window_shape": list(self.window_shape_),
            "fill_values": [float(v) for v in self.fill_values_],
        } | (
            {
                "categorical_channels": [int(i) for i in self.categorical_channels],
                "categories": {str(k): v for k, v in self.categories_.items()},
            }
            if self.categories_
            else {}
        )

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WindowFeatures:
        """Inverse of :meth:`to_state`."""
        shape = tuple(int(v) for v in state["window_shape"])
        features = cls(
            tuple(state["static_channels"]),
            state.get("band_names"),
            None,
            tuple(int(i) for i in state.get("categorical_channels", ())),
        )
        features.categories_ = {
            int(k): [float(v) for v in codes] for k, codes in state.get("categories", {}).items()
        }
        features.window_shape_ = shape  # type: ignore[assignment]
        features.feature_names_ = features.feature_names(shape)  # type: ignore[arg-type]
        features.fill_values_ = np.asarray(state["fill_values"], dtype=np.float64)
        features.n_features_out_ = int(features.fill_values_.size)
        if features.n_features_out_ != len(features.feature_names_):
            raise InputError(
                f"window features: {features.n_features_out_} fill values for {len(features.feature_names_)} features"
            )
        return features
