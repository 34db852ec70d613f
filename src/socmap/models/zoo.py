"""The built-in model kinds, registered once on import (a reader sees here which models exist and where).

| kind | family | module |
|---|---|---|
| ``cnn_lstm`` | deep | :mod:`socmap.models.deep` (network in :mod:`socmap.models.networks`) |
| ``transformer`` | deep | :mod:`socmap.models.deep` (temporal transformer over per-step CNN features) |
| ``cnn3d`` | deep | :mod:`socmap.models.deep` (3D CNN over time, height, width) |
| ``rf`` | tree | :mod:`socmap.models.trees` (scikit-learn random forest) |
| ``qrf`` | tree | :mod:`socmap.models.trees` (quantile-forest; intervals) |
| ``xgb`` | tree | :mod:`socmap.models.trees` (XGBoost) |
| ``linear`` | linear | :mod:`socmap.models.trees` (ridge / MLR on window features) |
| ``ensemble`` | blend | :mod:`socmap.models.ensemble` (mean or stacking of other kinds) |
| ``ok`` | kriging | :mod:`socmap.models.geostat` (ordinary kriging of the target) |
| ``rk`` | kriging | :mod:`socmap.models.geostat` (any kind + kriged out-of-fold residuals) |

A new kind is one :func:`~socmap.models.registry.register_model` call (see the README's development section).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from socmap.models.base import SocModel
from socmap.models.deep import Cnn3dModel, CnnLstmModel, TransformerModel
from socmap.models.ensemble import EnsembleModel, EnsembleOptions
from socmap.models.geostat import KrigingOptions, OrdinaryKrigingModel, RegressionKrigingModel
from socmap.models.registry import available_models, create_model, register_model
from socmap.models.trees import FeatureModel, ForestModel, LinearModel, QuantileForestModel, XGBoostModel

if TYPE_CHECKING:
    from socmap.config import SocmapConfig

__all__: list[str] = []


def _feature_factory(cls: type[FeatureModel]) -> Callable[[SocmapConfig], SocModel]:
    def factory(config: SocmapConfig) -> SocModel:
        options = dict(config.models.get(cls.kind, {}))
        return cls(options, config.train.target_transform, config.train.threads or 0)

    return factory


def _ensemble(config: SocmapConfig) -> EnsembleModel:
    options = EnsembleOptions.parse(dict(config.models.get("ensemble", {})), list(available_models()))
    return EnsembleModel(options, lambda kind: create_model(kind, config))


def _ok(config: SocmapConfig) -> OrdinaryKrigingModel:
    return OrdinaryKrigingModel(KrigingOptions.parse("ok", dict(config.models.get("ok", {})), []))


def _rk(config: SocmapConfig) -> RegressionKrigingModel:
    options = KrigingOptions.parse("rk", dict(config.models.get("rk", {})), list(available_models()))
    return RegressionKrigingModel(options, lambda kind: create_model(kind, config))


register_model(
    "cnn_lstm", CnnLstmModel, CnnLstmModel.from_config, "CNN per step + LSTM over time (deep)", "deep"
)
register_model(
    "transformer",
    TransformerModel,
    TransformerModel.from_config,
    "per-step CNN + transformer encoder over time (deep)",
    "deep",
)
register_model("cnn3d", Cnn3dModel, Cnn3dModel.from_config, "3D CNN over time and space (deep)", "deep")
register_model("rf", ForestModel, _feature_factory(ForestModel), "random forest on window features", "tree")
register_model(
    "qrf",
    QuantileForestModel,
    _feature_factory(QuantileForestModel),
    "quantile regression forest (intervals)",
    "tree",
)
register_model("xgb", XGBoostModel, _feature_factory(XGBoostModel), "XGBoost on window features", "tree")
register_model(
    "linear",
    LinearModel,
    _feature_factory(LinearModel),
    "ridge regression (MLR) on window features",
    "linear",
)
register_model("ensemble", EnsembleModel, _ensemble, "blend of several kinds (mean or stacking)", "blend")
register_model(
    "ok",
    OrdinaryKrigingModel,
    _ok,
    "ordinary kriging, Gaussian interval from the kriging variance (baseline)",
    "kriging",
)
register_model(
    "rk",
    RegressionKrigingModel,
    _rk,
    "regression kriging, Gaussian interval from the kriging variance (models.rk.base + kriged residuals)",
    "kriging",
)
